import dataclasses

import pytest
import torch

from nl_detectron.analysis.memory_plan import (
    Settings,
    aggregation_call,
    feature_side,
    largest_test_size,
    parse_size,
)
from nl_detectron.layers import DisentangledNonLocalBlock, NonLocalBlock, attention
from nl_detectron.layers.attention_policy import (
    FUSED,
    KEPT,
    AggregationCall,
    PathChoice,
    peak_bytes,
)

MiB = 2**20
# The tiny model (conftest): R-18 FPN, one embedded-Gaussian block before res4's last unit,
# C = 256, C' = 128. 800x1333 pads to 800x1344 (FPN: multiples of 32); res4 (stride 16) 50 x 84.
N = 50 * 84


def _plan(tool, nl_config, opts_for, *args):
    return tool.main(["--config-file", nl_config, *args] + opts_for(""))


def test_cuda_plan_without_a_gpu(load_tool, nl_config, opts_for, capsys):
    tool = load_tool("plan_memory")
    args = ["--size", "800x1333", "--device", "cuda", "--dtype", "bf16", "--gpu-memory-gb", "16"]
    result = _plan(tool, nl_config, opts_for, *args)
    (plan,) = result["plans"]
    assert result["budget_mb"] == 1024  # a sixteenth of 16 GiB
    assert (plan.block, plan.channels, plan.spatial) == ("NL embedded_gaussian", 256, (50, 84))
    assert (plan.num_queries, plan.num_keys, plan.widths, plan.batch) == (N, N, (128, 128), (2, 2))
    for mode, needs_grad in ((plan.training, True), (plan.inference, False)):
        facts = AggregationCall(
            "softmax", "cuda", torch.bfloat16, 2, N, N, 128, 128, needs_grad, 1024 * MiB
        )
        assert mode == (PathChoice(FUSED, N), peak_bytes(facts, PathChoice(FUSED, N)))
    out = capsys.readouterr().out
    assert "800x1333 input (padded to 800x1344)" in out
    assert "1/16 of a 16 GiB card (--gpu-memory-gb): 1024 MiB" in out
    row = next(line for line in out.splitlines() if "res4.nonlocal" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:9] == [str(N), str(N), "128/128", "2 / 2", "fused"]
    assert "blocks' aggregations: training" in out


def test_defaults_size_budget_and_blocks_without_an_affinity(
    load_tool, nl_config, opts_for, capsys
):
    tool = load_tool("plan_memory")
    opts = ["MODEL.NONLOCAL.INSTANTIATION", "dot_product"]
    result = _plan(tool, nl_config, opts_for, "--device", "cpu", "--batch", "1", *opts)
    # The tiny config tests at 200 x 1000 (INPUT.MIN/MAX_SIZE_TEST), padded to 224 x 1024.
    assert result["size"] == (200, 1000) and result["budget_mb"] == 512
    (plan,) = result["plans"]
    assert plan.spatial == (14, 64) and plan.kind == "associative"
    assert plan.training is None and plan.inference is None
    assert "CPU default 512 MiB" in capsys.readouterr().out


def test_the_config_budget_applies_unless_overridden(load_tool, nl_config, opts_for):
    tool = load_tool("plan_memory")
    opts = ["--device", "cpu", "--size", "320x480", "MODEL.NONLOCAL.AFFINITY_BUDGET_MB", "0.5"]
    (plan,) = _plan(tool, nl_config, opts_for, *opts)["plans"]
    assert plan.budget_mb == 0.5 and plan.training[0].path == FUSED  # 20 x 30: no room to keep
    (plan,) = _plan(tool, nl_config, opts_for, "--budget-mb", "64", *opts)["plans"]
    assert plan.budget_mb == 64 and plan.training[0].path == KEPT


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "800by1333"], r"--size '800by1333' must be HEIGHTxWIDTH"),
        (["--size", "16x640"], r"at least 32 pixels per side"),
        (["--batch", "0"], r"--batch=0 must be >= 1"),
        (["--device", "cpu", "--dtype", "tf32"], r"--dtype tf32 needs --device cuda"),
        (["--budget-mb", "0"], r"--budget-mb=0.0 must be > 0 MiB"),
        (["--device", "cpu", "--gpu-memory-gb", "16"], r"--gpu-memory-gb .* needs --device cuda"),
        (["--gpu-memory-gb", "-1"], r"--gpu-memory-gb=-1.0 must be > 0"),
    ],
)
def test_bad_options_are_refused_by_name(load_tool, nl_config, opts_for, args, message):
    tool = load_tool("plan_memory")
    with pytest.raises(ValueError, match=message):
        _plan(tool, nl_config, opts_for, *args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_measuring_a_16_bit_cuda_plan_needs_a_gpu(load_tool, nl_config, opts_for):
    tool = load_tool("plan_memory")
    with pytest.raises(ValueError, match=r"--measure --device cuda --dtype bf16: no GPU here"):
        _plan(tool, nl_config, opts_for, "--measure", "--dtype", "bf16")


def test_a_config_without_blocks_is_refused(load_tool, nl_config, opts_for):
    tool = load_tool("plan_memory")
    with pytest.raises(ValueError, match=r"builds no context block"):
        opts = ["MODEL.NONLOCAL.STAGES", "[]", "MODEL.NONLOCAL.POSITIONS", "[]"]
        _plan(tool, nl_config, opts_for, "--device", "cpu", *opts)


@pytest.mark.parametrize(
    "variant", ["embedded_gaussian", "gaussian", "concatenation", "dnl"], ids=str
)
def test_predictions_match_measured_peaks(load_tool, nl_config, opts_for, variant):
    # 320 x 480: res4 20 x 30, N = 600 at batch 2 (kept in training, fused / kept / sorted in
    # inference on the CPU): each block's aggregation measured on its planned path.
    tool = load_tool("plan_memory")
    opts = ["MODEL.NONLOCAL.TYPE", "dnl"] if variant == "dnl" else []
    opts = opts or ["MODEL.NONLOCAL.INSTANTIATION", variant]
    args = ["--device", "cpu", "--size", "320x480", "--measure", *opts]
    result = _plan(tool, nl_config, opts_for, *args)
    (plan,) = result["plans"]
    for mode, measured in zip((plan.training, plan.inference), result["measured"][plan.name]):
        predicted = mode[1]
        assert abs(measured - predicted) <= 0.1 * predicted, (mode, measured / MiB)


def test_size_arithmetic():
    assert parse_size("800x1333") == (800, 1333) and parse_size("600X1000") == (600, 1000)
    # detectron2's stem and stride-2 convolutions round up: 801 -> 401 -> 201 -> 101 -> 51
    assert feature_side(800, 16) == 50 and feature_side(801, 16) == 51
    assert feature_side(1344, 32) == 42


def test_largest_test_size_of_multi_scale_tests(tiny_cfg):
    tiny_cfg.INPUT.MIN_SIZE_TEST = 600
    tiny_cfg.INPUT.MAX_SIZE_TEST = 1000
    assert largest_test_size(tiny_cfg) == (600, 1000)


BLOCKS = {
    "embedded_gaussian": lambda: NonLocalBlock(32, norm=""),
    "gaussian_sub_sampled": lambda: NonLocalBlock(
        32, instantiation="gaussian", sub_sample=True, norm=""
    ),
    "concatenation": lambda: NonLocalBlock(32, instantiation="concatenation", norm=""),
    "dnl_sub_sampled": lambda: DisentangledNonLocalBlock(32, sub_sample=True, norm=""),
}


@pytest.mark.parametrize("make", BLOCKS.values(), ids=BLOCKS.keys())
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_the_planned_call_is_the_one_the_block_makes(monkeypatch, make, training):
    made = []
    choose = attention.choose_path
    monkeypatch.setattr(attention, "choose_path", lambda call: made.append(call) or choose(call))
    block = make().train(training)
    x = torch.randn(3, 32, 7, 9, requires_grad=training)
    with torch.set_grad_enabled(training):
        block(x)
    settings = Settings(3, "cpu", "fp32", None, 512)
    planned = aggregation_call(block, 3, (7, 9), settings, training, 512)
    (actual,) = made
    assert planned == dataclasses.replace(actual, budget_bytes=512 * MiB)
