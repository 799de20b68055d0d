"""Block health: the statistics on hand-built rows, and what every block records in training."""

import math

import pytest
import torch
from block_cases import CASE_IDS, CASES, make_block

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)
from nl_detectron.layers.health import (
    BlockHealth,
    relative_change,
    row_statistics,
    sample_queries,
)

ALL_TYPES = [
    ("nl-embedded_gaussian", NonLocalBlock, {"instantiation": "embedded_gaussian"}),
    ("nl-gaussian", NonLocalBlock, {"instantiation": "gaussian"}),
    ("nl-dot_product", NonLocalBlock, {"instantiation": "dot_product"}),
    ("nl-concatenation", NonLocalBlock, {"instantiation": "concatenation"}),
    ("dnl", DisentangledNonLocalBlock, {}),
    ("snl", SpectralNonLocalBlock, {}),
    ("gc", ContextBlock, {"ratio": 0.25}),
]
TYPE_IDS = [case[0] for case in ALL_TYPES]
NORMS = ("BN", "GN", "")
# The path a 2 x 8 x 5 x 6 float64 training forward takes on the CPU.
PATHS = {
    "nl-embedded_gaussian": "kept",
    "nl-gaussian": "kept",
    "nl-dot_product": "associative",
    "nl-concatenation": "sorted",
    "dnl": "kept",
    "snl": "associative",
    "gc": "pooled",
}


def _stats(rows):
    entropy, diversity = row_statistics(torch.as_tensor(rows, dtype=torch.float64)).tolist()
    return entropy, diversity


def _recording(block):
    block.train()
    block.record_health = True
    return block


def _input(channels=8, seed=1):
    torch.manual_seed(seed)
    return torch.randn(2, channels, 5, 6, dtype=torch.float64)


# --- the statistics on hand-built rows ---------------------------------------------------------


def test_uniform_rows_have_entropy_one_and_diversity_zero():
    entropy, diversity = _stats(torch.full((5, 12), 0.3))
    assert entropy == pytest.approx(1.0, abs=1e-6)
    assert diversity == pytest.approx(0.0, abs=1e-7)


def test_one_hot_rows_have_entropy_zero():
    same = torch.zeros(4, 6)
    same[:, 2] = 1.0
    assert _stats(same) == pytest.approx((0.0, 0.0), abs=1e-7)
    # Four queries on four different keys: the mean row is 1/4 on each; TV = 1 - 1/4.
    distinct = torch.eye(4, 6)
    assert _stats(distinct) == pytest.approx((0.0, 0.75), abs=1e-7)


def test_two_queries_on_disjoint_halves():
    # p_1 = [1/2, 1/2, 0, 0], p_2 = [0, 0, 1/2, 1/2]: H = log 2 of log 4; mean row 1/4 each,
    # TV of each row to it = 0.5 * 4 * 1/4 = 1/2.
    rows = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    assert _stats(rows) == pytest.approx((0.5, 0.5), abs=1e-7)


def test_rows_are_normalised_first():
    # DNL's rows sum to 2, concatenation's and SNL's to anything: only the shape matters.
    rows = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert _stats(2 * rows) == pytest.approx(_stats(rows), abs=1e-7)
    assert _stats(rows * torch.tensor([[7.0], [0.01]])) == pytest.approx(_stats(rows), abs=1e-7)


def test_rows_of_sum_zero_are_left_out():
    assert _stats([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]) == pytest.approx((1.0, 0.0), abs=1e-7)
    entropy, diversity = _stats(torch.zeros(2, 3))
    assert math.isnan(entropy) and math.isnan(diversity)


def test_a_single_key_counts_as_uniform():
    assert _stats(torch.ones(3, 1)) == (1.0, 0.0)


def test_queries_are_evenly_strided_and_at_most_the_sample_size():
    assert sample_queries(10, 64).tolist() == list(range(10))
    queries = sample_queries(4200, 64)
    assert queries.numel() == 64 and queries.unique().numel() == 64
    assert queries[0] == 0 and queries[-1] == 4200 * 63 // 64
    assert sample_queries(7, 3).tolist() == [0, 2, 4]


def test_relative_change():
    x = torch.tensor([3.0, 4.0])
    assert relative_change(torch.zeros(2), x).item() == 0.0
    assert relative_change(torch.tensor([0.3, 0.4]), x).item() == pytest.approx(0.1)
    assert relative_change(torch.zeros(2), torch.zeros(2)).item() == 0.0
    assert relative_change(torch.ones(2), torch.zeros(2)).item() == math.inf
    half = torch.full((4,), 60000.0, dtype=torch.float16)  # its norm overflows fp16, not fp32
    assert relative_change(half, half).item() == 1.0


def test_scalars_leave_out_what_the_block_does_not_have():
    with_attention = BlockHealth(0.1, 0.2, 0.9, 0.05, "kept", 64)
    assert list(with_attention.scalars()) == ["gate", "share", "entropy", "diversity"]
    assert BlockHealth(0.1, 0.2, None, None, "associative", 0).scalars() == {
        "gate": 0.1,
        "share": 0.2,
    }


# --- the gate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs",
    [(cls, dict(kwargs, norm=norm)) for _, cls, kwargs in ALL_TYPES[:-1] for norm in NORMS]
    + [(ContextBlock, ALL_TYPES[-1][2])],  # GC: no norm, the transform's last conv
    ids=[f"{case}-{norm or 'none'}" for case in TYPE_IDS[:-1] for norm in NORMS] + ["gc"],
)
def test_gate_is_zero_after_zero_init(cls, kwargs):
    assert cls(32, **kwargs).gate_rms() == 0.0


def test_gate_is_the_rms_of_the_zero_initialised_scale():
    block = NonLocalBlock(8, norm="BN")
    with torch.no_grad():
        block.out.norm.weight.copy_(torch.tensor([3.0, -4.0] * 4))
    assert block.gate_rms() == pytest.approx(math.sqrt(12.5))
    bare = DisentangledNonLocalBlock(8, norm="")
    with torch.no_grad():
        bare.out.conv.weight.fill_(-0.25)
    assert bare.gate_rms() == pytest.approx(0.25)
    # SNL without a norm: w1 .. w{order} together; with one, the shared norm's gamma.
    snl = SpectralNonLocalBlock(8, norm="", order=2)
    with torch.no_grad():
        snl.w1.weight.fill_(0.3)
        snl.w2.weight.fill_(0.4)
    assert snl.gate_rms() == pytest.approx(math.sqrt((0.09 + 0.16) / 2))
    normed = SpectralNonLocalBlock(8, norm="BN", order=3)
    with torch.no_grad():
        normed.norm.weight.fill_(0.5)
    assert normed.gate_rms() == pytest.approx(0.5)
    gc = ContextBlock(8, ratio=0.25)
    with torch.no_grad():
        gc.transform.conv2.weight.fill_(0.2)
    assert gc.gate_rms() == pytest.approx(0.2)


# --- what the blocks record -------------------------------------------------------------------


@pytest.mark.parametrize("case, cls, kwargs", ALL_TYPES, ids=TYPE_IDS)
def test_zero_init_block_records_gate_and_share_zero(case, cls, kwargs):
    options = dict(kwargs) if cls is ContextBlock else dict(kwargs, norm="BN")
    block = _recording(cls(8, **options).double())
    block(_input())
    health = block.last_health
    assert (health.gate, health.share) == (0.0, 0.0)
    assert health.path == PATHS[case]


@pytest.mark.parametrize("case, cls, kwargs", CASES, ids=CASE_IDS)
def test_every_block_records_its_statistics_in_training(case, cls, kwargs):
    block = _recording(make_block(cls, kwargs, dim=2))
    x = _input()
    z = block(x)
    health = block.last_health
    assert health.gate == pytest.approx(block.gate_rms())
    assert health.share == pytest.approx(((z - x).norm() / x.norm()).item(), rel=1e-5)
    no_attention = kwargs.get("instantiation") == "dot_product" or kwargs.get("pooling") == "avg"
    if no_attention:
        assert (health.entropy, health.diversity, health.queries) == (None, None, 0)
        return
    # The rows the block samples are those its public attention_weights gives.
    queries = sample_queries(30, 64)
    rows = block.attention_weights(x, queries)[0]
    expected_entropy, expected_diversity = row_statistics(rows).tolist()
    assert health.queries == 30
    assert health.entropy == pytest.approx(expected_entropy, abs=1e-5)
    assert health.diversity == pytest.approx(expected_diversity, abs=1e-5)
    assert 0.0 <= health.diversity <= 1.0
    if cls is ContextBlock:
        assert health.diversity == 0.0  # every query's row is the same


def test_a_uniform_block_has_entropy_one_and_diversity_zero():
    # Zero query/key embeddings: every logit is 0, every softmax row uniform.
    nl = NonLocalBlock(8, norm="")
    with torch.no_grad():
        for conv in (nl.theta, nl.phi):
            conv.weight.zero_()
            conv.bias.zero_()
    gc = ContextBlock(8, ratio=0.25)
    with torch.no_grad():
        gc.w_k.weight.zero_()
    for block in (nl, gc):
        _recording(block.double())(_input())
        assert block.last_health.entropy == pytest.approx(1.0, abs=1e-6)
        assert block.last_health.diversity == pytest.approx(0.0, abs=1e-6)


def test_explicit_forward_records_its_path():
    block = _recording(make_block(NonLocalBlock, {}, dim=2))
    block.explicit = True
    block(_input())
    assert block.last_health.path == "explicit"


def test_recording_off_leaves_last_health_untouched():
    block = make_block(DisentangledNonLocalBlock, {}, dim=2).train()
    block(_input())
    assert block.last_health is None
    sentinel = BlockHealth(1.0, 1.0, None, None, "kept", 0)
    block.last_health = sentinel
    block(_input())
    assert block.last_health is sentinel
    # Armed but in eval mode (inference, evaluation during training): nothing either.
    block.record_health = True
    block.eval()(_input())
    assert block.last_health is sentinel
    with pytest.raises(ValueError, match="last_health must be None or a BlockHealth"):
        block.last_health = {"gate": 0.0}


@pytest.mark.parametrize("case, cls, kwargs", CASES, ids=CASE_IDS)
def test_recording_changes_neither_output_nor_gradients(case, cls, kwargs):
    results = []
    for record in (False, True):
        block = make_block(cls, kwargs, dim=2).train()
        block.record_health = record
        x = _input().requires_grad_()
        z = block(x)
        z.square().sum().backward()
        grads = [p.grad for p in block.parameters()]
        results.append((z.detach(), x.grad, grads))
    (z0, gx0, g0), (z1, gx1, g1) = results
    assert torch.equal(z0, z1) and torch.equal(gx0, gx1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_sample_size_is_a_positive_int():
    block = _recording(make_block(NonLocalBlock, {}, dim=2))
    block.health_queries = 4
    block(_input())
    assert block.last_health.queries == 4
    with pytest.raises(ValueError, match="health_queries=0 must be an int >= 1"):
        block.health_queries = 0


def test_an_empty_batch_records_nothing():
    block = _recording(ContextBlock(8, ratio=0.25))  # a head's block may get no region
    block(torch.zeros(0, 8, 5, 6))
    assert block.last_health is None
