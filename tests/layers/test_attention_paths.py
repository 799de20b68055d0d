"""Every aggregation path equals a float64 reference, outputs and gradients, forced path by path.

The policy only picks the chunked paths on CUDA; here each path is called directly (or forced into
a block), so that all of them are checked on the CPU.
"""

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from block_cases import CASES, make_block
from test_block_equivalence import TOL, _assert_grads_close, _outputs_and_grads, reference
from test_block_memory import _cuda_peak, _forward_backward, _profile
from torch.profiler import ProfilerActivity, profile

from nl_detectron.layers import DisentangledNonLocalBlock, NonLocalBlock, attention
from nl_detectron.layers.attention import concatenation_sum, softmax_attention
from nl_detectron.layers.attention_policy import (
    CHUNKED,
    CHUNKED_CONCAT,
    EFFICIENT,
    FUSED,
    KEPT,
    SORTED_CONCAT,
    PathChoice,
    cuda_fp32_precision,
)

SOFTMAX_PLANS = [
    PathChoice(FUSED, 9),
    PathChoice(KEPT, 9),
    PathChoice(CHUNKED, 1),
    PathChoice(CHUNKED, 4),  # 9 queries: chunks of 4, 4 and 1
    PathChoice(CHUNKED, 9),
    PathChoice(EFFICIENT, 9),
]
PLAN_IDS = ["fused", "kept", "chunked-1", "chunked-4", "chunked-all", "efficient"]


def _grads(out, inputs, cotangent):
    return torch.autograd.grad((out * cotangent).sum(), inputs)


@pytest.mark.parametrize("plan", SOFTMAX_PLANS, ids=PLAN_IDS)
@pytest.mark.parametrize("query_grad", [True, False], ids=["all-grads", "value-grad-only"])
@pytest.mark.parametrize(
    "widths", [(6, 6), (6, 3), (3, 5)], ids=["equal", "wide-keys", "wide-values"]
)
def test_softmax_paths_match_reference(plan, query_grad, widths):
    gen = torch.Generator().manual_seed(0)
    d, e = widths
    q = torch.randn(2, 9, d, generator=gen, dtype=torch.float64, requires_grad=query_grad)
    k = torch.randn(2, 7, d, generator=gen, dtype=torch.float64, requires_grad=query_grad)
    v = torch.randn(2, 7, e, generator=gen, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, 9, e, generator=gen, dtype=torch.float64)
    fast = softmax_attention(q, k, v, 0.7, plan)
    slow = torch.softmax(q @ k.transpose(1, 2) * 0.7, dim=-1) @ v
    torch.testing.assert_close(fast, slow, **TOL)
    inputs = (q, k, v) if query_grad else (v,)
    for f, s in zip(_grads(fast, inputs, cotangent), _grads(slow, inputs, cotangent)):
        torch.testing.assert_close(f, s, **TOL)


@pytest.mark.parametrize("plan", SOFTMAX_PLANS, ids=PLAN_IDS)
def test_softmax_paths_with_shared_keys(plan):
    # "gaussian": keys are the queries themselves (k is q), so both gradients add up.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, 9, 3, generator=gen, dtype=torch.float64)
    fast = softmax_attention(x, x, v, 0.4, plan)
    slow = torch.softmax(x @ x.transpose(1, 2) * 0.4, dim=-1) @ v
    torch.testing.assert_close(fast, slow, **TOL)
    for f, s in zip(_grads(fast, (x, v), cotangent), _grads(slow, (x, v), cotangent)):
        torch.testing.assert_close(f, s, **TOL)


def test_efficient_path_on_the_cpu_is_the_math_kernel_unpadded():
    # SDPA's memory-efficient kernel is CUDA's: forced on the CPU, the path runs SDPA's math kernel
    # (the same numbers, through the N x M affinity) and never pads the value to the key width.
    x = torch.randn(2, 9, 6, requires_grad=True)
    v = torch.randn(2, 9, 3, requires_grad=True)
    plan = PathChoice(EFFICIENT, 9)
    names, _ = _profile(lambda: softmax_attention(x, x, v, 0.4, plan).sum().backward())
    assert "aten::_scaled_dot_product_attention_math" in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in names
    assert "aten::constant_pad_nd" not in names


def test_chunked_softmax_survives_large_logits():
    # The kept log-sum-exp must reproduce the forward's normalisation with logits of size 1e3.
    gen = torch.Generator().manual_seed(2)
    q = (30 * torch.randn(1, 8, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    k = (30 * torch.randn(1, 5, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    v = torch.randn(1, 5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: softmax_attention(q, k, v, 1.0, PathChoice(CHUNKED, 3)), (q, k, v)
    )


CONCAT_PLANS = [
    PathChoice(SORTED_CONCAT, 9),
    PathChoice(CHUNKED_CONCAT, 1),
    PathChoice(CHUNKED_CONCAT, 4),
    PathChoice(CHUNKED_CONCAT, 9),
]


@pytest.mark.parametrize(
    "plan", CONCAT_PLANS, ids=["sorted", "chunked-1", "chunked-4", "chunked-all"]
)
def test_concatenation_paths_match_reference_with_ties(plan):
    # Integer-valued inputs create exact ties b_j == -a_i (ReLU at its kink).
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (2, 9), generator=gen).double().requires_grad_(True)
    b = torch.randint(-3, 4, (2, 11), generator=gen).double().requires_grad_(True)
    v = torch.randn(2, 11, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    cotangent = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
    fast = concatenation_sum(a, b, v, plan)
    slow = F.relu(a.unsqueeze(2) + b.unsqueeze(1)) @ v
    torch.testing.assert_close(fast, slow, **TOL)
    for f, s in zip(_grads(fast, (a, b, v), cotangent), _grads(slow, (a, b, v), cotangent)):
        torch.testing.assert_close(f, s, **TOL)


def test_unknown_paths_are_refused():
    q = torch.randn(1, 3, 2)
    with pytest.raises(ValueError, match="path 'sorted' is not one of"):
        softmax_attention(q, q, q, 1.0, PathChoice(SORTED_CONCAT, 3))
    with pytest.raises(ValueError, match="path 'kept' is not one of"):
        concatenation_sum(q[..., 0], q[..., 0], q, PathChoice(KEPT, 3))


BLOCK_CASES = [
    c for c in CASES if c[0].startswith(("nl-gaussian", "nl-embedded", "nl-conc", "dnl"))
]
BLOCK_PATHS = {
    "concatenation": (SORTED_CONCAT, CHUNKED_CONCAT),
    "softmax": (FUSED, KEPT, CHUNKED, EFFICIENT),
}


def _forced_cases():
    for case in BLOCK_CASES:
        kind = "concatenation" if case[0].startswith("nl-conc") else "softmax"
        for path in BLOCK_PATHS[kind]:
            yield pytest.param(case, path, id=f"{case[0]}-{path}")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case, path", list(_forced_cases()))
def test_blocks_on_every_path_match_reference(monkeypatch, case, path, device):
    # The policy stubbed to one path, as it would choose on another device: 35 queries, 4 a chunk.
    monkeypatch.setattr(attention, "choose_path", lambda call: PathChoice(path, 4))
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2).to(device)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64, device=device)
    out, grads = _outputs_and_grads(block, x, block)
    assert block.last_path == PathChoice(path, 4)
    ref_out, ref_grads = _outputs_and_grads(block, x, lambda t: reference(block, t)[0])
    torch.testing.assert_close(out, ref_out, **TOL)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", [KEPT, CHUNKED])
def test_bfloat16_autocast_paths_stay_in_bfloat16_and_close(monkeypatch, path, device):
    monkeypatch.setattr(attention, "choose_path", lambda call: PathChoice(path, 16))
    block = make_block(NonLocalBlock, {}, dim=2, channels=32, std=0.1, dtype=torch.float32)
    block = block.to(device)
    x = torch.randn(2, 32, 6, 9, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        theta = attention.flatten_positions(block.theta(x))
        phi = attention.flatten_positions(block.phi(x))
        g = attention.flatten_positions(block.g(x))
        y = block._aggregate(theta, phi, g)
    assert y.dtype == torch.bfloat16
    t, p, v = (t.double() for t in (theta, phi, g))
    expected = torch.softmax(t @ p.transpose(1, 2) * block.scale, dim=-1) @ v
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)


# N = 8192 positions: one N x N fp32 matrix is 268 MB.
N, WIDTH = 8192, 16
N_BY_N_BYTES = 4 * N * N


def test_chunked_paths_hold_only_their_chunks():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, N, WIDTH, generator=gen, requires_grad=True) for _ in range(3))
    a, b = (torch.randn(1, N, generator=gen, requires_grad=True) for _ in range(2))
    rows = 256  # two chunks of 256 x 8192 fp32: 16 MiB
    chunk_pair = 2 * rows * N * 4
    for run in (
        lambda: softmax_attention(q, k, v, 0.25, PathChoice(CHUNKED, rows)).sum().backward(),
        lambda: concatenation_sum(a, b, v, PathChoice(CHUNKED_CONCAT, rows)).sum().backward(),
    ):
        _, peak = _profile(run)
        assert peak <= chunk_pair + 8 * N * WIDTH * 4, f"peak {peak / 2**20:.0f} MiB"
        assert peak < N_BY_N_BYTES / 8


def test_chunked_forward_alone_holds_one_chunk():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, N, WIDTH, generator=gen) for _ in range(3))
    a, b = (torch.randn(1, N, generator=gen) for _ in range(2))
    rows = 256  # one chunk of 256 x 8192 fp32: 8 MiB
    chunk = rows * N * 4
    with torch.no_grad():
        for run in (
            lambda: softmax_attention(q, k, v, 0.25, PathChoice(CHUNKED, rows)),
            lambda: concatenation_sum(a, b, v, PathChoice(CHUNKED_CONCAT, rows)),
        ):
            _, peak = _profile(run)
            assert chunk <= peak <= chunk + 4 * N * WIDTH * 4, f"peak {peak / 2**20:.1f} MiB"


def test_budget_below_the_affinity_keeps_none():
    # 6 x 7 = 42 positions at batch 2: a 13.8 KiB fp32 affinity and 24 KiB of operands and
    # gradients; 0.04 MiB holds the latter but not two affinities besides.
    x = torch.randn(2, 16, 6, 7, requires_grad=True)
    for cls in (NonLocalBlock, DisentangledNonLocalBlock):
        block = cls(16, norm="")
        block(x).sum().backward()
        assert block.last_path.path == KEPT
        block.affinity_budget_mb = 0.04
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a budget the fused path meets: no warning
            block(x).sum().backward()
        assert block.last_path.path == FUSED


def _as_on_cuda_with_tf32(monkeypatch):
    """Make the blocks take the CUDA policy's choices (TF32 on) while running on the CPU."""
    on_cpu = attention.choose_path

    def choose(call):
        return on_cpu(dataclasses.replace(call, device_type="cuda", tf32=True))

    monkeypatch.setattr(attention, "choose_path", choose)


CHUNKED_BLOCKS = [
    ("embedded_gaussian", lambda: NonLocalBlock(128, zero_init=False), CHUNKED),
    ("gaussian", lambda: NonLocalBlock(128, instantiation="gaussian", zero_init=False), CHUNKED),
    ("disentangled", lambda: DisentangledNonLocalBlock(128, zero_init=False), CHUNKED),
    (
        "concatenation",
        lambda: NonLocalBlock(128, instantiation="concatenation", zero_init=False),
        CHUNKED_CONCAT,
    ),
]


@pytest.mark.parametrize(
    "make, path", [c[1:] for c in CHUNKED_BLOCKS], ids=[c[0] for c in CHUNKED_BLOCKS]
)
def test_whole_block_training_step_stays_within_the_budget(monkeypatch, make, path):
    # 48 x 64 = 3072 positions at batch 2, C = 128: one fp32 affinity is 72 MiB; a 32 MiB budget
    # leaves chunks of a few hundred rows after the 11-21 MiB of operands and gradients. The
    # block's peak extra memory (convolutions, norm and input gradient included) must stay under
    # the budget. (fp32 only: the CPU's bf16 matmuls allocate fp32 copies that CUDA's do not.)
    _as_on_cuda_with_tf32(monkeypatch)
    block = make().train()
    block.affinity_budget_mb = 32
    x = torch.randn(2, 128, 48, 64)

    def step():
        block(x.detach().requires_grad_(True)).sum().backward()

    step()
    assert block.last_path.path == path and 128 < block.last_path.rows < 48 * 64
    _, peak = _profile(step)
    assert peak <= 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_a_budget_that_cannot_be_met_warns_and_names_it(monkeypatch):
    _as_on_cuda_with_tf32(monkeypatch)
    block = NonLocalBlock(64, zero_init=False)
    x = torch.randn(2, 64, 48, 64)
    block.affinity_budget_mb = 0.5
    with pytest.warns(
        UserWarning, match=r"affinity_budget_mb=0.5 cannot be met .* 'chunked' in chunks of 128 "
    ):
        block(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per block, budget, dtype and widths
        block(torch.randn(2, 64, 40, 64))
    block.affinity_budget_mb = None  # the device's default is not the user's request
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block(x)


@pytest.mark.parametrize("bad", [0, -1.0, "1GB", False])
def test_block_budget_is_validated(bad):
    block = NonLocalBlock(8)
    with pytest.raises(ValueError, match=f"NonLocalBlock: affinity_budget_mb={bad!r}"):
        block.affinity_budget_mb = bad
    assert block.affinity_budget_mb is None


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_cuda_default_paths_match_the_float64_reference(case):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2).cuda()
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    out, grads = _outputs_and_grads(block, x.cuda(), block)
    ref_out, ref_grads = _outputs_and_grads(block, x.cuda(), lambda t: reference(block, t)[0])
    torch.testing.assert_close(out, ref_out, **TOL)
    _assert_grads_close(grads, ref_grads)


@needs_cuda
@pytest.mark.cuda
def test_cuda_bfloat16_head_256_takes_the_flash_path():
    block = NonLocalBlock(512, norm="").cuda()
    x = torch.randn(2, 512, 16, 24, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        block(x).float().sum().backward()
    assert block.last_path.path == FUSED


# What a block's training step on CUDA may request beyond the CPU's tensors: cuDNN's workspaces
# for its convolutions. The aggregation gets no headroom (the budget is its own); the CPU blocks
# peak at 28.6-30.6 MiB under the 32 MiB budget.
CUDA_WORKSPACE_HEADROOM = 4 * 2**20


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize(
    "make, path", [c[1:] for c in CHUNKED_BLOCKS], ids=[c[0] for c in CHUNKED_BLOCKS]
)
def test_cuda_tf32_training_step_stays_within_the_budget(make, path):
    # The CPU test above with the real CUDA policy: TF32 on, the peak of requested bytes over the
    # step (not of the allocator's rounded blocks).
    with cuda_fp32_precision(tf32=True):
        block = make().cuda().train()
        block.affinity_budget_mb = 32
        x = torch.randn(2, 128, 48, 64, device="cuda")

        def step():
            block(x.detach().requires_grad_(True)).sum().backward()

        step()
        block.zero_grad(set_to_none=True)
        peak = _cuda_peak(step)
    assert block.last_path.path == path and 128 < block.last_path.rows < 48 * 64
    assert peak <= 32 * 2**20 + CUDA_WORKSPACE_HEADROOM, f"peak {peak / 2**20:.1f} MiB"


def _relative_errors(actual, expected):
    """max |a - e| / max |e| of each pair (pairs without a gradient left out)."""
    return [
        ((a.double() - e).abs().max() / e.abs().max()).item()
        for a, e in zip(actual, expected)
        if e is not None
    ]


@needs_cuda
@pytest.mark.cuda
def test_cuda_efficient_path_runs_the_gaussian_unpadded_in_the_efficient_kernel(
    monkeypatch, ieee_fp32
):
    # The candidate for the Gaussian over its budget: queries = keys of width C, values C/2, in
    # SDPA's memory-efficient kernel forward and backward; fp32 against the float64 block.
    monkeypatch.setattr(
        attention, "choose_path", lambda call: PathChoice(EFFICIENT, call.num_queries)
    )
    block = make_block(NonLocalBlock, {"instantiation": "gaussian"}, dim=2, channels=32).cuda()
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64, device="cuda")
    ref_out, ref_grads = _outputs_and_grads(block, x, lambda t: reference(block, t)[0])
    block.float()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out, grads = _outputs_and_grads(block, x.float(), block)
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_efficient_attention" in names
    assert "aten::_scaled_dot_product_efficient_attention_backward" in names
    assert block.last_path.path == EFFICIENT
    # fp32 rounding through the whole block, as for the Triton paths (triton_checks)
    assert max(_relative_errors([out, *grads], [ref_out, *ref_grads])) < 5e-5
    # and nothing N x M: at N = 8192 positions one fp32 affinity is 268 MB
    x = torch.randn(1, 32, 64, N // 64, device="cuda")
    step = _forward_backward(block, x.requires_grad_())
    step()
    assert _cuda_peak(step) < N_BY_N_BYTES / 8


def test_cpu_kept_forward_builds_its_affinity_in_place():
    # One [1, 4096, 4096] fp32 affinity is 64 MiB; the softmax overwrites the logits.
    n = 4096
    q, k, v = (torch.randn(1, n, WIDTH) for _ in range(3))
    with torch.no_grad():
        _, peak = _profile(lambda: softmax_attention(q, k, v, 0.25, PathChoice(KEPT, n)))
    assert 4 * n * n <= peak < 1.25 * 4 * n * n, f"peak {peak / 2**20:.0f} MiB"
