"""The concatenation's Triton kernels: equal to float64 references, in every dtype they take.

Without a GPU they run in Triton's interpreter (tests/conftest.py), which checks their indexing,
masking and arithmetic; test_triton_compile.py builds them for GPUs. With one they run compiled
and carry the ``cuda`` mark (``pytest -m cuda``).
"""

import pytest
import torch

from nl_detectron.layers import NonLocalBlock, attention
from nl_detectron.layers.attention_policy import SORTED_CONCAT, TRITON_CONCAT
from nl_detectron.layers.triton_relu_pair_sum import TritonReluPairSum, triton_runs_on

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not triton_runs_on(DEVICE), reason=f"Triton cannot run on {DEVICE} here"),
    *([pytest.mark.cuda] if DEVICE == "cuda" else []),
]
# Relative to the reference's largest entry; bf16 and fp16 round R's tiles and v to 8 / 11 bits.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _reference(a, b, v):
    return torch.relu(a.unsqueeze(2) + b.unsqueeze(1)) @ v


def _values_and_grads(fn, inputs, cotangent):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad((out.to(cotangent.dtype) * cotangent).sum(), inputs)
    return [out, *grads]


def _assert_close(actual, expected, tol):
    for got, want in zip(actual, expected):
        scale = want.abs().max().clamp_min(1e-12)
        assert (got.double() - want).abs().max() / scale < tol


@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(
    "shape",
    [(2, 70, 45, 40), (1, 5, 1, 3), (1, 33, 97, 70)],
    ids=["blocks-and-remainders", "one-key", "several-column-blocks"],
)
def test_kernels_match_float64(shape, dtype):
    batch, n, m, e = shape
    torch.manual_seed(0)
    a, b = torch.randn(batch, n, dtype=torch.float64), torch.randn(batch, m, dtype=torch.float64)
    v = torch.randn(batch, m, e, dtype=torch.float64)
    cotangent = torch.randn(batch, n, e, dtype=torch.float64)
    expected = _values_and_grads(_reference, (a, b, v), cotangent)

    def triton_sum(a, b, v):
        return TritonReluPairSum.apply(a, b, v)

    inputs = (a.float(), b.float(), v.to(dtype))
    actual = _values_and_grads(triton_sum, [t.to(DEVICE) for t in inputs], cotangent.to(DEVICE))
    assert actual[0].dtype == dtype and actual[3].dtype == dtype
    assert actual[1].dtype == actual[2].dtype == torch.float32
    _assert_close([t.cpu() for t in actual], expected, TOL[dtype])


def test_relu_derivative_is_zero_where_a_plus_b_is_zero():
    # Many exact ties a_i + b_j = 0: they contribute neither to y nor to da, db (ReLU'(0) = 0).
    a = torch.tensor([[-1.0, 0.0, 1.0, 2.0, -2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0, -1.0, -2.0, 3.0, 2.0]], dtype=torch.float64)
    v = torch.randn(1, 6, 4, dtype=torch.float64)
    cotangent = torch.randn(1, 5, 4, dtype=torch.float64)
    expected = _values_and_grads(_reference, (a, b, v), cotangent)
    inputs = [a.float().to(DEVICE), b.float().to(DEVICE), v.float().to(DEVICE)]
    actual = _values_and_grads(TritonReluPairSum.apply, inputs, cotangent.to(DEVICE))
    _assert_close([t.cpu() for t in actual], expected, 1e-6)


def test_only_the_gradients_asked_for_are_computed():
    a, b = torch.randn(2, 9, device=DEVICE), torch.randn(2, 7, device=DEVICE)
    v = torch.randn(2, 7, 5, device=DEVICE, requires_grad=True)
    TritonReluPairSum.apply(a, b, v).sum().backward()
    expected = torch.relu(a.unsqueeze(2) + b.unsqueeze(1)).sum(dim=1)  # dv_j = sum_i R_ij
    assert torch.allclose(v.grad, expected.unsqueeze(-1).expand_as(v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dtypes",
    [(torch.float32, torch.float32, torch.float64), (torch.bfloat16, torch.float32, torch.float32)],
    ids=["float64-values", "bfloat16-terms"],
)
def test_other_dtypes_are_refused_by_name(dtypes):
    a, b, v = (torch.zeros(shape, dtype=d) for shape, d in zip([(1, 3), (1, 4), (1, 4, 2)], dtypes))
    with pytest.raises(ValueError, match=r"TritonReluPairSum: dtypes a .* must be torch.float32"):
        TritonReluPairSum.apply(a, b, v)


@pytest.mark.parametrize(
    "dim, sub_sample, size",
    [(2, False, (9, 7)), (2, True, (10, 12)), (1, False, (20,)), (3, True, (4, 6, 6))],
    ids=["2d", "2d-sub-sampled", "1d", "3d-sub-sampled"],
)
def test_block_with_triton_matches_the_explicit_block(dim, sub_sample, size):
    torch.manual_seed(0)
    block = NonLocalBlock(
        16, instantiation="concatenation", dim=dim, sub_sample=sub_sample, norm="", zero_init=False
    ).to(DEVICE)
    x = torch.randn(2, 16, *size, device=DEVICE)
    cotangent = torch.randn_like(x, dtype=torch.float64)
    block.double()
    block.explicit = True
    expected = _values_and_grads(block, [x.double()], cotangent)
    block.float()
    block.explicit, block.use_triton = False, True
    actual = _values_and_grads(block, [x], cotangent)
    assert block.last_path.path == TRITON_CONCAT
    _assert_close(actual, expected, 1e-5)


def test_block_under_bfloat16_autocast_runs_the_kernels_in_bfloat16():
    torch.manual_seed(0)
    block = NonLocalBlock(16, instantiation="concatenation", norm="", zero_init=False).to(DEVICE)
    x = torch.randn(2, 16, 9, 7, device=DEVICE)
    expected = block(x)
    block.use_triton = True
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        actual = block(x)
    assert block.last_path.path == TRITON_CONCAT
    assert (actual.float() - expected).abs().max() / expected.abs().max() < 2e-2


def test_use_triton_where_the_kernels_cannot_run_is_an_error(monkeypatch):
    block = NonLocalBlock(8, instantiation="concatenation", norm="")
    block.use_triton = True
    monkeypatch.setattr(attention, "triton_runs_on", lambda device_type: False)
    with pytest.raises(ValueError, match=r"use_triton=True: the Triton kernels run on CUDA"):
        block(torch.randn(1, 8, 4, 4))


def test_a_trace_records_the_portable_path_even_where_triton_cannot_run(monkeypatch):
    torch.manual_seed(0)
    block = NonLocalBlock(8, instantiation="concatenation", norm="", zero_init=False).eval()
    x = torch.randn(1, 8, 5, 6)
    expected = block(x)
    block.use_triton = True
    monkeypatch.setattr(attention, "triton_runs_on", lambda device_type: False)
    traced = torch.jit.trace(block, (x,), check_trace=False)
    assert block.last_path.path == SORTED_CONCAT
    assert torch.allclose(traced(x), expected, atol=1e-6)


def test_use_triton_with_float64_is_an_error():
    block = NonLocalBlock(8, instantiation="concatenation", norm="").double().to(DEVICE)
    block.use_triton = True
    with pytest.raises(ValueError, match=r"use_triton=True: compute dtype torch.float64"):
        block(torch.randn(1, 8, 4, 4, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_use_triton_takes_a_bool(bad):
    block = NonLocalBlock(8, instantiation="concatenation", norm="")
    with pytest.raises(ValueError, match=f"NonLocalBlock: use_triton={bad!r} must be True or"):
        block.use_triton = bad
    assert block.use_triton is False


def test_use_triton_is_only_for_the_concatenation():
    with pytest.raises(ValueError, match=r"use_triton=True needs instantiation 'concatenation'"):
        NonLocalBlock(8, instantiation="gaussian").use_triton = True
