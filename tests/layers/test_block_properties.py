"""Identity at init, equivariance, reduced precision, large logits, tracing/export, state dicts."""

import pytest
import torch
from block_cases import CASE_IDS, CASES, NO_SUB_SAMPLE, make_block

from nl_detectron import ContextBlock as RootContextBlock
from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)


def test_blocks_are_exported_from_the_package_root():
    assert RootContextBlock is ContextBlock


@pytest.mark.parametrize("norm", ["", "BN", "SyncBN", "GN"])
@pytest.mark.parametrize(
    "cls, kwargs",
    [(NonLocalBlock, {"instantiation": i}) for i in ("gaussian", "dot_product", "concatenation")]
    + [
        (NonLocalBlock, {"sub_sample": True}),
        (DisentangledNonLocalBlock, {}),
        (SpectralNonLocalBlock, {"order": 3}),
    ],
)
def test_identity_at_init(cls, kwargs, norm):
    torch.manual_seed(0)
    block = cls(32, norm=norm, **kwargs).train()
    x = torch.randn(2, 32, 5, 3)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_context_block_identity_at_init(dim):
    block = ContextBlock(32, dim=dim, pooling="attention")
    x = torch.randn(2, 32, *([3] * dim))
    assert torch.equal(block(x), x)


def test_zero_init_without_norm_zeroes_the_output_conv():
    block = NonLocalBlock(16, norm="")
    assert not hasattr(block.out, "norm")
    assert torch.count_nonzero(block.out.conv.weight) == 0
    assert torch.count_nonzero(block.out.conv.bias) == 0
    with_norm = NonLocalBlock(16, norm="BN")
    assert with_norm.out.conv.bias is None and torch.count_nonzero(with_norm.out.norm.weight) == 0
    assert torch.count_nonzero(with_norm.out.conv.weight) > 0  # gamma = 0 is enough


@pytest.mark.parametrize("case", NO_SUB_SAMPLE, ids=[c[0] for c in NO_SUB_SAMPLE])
def test_permutation_equivariance_over_positions(case):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    permuted = x.flatten(2)[..., perm].reshape(x.shape)
    expected = block(x).flatten(2)[..., perm].reshape(x.shape)
    torch.testing.assert_close(block(permuted), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bf16_autocast_is_finite_and_close_to_fp32(case):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2, channels=32, std=0.1, dtype=torch.float32)
    x = torch.randn(2, 32, 9, 11)
    expected = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()
    # bf16 keeps 8 bits of mantissa: compare relative to the output's scale.
    error = (out.float() - expected).abs().max() / expected.abs().max()
    assert error < 3e-2, f"relative error {error:.3g}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_huge_logits_stay_finite(case):
    # Logits in the thousands: exp overflows fp32 (and fp16 beyond 11) unless the softmax is stable.
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2, channels=16, std=3.0, dtype=torch.float32)
    x = (torch.randn(1, 16, 6, 5) * 30).requires_grad_(True)
    out = block(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    weights = block.attention_weights(x, torch.tensor([0, 7]))
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jit_trace(case):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2, dtype=torch.float32).eval()
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        traced = torch.jit.trace(block, (x,), check_trace=False)
        other = torch.randn(2, 8, 5, 6)
        torch.testing.assert_close(traced(other), block(other))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_export(case):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2, dtype=torch.float32).eval()
    x = torch.randn(2, 8, 5, 6)
    program = torch.export.export(block, (x,))
    other = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other), block(other))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_round_trip(case):
    _, cls, kwargs = case
    source = make_block(cls, kwargs, dim=2, norm="", seed=0).eval()
    target = make_block(cls, kwargs, dim=2, norm="", seed=1).eval()
    x = torch.randn(1, 8, 4, 3, dtype=torch.float64)
    assert not torch.allclose(source(x), target(x))
    target.load_state_dict(source.state_dict())  # strict: the same keys on both sides
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_parameter_names_follow_the_paper_symbols():
    names = set(NonLocalBlock(16, instantiation="concatenation").state_dict())
    assert {"theta.weight", "phi.weight", "g.weight", "out.conv.weight", "out.norm.weight"} <= names
    assert "concat_project.conv.weight" in names
    names = set(NonLocalBlock(16, sub_sample=True).state_dict())
    assert {"phi.0.weight", "g.0.weight", "theta.weight"} <= names
    names = set(DisentangledNonLocalBlock(16, sub_sample=True).state_dict())
    assert {"unary.0.weight", "theta.weight", "out.norm.bias"} <= names
    names = set(SpectralNonLocalBlock(16, order=3).state_dict())
    assert {"w1.weight", "w2.weight", "w3.weight", "norm.weight", "g.weight"} <= names
    snl = SpectralNonLocalBlock(16, norm="")
    assert isinstance(snl.norm, torch.nn.Identity) and snl.w1.bias is not None
    names = set(ContextBlock(32, fusions=("channel_add",)).state_dict())
    assert {"w_k.weight", "transform.conv1.weight", "transform.norm.weight"} <= names


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("norm", ["BN", "GN", "FrozenBN", "SyncBN"])
def test_norms_of_every_dim_run(dim, norm):
    block = NonLocalBlock(32, dim=dim, norm=norm, zero_init=False).eval()
    x = torch.randn(2, 32, *([3] * dim))
    assert block(x).shape == x.shape
