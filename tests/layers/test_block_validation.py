"""Bad arguments and inputs raise a ValueError that names the bad value and what is allowed."""

import pytest
import torch

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

PAIRWISE = [NonLocalBlock, DisentangledNonLocalBlock, SpectralNonLocalBlock]


def test_unknown_instantiation():
    with pytest.raises(ValueError, match=r"instantiation='softmax'.*'embedded_gaussian'"):
        NonLocalBlock(16, instantiation="softmax")


@pytest.mark.parametrize("cls", PAIRWISE)
def test_unknown_norm(cls):
    with pytest.raises(ValueError, match=r"norm='LN'.*'SyncBN', 'GN', 'FrozenBN'"):
        cls(16, norm="LN")


@pytest.mark.parametrize("cls", PAIRWISE)
def test_frozen_bn_with_zero_init(cls):
    with pytest.raises(ValueError, match=r"norm='FrozenBN' with zero_init=True.*zero_init=False"):
        cls(16, norm="FrozenBN")
    cls(16, norm="FrozenBN", zero_init=False)  # allowed without zero_init


@pytest.mark.parametrize("cls", PAIRWISE)
def test_group_norm_needs_divisible_channels(cls):
    with pytest.raises(ValueError, match=r"norm='GN'.*divisible by 32, got 48"):
        cls(48, norm="GN")


@pytest.mark.parametrize("cls", PAIRWISE)
@pytest.mark.parametrize("inter_channels", [0, -4, 2.5])
def test_bad_inter_channels(cls, inter_channels):
    with pytest.raises(ValueError, match=rf"inter_channels={inter_channels!r} must be a positive"):
        cls(16, inter_channels=inter_channels)


@pytest.mark.parametrize("cls", PAIRWISE + [ContextBlock])
@pytest.mark.parametrize("dim", [0, 4, "2"])
def test_bad_dim(cls, dim):
    with pytest.raises(ValueError, match=rf"dim={dim!r} is not supported; allowed: \(1, 2, 3\)"):
        cls(32, dim=dim)


@pytest.mark.parametrize("cls", PAIRWISE + [ContextBlock])
def test_bad_in_channels(cls):
    with pytest.raises(ValueError, match=r"in_channels=0 must be a positive integer"):
        cls(0)


@pytest.mark.parametrize("cls", PAIRWISE + [ContextBlock])
@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (2, 16, 5), (2, 16, 5, 5, 5)])
def test_input_mismatch_at_forward(cls, shape):
    block = cls(16, dim=2)
    x = torch.randn(*shape)
    expected = rf"expected input \[B, 16, <2 spatial dims>\], got shape {tuple(shape)}"
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        block(x)
    with pytest.raises(ValueError, match="expected input"):
        block.attention_weights(x, torch.tensor([0]))


def test_spectral_rejects_sub_sample():
    with pytest.raises(ValueError, match=r"sub_sample=True is not supported \(allowed: False\)"):
        SpectralNonLocalBlock(16, sub_sample=True)


@pytest.mark.parametrize("order", [1, 0, 2.0])
def test_spectral_order(order):
    with pytest.raises(ValueError, match=rf"order={order!r} must be an integer >= 2"):
        SpectralNonLocalBlock(16, order=order)


@pytest.mark.parametrize("temperature", [0, -0.1, "0.05"])
def test_disentangled_temperature(temperature):
    with pytest.raises(ValueError, match=rf"temperature={temperature!r} must be a positive"):
        DisentangledNonLocalBlock(16, temperature=temperature)


def test_context_block_arguments():
    with pytest.raises(ValueError, match=r"pooling='max' is not one of \('attention', 'avg'\)"):
        ContextBlock(32, pooling="max")
    with pytest.raises(ValueError, match=r"fusions=\('channel_sum',\) must be a non-empty subset"):
        ContextBlock(32, fusions=("channel_sum",))
    with pytest.raises(ValueError, match=r"fusions=\(\) must be a non-empty subset"):
        ContextBlock(32, fusions=())
    with pytest.raises(ValueError, match=r"ratio=0.01 gives 32 \* ratio = 0.32 < 1"):
        ContextBlock(32, ratio=0.01)
    with pytest.raises(ValueError, match=r"'channel_mul'.*zero_init=True.*zero_init=False"):
        ContextBlock(32, fusions=("channel_add", "channel_mul"))


@pytest.mark.parametrize(
    "queries, message",
    [
        (torch.tensor([0, 25]), r"queries must lie in \[0, 25\), got values in \[0, 25\]"),
        (torch.tensor([-1]), r"queries must lie in \[0, 25\)"),
        (torch.tensor([0.0]), "queries must be a 1-D LongTensor"),
        (torch.tensor([[0]]), "queries must be a 1-D LongTensor"),
        ([0, 1], "queries must be a 1-D LongTensor"),
    ],
)
def test_bad_queries(queries, message):
    block = NonLocalBlock(16)
    with pytest.raises(ValueError, match=message):
        block.attention_weights(torch.randn(1, 16, 5, 5), queries)


def test_bad_chunk_size():
    block = NonLocalBlock(16, norm="")
    block.explicit, block.chunk_size = True, -2
    with pytest.raises(ValueError, match=r"chunk_size=-2 must be > 0"):
        block(torch.randn(1, 16, 3, 3))
