import json

import numpy as np
import pytest
import torch

GN = ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0"]


def test_interleaved_train_and_inference_timings(load_tool, nl_config, opts_for, tmp_path):
    tool = load_tool("benchmark_model")
    rows = tmp_path / "rows.jsonl"
    results = tool.main(
        ["--config-file", nl_config, "--input-size", "96", "128", "--batch-size", "1"]
        + ["--iters", "2", "--warmup", "1", "--no-memory", "--json", str(rows), "--opts"]
        + opts_for("")
        + GN
    )
    for name in ("nl", "stock"):
        assert len(results[name]["train"]) == 2 and len(results[name]["inference"]) == 2
        assert all(t > 0 for t in results[name]["train"] + results[name]["inference"])
    # the same figures for scripts/gpu_benchmarks.py's summary, one JSON object per run
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert (row["table"], row["config"], row["amp"], row["device"]) == (
        "model",
        "mask_rcnn_nl_R50",
        "fp32",
        "cpu",
    )
    assert row["input_size"] == [96, 128] and row["batch_size"] == 1 and row["tf32"] is False
    assert row["train_s_nl"] == pytest.approx(np.median(results["nl"]["train"]))
    assert row["inference_s_stock"] == pytest.approx(np.median(results["stock"]["inference"]))


def test_synthetic_batch_has_all_targets(load_tool, tiny_cfg):
    tool = load_tool("benchmark_model")
    tiny_cfg.MODEL.KEYPOINT_ON = True
    batch = tool.synthetic_batch(tiny_cfg, 2, (64, 80))
    assert len(batch) == 2
    inst = batch[0]["instances"]
    assert batch[0]["image"].shape == (3, 64, 80) and inst.image_size == (64, 80)
    boxes = inst.gt_boxes.tensor
    assert len(inst) == 4 and inst.gt_masks.tensor.shape == (4, 64, 80)
    points = inst.gt_keypoints.tensor
    assert points.shape == (4, 17, 3)
    # keypoints lie in their boxes
    assert (points[..., 0] >= boxes[:, None, 0]).all() and (
        points[..., 0] <= boxes[:, None, 2]
    ).all()


def test_rss_growth_sees_a_step_allocation(load_tool):
    tool = load_tool("benchmark_model")
    pytest.importorskip("resource")  # Linux /proc is what rss_growth reads

    def step():
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        return block.sum()

    assert 48 * 2**20 < tool.rss_growth(step) < 200 * 2**20


def test_bad_arguments(load_tool, nl_config):
    tool = load_tool("benchmark_model")
    with pytest.raises(ValueError, match="--iters=0"):
        tool.main(["--config-file", nl_config, "--iters", "0"])


def test_amp_run_keeps_the_weights_and_counts_no_skips(load_tool, nl_config, opts_for):
    tool = load_tool("benchmark_model")
    results = tool.main(
        ["--config-file", nl_config, "--input-size", "96", "128", "--batch-size", "1"]
        + ["--iters", "1", "--warmup", "0", "--no-memory", "--tasks", "train"]
        + ["--amp", "bf16", "--opts"]
        + opts_for("")
        + GN
    )
    assert results["nl"]["skipped_steps"] == results["stock"]["skipped_steps"] == 0
    assert len(results["nl"]["train"]) == 1


class _NaNLossModel(torch.nn.Module):
    """A model whose training loss is NaN: the benchmark must time it, not crash or spread NaNs."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def forward(self, batch):
        if self.training:
            return {"loss": self.weight.sum() * float("nan")}
        return [{}]


def test_train_step_survives_a_non_finite_loss(load_tool, tiny_cfg):
    tool = load_tool("benchmark_model")
    model = _NaNLossModel()
    runner = tool.Runner(model, tiny_cfg, batch=[{"image": torch.zeros(3, 4, 4)}])
    assert all(group["lr"] == 0.0 for group in runner.optimizer.param_groups)
    for _ in range(2):
        assert runner.train_step() > 0
    assert runner.skipped_steps == 2
    assert torch.equal(model.weight.detach(), torch.ones(3))


def test_zero_learning_rate_leaves_finite_weights_unchanged(load_tool, tiny_cfg):
    tool = load_tool("benchmark_model")
    model = _NaNLossModel()
    model.forward = lambda batch: {"loss": (model.weight**2).sum()}
    runner = tool.Runner(model, tiny_cfg, batch=[])
    runner.train_step()
    assert runner.skipped_steps == 0
    assert model.weight.grad is not None and torch.equal(model.weight.detach(), torch.ones(3))
