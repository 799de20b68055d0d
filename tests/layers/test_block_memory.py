"""Regression tests, by memory and kernel name, for the fast paths never building N x M.

The main risk is silent: SDPA falls back to its math kernel (which materialises N x M) when its
inputs are strided views or of unequal widths, giving the same numbers at many times the memory.
The profiler's allocation events give the peak of live CPU memory during the call; on CUDA the
allocator's count of requested bytes does (:func:`_cuda_peak`).
"""

from functools import partial

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

# N = 8192 positions: one N x N fp32 matrix is 268 MB; the fast paths need a few MB.
SHAPE = (64, 128)
N_BY_N_BYTES = 4 * (SHAPE[0] * SHAPE[1]) ** 2


def _profile(fn):
    """Run ``fn`` under the profiler; return (op names, peak bytes of extra live memory)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    allocations = sorted(
        (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"
    )  # frees have negative sizes
    live = peak = 0
    for _, nbytes in allocations:
        live += nbytes
        peak = max(peak, live)
    return {e.name() for e in events}, peak


def _cuda_peak(fn):
    """Run ``fn`` on the current CUDA device; return the peak of bytes requested by live
    allocations above those live before it. Requested bytes are what the code asked for, as the
    CPU profile counts them; ``max_memory_allocated`` instead counts the caching allocator's
    rounded blocks (512 B, 2 MiB and 20 MiB granules) and so reads up to several MiB higher."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["requested_bytes.all.current"]
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.memory_stats()["requested_bytes.all.peak"] - before


def _forward_backward(block, x):
    def run():
        block(x).sum().backward()

    return run


@pytest.mark.parametrize(
    "block",
    [
        NonLocalBlock(16, norm=""),
        NonLocalBlock(16, instantiation="gaussian", norm=""),  # value narrower than the keys
        DisentangledNonLocalBlock(16, norm=""),
    ],
    ids=["embedded_gaussian", "gaussian", "disentangled"],
)
def test_softmax_blocks_use_the_fused_kernel(block):
    # A budget below one affinity (256 MiB): Gaussian's forward would keep it otherwise.
    block.affinity_budget_mb = 128
    x = torch.randn(1, 16, *SHAPE)
    with torch.no_grad():
        names, peak = _profile(lambda: block(x))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert peak < N_BY_N_BYTES / 8, f"forward peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    "block",
    [NonLocalBlock(16, norm=""), NonLocalBlock(16, instantiation="gaussian", norm="")],
    ids=["embedded_gaussian", "gaussian"],
)
def test_softmax_training_step_stays_small(block):
    # Training on a map whose affinity is over the CPU's default budget: the flash kernel's
    # forward and backward.
    x = torch.randn(1, 16, *SHAPE, requires_grad=True)
    names, peak = _profile(_forward_backward(block, x))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in names
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert peak < N_BY_N_BYTES / 8, f"forward+backward peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    "block",
    [
        NonLocalBlock(16, instantiation="dot_product", norm=""),
        NonLocalBlock(16, instantiation="concatenation", norm=""),
        SpectralNonLocalBlock(16, order=3, norm=""),
        ContextBlock(16, ratio=0.25),
    ],
    ids=["dot_product", "concatenation", "spectral", "context"],
)
def test_linear_blocks_stay_small(block):
    x = torch.randn(1, 16, *SHAPE, requires_grad=True)
    _, peak = _profile(_forward_backward(block, x))
    assert peak < N_BY_N_BYTES / 8, f"forward+backward peak {peak / 2**20:.0f} MiB"


def _explicit_affinity_peak(device):
    """Peak extra memory of an explicit embedded-Gaussian forward over N = 8192 on ``device``."""
    block = NonLocalBlock(16, norm="").to(device)
    block.explicit = True
    x = torch.randn(1, 16, *SHAPE, device=device)
    with torch.no_grad():
        if device == "cpu":
            return _profile(lambda: block(x))[1]
        block(x)  # cuBLAS and cuDNN set up their handles and workspaces once
        return _cuda_peak(lambda: block(x))


def test_the_probe_sees_an_explicit_affinity():
    # The measurement itself must notice an N x N matrix, or the tests above prove nothing.
    assert _explicit_affinity_peak("cpu") >= N_BY_N_BYTES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_the_cuda_probe_reads_what_the_cpu_probe_reads():
    # The same operations request the same tensors on both devices, so the CUDA figures of the
    # memory tests mean what the CPU ones do (here three N x N at the peak).
    peak, cpu_peak = _explicit_affinity_peak("cuda"), _explicit_affinity_peak("cpu")
    assert peak >= N_BY_N_BYTES
    mib = f"CUDA {peak / 2**20:.1f} MiB, CPU {cpu_peak / 2**20:.1f} MiB"
    assert abs(peak - cpu_peak) <= 4 * 2**20, mib


def test_small_maps_choose_the_in_place_affinity_where_it_is_cheaper():
    # Within the default budget: training always, and Gaussian's forward (whose value the fused
    # kernel would pad to the key width), build the affinity in place; the embedded-Gaussian
    # forward keeps the fused kernel.
    x = torch.randn(2, 16, 6, 7)
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    for instantiation, grad, fused in [
        ("gaussian", False, False),
        ("embedded_gaussian", False, True),
        ("embedded_gaussian", True, False),
    ]:
        block = NonLocalBlock(16, instantiation=instantiation, norm="")
        with torch.set_grad_enabled(grad):
            names, _ = _profile(partial(block, x))
        assert (flash in names) == fused, (instantiation, grad)
        assert "aten::_scaled_dot_product_attention_math" not in names
