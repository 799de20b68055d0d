"""The flash-style Triton kernels of softmax(s Q K^T) V equal float64 references in every dtype
they take, for widths below, at and above one column block (triton_checks says where they run;
the interpreter's blocks are 32 wide)."""

import pytest
import torch
from triton_checks import (
    DEVICE,
    DTYPE_IDS,
    MARKS,
    TOL,
    assert_close,
    for_each_launch_configuration,
    one_launch_configuration,
    values_and_grads,
)

from nl_detectron.layers import triton_softmax_attention as attn
from nl_detectron.layers.triton_softmax_attention import (
    BACKWARD_CONFIGS,
    FORWARD_CONFIGS,
    TritonSoftmaxAttention,
)

pytestmark = MARKS


def _reference(q, k, v, scale):
    return torch.softmax(scale * q @ k.transpose(1, 2), dim=-1) @ v


def _inputs(batch, n, m, d, e, seed=0):
    torch.manual_seed(seed)
    shapes = [(batch, n, d), (batch, m, d), (batch, m, e), (batch, n, e)]
    return [torch.randn(shape, dtype=torch.float64) for shape in shapes]


def _check_against_float64(shape, dtype):
    q, k, v, cotangent = _inputs(*shape)
    scale = shape[3] ** -0.5

    def attention(q, k, v):
        return TritonSoftmaxAttention.apply(q, k, v, scale)

    expected = values_and_grads(lambda *t: _reference(*t, scale), (q, k, v), cotangent)
    inputs = [t.to(DEVICE, dtype) for t in (q, k, v)]
    actual = values_and_grads(attention, inputs, cotangent)
    assert all(t.dtype == dtype for t in actual)
    assert_close(actual, expected, TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)
@pytest.mark.parametrize(
    "shape",
    [(2, 37, 29, 24, 40), (1, 40, 70, 70, 20), (2, 33, 33, 32, 32)],
    ids=["remainders-wide-values", "wide-keys-several-column-blocks", "exact-blocks"],
)
def test_kernels_match_float64(shape, dtype):
    _check_against_float64(shape, dtype)


@for_each_launch_configuration(FORWARD_CONFIGS, BACKWARD_CONFIGS)
def test_every_launch_configuration_matches_float64(index, dtype):
    # Widths over the widest column block (256) and map sizes off every block size.
    kernels = attn._attention_forward, attn._attention_backward_kv, attn._attention_backward_q
    with one_launch_configuration(index, *kernels):
        _check_against_float64((2, 150, 130, 300, 260), dtype)


def test_shared_keys_sum_both_gradients():
    # "gaussian" passes k is q: dq and dk of one tensor add up.
    x, _, v, cotangent = _inputs(2, 20, 20, 12, 9)
    expected = values_and_grads(lambda x, v: _reference(x, x, v, 0.3), (x, v), cotangent)

    def attention(x, v):
        return TritonSoftmaxAttention.apply(x, x, v, 0.3)

    actual = values_and_grads(attention, [x.float().to(DEVICE), v.float().to(DEVICE)], cotangent)
    assert_close(actual, expected, TOL[torch.float32])


def test_one_key_gives_its_value_and_no_query_gradient():
    q, k, v, cotangent = _inputs(1, 5, 1, 3, 7)
    inputs = [t.float().to(DEVICE) for t in (q, k, v)]
    out, grad_q, grad_k, grad_v = values_and_grads(
        lambda q, k, v: TritonSoftmaxAttention.apply(q, k, v, 1.0), inputs, cotangent
    )
    assert torch.allclose(out.cpu().double(), v.expand(1, 5, 7), atol=1e-6)
    assert grad_q.abs().max() < 1e-5 and grad_k.abs().max() < 1e-5  # softmax of one is 1
    assert torch.allclose(grad_v.cpu().double(), cotangent.sum(dim=1, keepdim=True), atol=1e-5)


def test_large_logits_stay_finite():
    # Logits up to ~1e3: the running maximum keeps every exp() in range.
    q, k, v, cotangent = _inputs(1, 40, 50, 8, 8)
    q = q * 40
    expected = values_and_grads(lambda *t: _reference(*t, 1.0), (q, k, v), cotangent)
    inputs = [t.float().to(DEVICE) for t in (q, k, v)]
    actual = values_and_grads(
        lambda q, k, v: TritonSoftmaxAttention.apply(q, k, v, 1.0), inputs, cotangent
    )
    assert all(torch.isfinite(t).all() for t in actual)
    assert_close(actual, expected, 1e-4)


def test_values_alone_get_a_gradient_when_asked():
    q, k, v, _ = (t.float().to(DEVICE) for t in _inputs(2, 9, 11, 5, 6))
    v.requires_grad_()
    TritonSoftmaxAttention.apply(q, k, v, 0.5).sum().backward()
    expected = torch.softmax(0.5 * q @ k.transpose(1, 2), dim=-1).sum(dim=1)  # dv_j = sum_i P_ij
    assert torch.allclose(v.grad, expected.unsqueeze(-1).expand_as(v), rtol=1e-5, atol=1e-5)


def test_mixed_dtypes_are_refused_by_name():
    q, k = torch.zeros(1, 3, 2), torch.zeros(1, 4, 2)
    v = torch.zeros(1, 4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"TritonSoftmaxAttention: dtypes q .* q, k, v one dtype"):
        TritonSoftmaxAttention.apply(q, k, v, 1.0)
