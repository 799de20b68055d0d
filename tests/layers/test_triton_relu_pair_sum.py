"""The concatenation's Triton kernels equal float64 references in every dtype they take
(triton_checks says where they run)."""

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

from nl_detectron.layers import triton_relu_pair_sum as pair
from nl_detectron.layers.triton_relu_pair_sum import (
    PAIR_DOT_CONFIGS,
    PRODUCT_CONFIGS,
    TritonReluPairSum,
)

pytestmark = MARKS


def _reference(a, b, v):
    return torch.relu(a.unsqueeze(2) + b.unsqueeze(1)) @ v


def _check_against_float64(shape, dtype):
    batch, n, m, e = shape
    torch.manual_seed(0)
    a, b = torch.randn(batch, n, dtype=torch.float64), torch.randn(batch, m, dtype=torch.float64)
    v = torch.randn(batch, m, e, dtype=torch.float64)
    cotangent = torch.randn(batch, n, e, dtype=torch.float64)
    expected = values_and_grads(_reference, (a, b, v), cotangent)

    def triton_sum(a, b, v):
        return TritonReluPairSum.apply(a, b, v)

    inputs = (a.float(), b.float(), v.to(dtype))
    actual = values_and_grads(triton_sum, [t.to(DEVICE) for t in inputs], cotangent)
    assert actual[0].dtype == dtype and actual[3].dtype == dtype
    assert actual[1].dtype == actual[2].dtype == torch.float32
    assert_close(actual, expected, TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)
@pytest.mark.parametrize(
    "shape",
    [(2, 70, 45, 40), (1, 5, 1, 3), (1, 33, 97, 70)],
    ids=["blocks-and-remainders", "one-key", "several-column-blocks"],
)
def test_kernels_match_float64(shape, dtype):
    _check_against_float64(shape, dtype)


@for_each_launch_configuration(PRODUCT_CONFIGS, PAIR_DOT_CONFIGS)
def test_every_launch_configuration_matches_float64(index, dtype):
    # Values wider than the widest column block (128), map sizes off every block size.
    with one_launch_configuration(index, pair._relu_pair_product, pair._masked_pair_dot):
        _check_against_float64((2, 150, 130, 300), dtype)


def test_relu_derivative_is_zero_where_a_plus_b_is_zero():
    # Many exact ties a_i + b_j = 0: they contribute neither to y nor to da, db (ReLU'(0) = 0).
    a = torch.tensor([[-1.0, 0.0, 1.0, 2.0, -2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0, -1.0, -2.0, 3.0, 2.0]], dtype=torch.float64)
    v = torch.randn(1, 6, 4, dtype=torch.float64)
    cotangent = torch.randn(1, 5, 4, dtype=torch.float64)
    expected = values_and_grads(_reference, (a, b, v), cotangent)
    inputs = [a.float().to(DEVICE), b.float().to(DEVICE), v.float().to(DEVICE)]
    actual = values_and_grads(TritonReluPairSum.apply, inputs, cotangent)
    assert_close(actual, expected, 1e-6)


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
    with pytest.raises(
        ValueError,
        match=r"TritonReluPairSum: dtypes a .*; a, b must be torch.float32; v one dtype of",
    ):
        TritonReluPairSum.apply(a, b, v)
