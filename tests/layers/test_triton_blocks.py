"""Blocks with ``use_triton``: equal to their explicit float64 selves through the Triton paths,
and the attribute, its errors and the trace fallback (triton_checks says where they run)."""

import pytest
import torch
from block_cases import make_block
from triton_checks import DEVICE, MARKS, assert_close, values_and_grads

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
    attention,
)
from nl_detectron.layers.attention_policy import FUSED, SORTED_CONCAT, TRITON, TRITON_CONCAT

pytestmark = MARKS

CONCATENATION = {"instantiation": "concatenation"}
TRITON_CASES = [
    ("gaussian", NonLocalBlock, {"instantiation": "gaussian"}, TRITON),
    ("embedded-sub", NonLocalBlock, {"sub_sample": True}, TRITON),
    ("concatenation", NonLocalBlock, CONCATENATION, TRITON_CONCAT),
    ("concatenation-sub", NonLocalBlock, dict(CONCATENATION, sub_sample=True), TRITON_CONCAT),
    ("dnl", DisentangledNonLocalBlock, {}, TRITON),
]
# fp32 against float64 through the whole block: the explicit fp32 block itself is 1.1e-5 off
# for DNL (temperature 0.05 sharpens its softmax), the Triton paths up to 1.9e-5.
BLOCK_TOL = 5e-5
SIZES = {1: (20,), 2: (9, 7), 3: (4, 6, 6)}


@pytest.mark.parametrize("dim", sorted(SIZES))
@pytest.mark.parametrize("case", TRITON_CASES, ids=[c[0] for c in TRITON_CASES])
def test_block_with_triton_matches_the_explicit_block(case, dim):
    _, cls, kwargs, path = case
    block = make_block(cls, kwargs, dim=dim, channels=16).to(DEVICE)
    x = torch.randn(2, 16, *SIZES[dim], dtype=torch.float64, device=DEVICE)
    cotangent = torch.randn_like(x)
    block.explicit = True
    expected = values_and_grads(block, [x], cotangent)
    block.float()
    block.explicit, block.use_triton = False, True
    actual = values_and_grads(block, [x.float()], cotangent)
    assert block.last_path.path == path
    assert_close(actual, expected, BLOCK_TOL)


@pytest.mark.parametrize("case", TRITON_CASES[1:3], ids=["embedded", "concatenation"])
def test_block_under_bfloat16_autocast_runs_the_kernels_in_bfloat16(case):
    _, cls, kwargs, path = case
    block = make_block(cls, kwargs, dim=2, channels=16, dtype=torch.float32).to(DEVICE)
    x = torch.randn(2, 16, 9, 7, device=DEVICE)
    expected = block(x)
    block.use_triton = True
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        actual = block(x)
    assert block.last_path.path == path
    assert (actual.float() - expected).abs().max() / expected.abs().max() < 2e-2


def test_use_triton_where_the_kernels_cannot_run_is_an_error(monkeypatch):
    block = NonLocalBlock(8, norm="")
    block.use_triton = True
    monkeypatch.setattr(attention, "triton_runs_on", lambda device_type: False)
    with pytest.raises(
        ValueError, match=r"use_triton=True: the Triton kernels need .*; got 'cpu' tensors"
    ):
        block(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize(
    "instantiation, path", [("embedded_gaussian", FUSED), ("concatenation", SORTED_CONCAT)]
)
def test_a_trace_records_the_portable_path_even_where_triton_cannot_run(
    monkeypatch, instantiation, path
):
    block = make_block(NonLocalBlock, {"instantiation": instantiation}, dim=2, dtype=torch.float32)
    x = torch.randn(1, 8, 5, 6)
    expected = block(x)
    block.use_triton = True
    monkeypatch.setattr(attention, "triton_runs_on", lambda device_type: False)
    traced = torch.jit.trace(block, (x,), check_trace=False)
    assert block.last_path.path == path
    assert torch.allclose(traced(x), expected, atol=1e-5)


def test_use_triton_with_float64_is_an_error():
    block = NonLocalBlock(8, norm="").double().to(DEVICE)
    block.use_triton = True
    with pytest.raises(ValueError, match=r"use_triton=True: compute dtype torch.float64"):
        block(torch.randn(1, 8, 4, 4, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_use_triton_takes_a_bool(bad):
    block = NonLocalBlock(8, norm="")
    with pytest.raises(ValueError, match=f"NonLocalBlock: use_triton={bad!r} must be True or"):
        block.use_triton = bad
    assert block.use_triton is False


@pytest.mark.parametrize(
    "block",
    [
        NonLocalBlock(8, instantiation="dot_product"),
        SpectralNonLocalBlock(8),
        ContextBlock(8, ratio=0.25),
    ],
    ids=["dot-product", "snl", "gc"],
)
def test_blocks_without_a_pairwise_aggregation_refuse_use_triton(block):
    name = type(block).__name__
    with pytest.raises(ValueError, match=rf"{name}: use_triton=True, but this block has no pair"):
        block.use_triton = True
    block.use_triton = False  # always allowed
