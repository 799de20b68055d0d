import math

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from nl_detectron.analysis import matmul_flop_count, nonlocal_flop_handles, sdpa_flop_count
from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

# Analytic multiply-add counts, fvcore's convention: a 1x1 conv costs N * C_in * C_out, eval-mode
# BatchNorm 2 per element, LayerNorm 5 per element; elementwise ops are free.
B, C, H, W = 2, 64, 12, 10
N = H * W
CI = C // 2  # inter channels


def conv(n, c_in, c_out):
    return B * n * c_in * c_out


BN = 2 * B * N * C


def log2_ceil(n):
    return math.ceil(math.log2(n))


def analytic_nonlocal(instantiation, sub_sample):
    m = math.ceil(H / 2) * math.ceil(W / 2) if sub_sample else N
    embed = 3 * conv(N, C, CI)  # theta, phi, g (phi/g pool after their conv)
    out = conv(N, CI, C) + BN
    if instantiation == "embedded_gaussian":
        pairwise = B * N * m * (CI + CI)  # q.k over C', then sum of C'-wide values
    elif instantiation == "gaussian":
        # identity embeddings of width C; the values are zero-padded to C for the fused kernel
        embed = conv(N, C, CI)
        pairwise = B * N * m * (C + C)
    elif instantiation == "dot_product":
        pairwise = B * m * CI * CI + B * N * CI * CI  # theta (phi^T g)
    else:  # concatenation: a_i, b_j projections, sort b, 2 suffix sums of [M, C'], N lookups
        pairwise = (
            B * (N + m) * CI + B * m * log2_ceil(m) + 2 * B * m * CI + B * N * log2_ceil(m + 1)
        )
    return embed + pairwise + out


def analytic_dnl():
    embed = 3 * conv(N, C, CI) + conv(N, C, 1)  # theta, phi, g, unary
    pairwise = B * N * N * 2 * CI + B * N * CI  # whitened term + softmax(u) . g
    return embed + pairwise + conv(N, CI, C) + BN


def analytic_snl(order):
    embed = 3 * conv(N, C, CI)
    degree = 2 * B * N * CI  # T (P^T 1) + P (T^T 1)
    propagate = (order - 1) * 4 * B * N * CI * CI  # T (P^T z) + P (T^T z) per power of A
    return embed + degree + propagate + order * conv(N, CI, C) + BN


def analytic_gc(ratio):
    planes = int(C * ratio)
    pool = conv(N, C, 1) + B * C * N  # attention logits, weighted sum
    transform = 2 * B * C * planes + 5 * B * planes
    return pool + transform


CASES = [
    ("nl-embedded", lambda: NonLocalBlock(C), analytic_nonlocal("embedded_gaussian", False)),
    (
        "nl-embedded-sub",
        lambda: NonLocalBlock(C, sub_sample=True),
        analytic_nonlocal("embedded_gaussian", True),
    ),
    (
        "nl-gaussian",
        lambda: NonLocalBlock(C, instantiation="gaussian"),
        analytic_nonlocal("gaussian", False),
    ),
    (
        "nl-dot",
        lambda: NonLocalBlock(C, instantiation="dot_product"),
        analytic_nonlocal("dot_product", False),
    ),
    (
        "nl-concat",
        lambda: NonLocalBlock(C, instantiation="concatenation"),
        analytic_nonlocal("concatenation", False),
    ),
    ("dnl", lambda: DisentangledNonLocalBlock(C), analytic_dnl()),
    ("snl-2", lambda: SpectralNonLocalBlock(C), analytic_snl(2)),
    ("snl-3", lambda: SpectralNonLocalBlock(C, order=3), analytic_snl(3)),
    ("gc", lambda: ContextBlock(C, ratio=1 / 8), analytic_gc(1 / 8)),
]


@pytest.mark.parametrize("make_block,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_block_flops_match_analytic_count(make_block, expected):
    torch.manual_seed(0)
    block = make_block().eval()
    x = torch.randn(B, C, H, W)
    flops = FlopCountAnalysis(block, x).set_op_handle(**nonlocal_flop_handles())
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert flops.total() == pytest.approx(expected, rel=0.02)
    # nothing that does arithmetic on tensors was left uncounted
    assert not flops.unsupported_ops(), flops.unsupported_ops()


def test_stock_fvcore_misses_attention():
    # the reason the handles exist: without them the pairwise term of an NL block is dropped
    block = NonLocalBlock(C).eval()
    x = torch.randn(B, C, H, W)
    stock = FlopCountAnalysis(block, x)
    stock.unsupported_ops_warnings(False)
    total = stock.total()
    assert "aten::scaled_dot_product_attention" in stock.unsupported_ops()
    assert total < 0.6 * analytic_nonlocal("embedded_gaussian", False)


def test_sdpa_count_formula():
    assert sdpa_flop_count([2, 4, 10, 8], [2, 4, 6, 8], [2, 4, 6, 16]) == 2 * 4 * 10 * 6 * (8 + 16)
    # causal: query i sees min(i + 1, S) keys
    assert sdpa_flop_count([1, 3, 2], [1, 5, 2], [1, 5, 2], is_causal=True) == (1 + 2 + 3) * 4
    # grouped-query attention: the query's heads count
    assert sdpa_flop_count([1, 8, 5, 4], [1, 2, 7, 4], [1, 2, 7, 4]) == 8 * 5 * 7 * 8


def test_sdpa_handle_on_traced_call():
    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = torch.randn(2, 6, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 3)
    flops = FlopCountAnalysis(Attend(), (q, k, v)).set_op_handle(**nonlocal_flop_handles())
    assert flops.total() == 2 * sum(range(1, 7)) * (4 + 3)


def test_matmul_count_broadcasts():
    # fvcore's own handle counts [C', C] @ [B, C, N] once instead of B times
    assert matmul_flop_count([3, 5], [4, 5, 7]) == 4 * 3 * 5 * 7
    assert matmul_flop_count([4, 1, 3, 5], [6, 5, 2]) == 4 * 6 * 3 * 5 * 2
    assert matmul_flop_count([4, 3, 5], [5]) == 4 * 3 * 5
    assert matmul_flop_count([5], [5]) == 5
    with pytest.raises(ValueError, match="mismatched inner"):
        matmul_flop_count([3, 5], [4, 7])
