"""tools/context_ab.py: the configs it derives, its table, and one short A/B run end to end."""

import json
import math
import os

import pytest

from nl_detectron.analysis import load_tool_config
from nl_detectron.data import register_builtin_datasets


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("context_ab")


def test_runs_differ_only_in_blocks_and_seed(tool):
    base = load_tool_config(tool.DEFAULT_CONFIG, [])
    base.freeze()
    stock = tool.run_config(base, "stock", 1, 0.5, "/tmp/a")
    nl = tool.run_config(base, "nl", 2, 0.5, "/tmp/b")
    gc = tool.run_config(base, "gc", 1, 0.5, "/tmp/c")
    assert stock.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert nl.MODEL.BACKBONE.NAME == "build_resnet_nl_fpn_backbone"
    assert (gc.MODEL.NONLOCAL.TYPE, gc.MODEL.NONLOCAL.GC_RATIO) == ("gc", 0.25)
    assert (stock.SEED, nl.SEED) == (1, 2)
    assert stock.SOLVER.MAX_ITER == nl.SOLVER.MAX_ITER == round(base.SOLVER.MAX_ITER / 2)
    assert stock.SOLVER.STEPS == tuple(round(s / 2) for s in base.SOLVER.STEPS)
    # nothing else differs between the stock and the NL run
    flat = {}
    for name, cfg in (("stock", stock), ("nl", nl)):
        text = cfg.clone()
        text.defrost()
        text.MODEL.BACKBONE.NAME = text.SEED = text.OUTPUT_DIR = None
        flat[name] = text.dump()
    assert flat["stock"] == flat["nl"]


def test_table_gives_mean_and_sample_spread(tool):
    runs = {
        "stock": [{"metrics": {"bbox/AP": v, "segm/AP": v / 2}} for v in (10.0, 20.0, 30.0)],
        "nl": [
            {
                "metrics": {"bbox/AP": 40.0, "segm/AP": math.nan},
                "attention": dict.fromkeys(("partner_share", "distractor_share"), 0.1)
                | {"partner_uniform": 0.05, "distractor_uniform": 0.05},
            }
        ],
    }
    lines = tool.summary_table(runs).splitlines()
    assert lines[2].startswith("| stock | 3 | 20.0 ± 10.0 | n/a | 10.0 ± 5.0 |")
    assert lines[2].endswith("| — | — |")
    assert lines[3].startswith("| nl | 1 | 40.0 | n/a | n/a |")
    assert lines[3].endswith("| 10.0 (5.0) | 10.0 (5.0) |")


def test_bad_options(tool, tmp_path):
    out = ["--output", str(tmp_path)]
    with pytest.raises(ValueError, match="--scale=0.0 must be > 0"):
        tool.main(out + ["--scale", "0"])
    with pytest.raises(ValueError, match=r"--seeds \[1, 1\] repeat"):
        tool.main(out + ["--seeds", "1", "1"])
    with pytest.raises(ValueError, match="--threads=-1 must be >= 0"):
        tool.main(out + ["--threads", "-1"])
    with pytest.raises(SystemExit):
        tool.main(out + ["--models", "stock", "xl"])


@pytest.mark.slow
def test_short_ab_run(tool, tmp_path, monkeypatch):
    """Two models x two seeds of 8 iterations: every run trains, is evaluated, lands in the table
    and in results.json; a second call reuses the finished runs."""
    root = str(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", root)  # for the train_net subprocesses
    register_builtin_datasets(root)
    try:
        out = str(tmp_path / "ab")
        argv = ["--seeds", "0", "1", "--scale", "0.016", "--jobs", "2", "--output", out]
        argv += ["--opts", "TEST.DETECTIONS_PER_IMAGE", "4"]
        results = tool.main(argv)
        with open(os.path.join(out, "results.json")) as f:
            saved = json.load(f)["runs"]
        assert list(saved) == ["stock", "nl"] == list(results)
        for model, runs in saved.items():
            assert [r["seed"] for r in runs] == [0, 1]
            for run in runs:
                with open(os.path.join(run["output_dir"], "config.yaml")) as f:
                    assert f"SEED: {run['seed']}" in f.read()
                assert "iter: 7" in open(os.path.join(run["output_dir"], "train.log")).read()
                assert 0 <= run["metrics"]["bbox/AP"] <= 100
                assert "segm/AP" in run["metrics"]
                if model == "nl":
                    assert run["attention"]["num_queries"] == 2 * 128  # every val target
                    assert 0 < run["attention"]["partner_uniform"] < 0.2
                else:
                    assert "attention" not in run
        table = open(os.path.join(out, "table.md")).read().splitlines()
        assert table[2].startswith("| stock | 2 | ") and table[3].startswith("| nl | 2 | ")

        log = os.path.join(saved["nl"][0]["output_dir"], "train.log")
        mtime = os.path.getmtime(log)
        again = tool.main(argv)
        assert os.path.getmtime(log) == mtime  # not retrained
        assert again["nl"][0]["metrics"] == results["nl"][0]["metrics"]
    finally:
        register_builtin_datasets()
