"""tools/context_ab.py: the configs it derives, the metrics it reads, its table and verdicts, and
one short A/B run end to end."""

import json
import math
import os

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.solver import build_lr_scheduler

from nl_detectron.analysis import load_tool_config
from nl_detectron.data import context, context_source, register_builtin_datasets

SOLVER_KEYS = ("MAX_ITER", "STEPS", "WARMUP_ITERS")


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("context_ab")


@pytest.fixture(scope="module")
def base(tool):
    cfg = load_tool_config(tool.CONFIGS["pair"], [])
    cfg.freeze()
    return cfg


def _without(cfg, *keys):
    """``cfg`` dumped with the dotted ``keys`` set to None (to compare the rest)."""
    cfg = cfg.clone()
    cfg.defrost()
    for key in keys:
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = None
    return cfg.dump()


def test_one_config_per_rung(tool):
    assert sorted(tool.CONFIGS) == sorted(context.RUNGS)
    for rung, path in tool.CONFIGS.items():
        assert os.path.basename(path) == f"faster_rcnn_nl_R18_C4_context_{rung}_quick.yaml"
        cfg = load_tool_config(path, [])
        assert cfg.DATASETS.TRAIN == (f"nl_context_{rung}_train",)
        assert cfg.DATASETS.TEST == (f"nl_context_{rung}_val",)
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(context.CATEGORY_NAMES)
        assert not cfg.MODEL.MASK_ON and not cfg.MODEL.KEYPOINT_ON
    pair, bind = (load_tool_config(tool.CONFIGS[r], []) for r in ("pair", "bind"))
    assert _without(pair, "DATASETS.TRAIN", "DATASETS.TEST") == _without(
        bind, "DATASETS.TRAIN", "DATASETS.TEST"
    )


@pytest.mark.parametrize("model", ["stock", "mean", "gc", "nl", "nl_gaussian", "dnl", "snl"])
def test_run_config_sets_the_blocks_seed_and_output(tool, base, model):
    assert set(tool.MODELS) == {"stock", "mean", "gc", "nl", "nl_gaussian", "dnl", "snl"}
    cfg = tool.run_config(base, model, 7, 1.0, f"/tmp/ab/{model}")
    assert cfg.is_frozen()
    assert (cfg.SEED, cfg.OUTPUT_DIR) == (7, f"/tmp/ab/{model}")
    nonlocal_cfg = cfg.MODEL.NONLOCAL
    if model == "stock":  # detectron2's own backbone of the same architecture: no blocks
        assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
        assert nonlocal_cfg == base.MODEL.NONLOCAL
    else:
        assert cfg.MODEL.BACKBONE.NAME == base.MODEL.BACKBONE.NAME == "build_resnet_nl_backbone"
        base_nl = base.MODEL.NONLOCAL
        expected = {
            "mean": ("gc", "avg", 0.25, base_nl.INSTANTIATION),
            "gc": ("gc", "attention", 0.25, base_nl.INSTANTIATION),
            "nl": ("nl", base_nl.GC_POOLING, base_nl.GC_RATIO, "embedded_gaussian"),
            "nl_gaussian": ("nl", base_nl.GC_POOLING, base_nl.GC_RATIO, "gaussian"),
        }.get(model, (model, base_nl.GC_POOLING, base_nl.GC_RATIO, base_nl.INSTANTIATION))
        got = (nonlocal_cfg.TYPE, nonlocal_cfg.GC_POOLING, nonlocal_cfg.GC_RATIO)
        assert got + (nonlocal_cfg.INSTANTIATION,) == expected
    # the schedule is the config's at scale 1, and nothing else differs from the base
    assert [cfg.SOLVER[k] for k in SOLVER_KEYS] == [base.SOLVER[k] for k in SOLVER_KEYS]
    changed = ("MODEL.BACKBONE.NAME", "MODEL.NONLOCAL", "SEED", "OUTPUT_DIR")
    assert _without(cfg, *changed) == _without(base, *changed)
    assert base.SEED != 7 and base.is_frozen()  # the base is left alone


def test_run_config_scales_the_schedule(tool, base):
    assert (base.SOLVER.MAX_ITER, base.SOLVER.STEPS, base.SOLVER.WARMUP_ITERS) == (
        2500,
        (2000, 2300),
        100,
    )
    for scale, expected in (
        (0.5, (1250, (1000, 1150), 50)),
        (2.0, (5000, (4000, 4600), 200)),
        # steps that would fall on or past the last iteration, or on one another, are dropped
        (0.002, (5, (4,), 0)),
        (0.0012, (3, (2,), 0)),
        (0.001, (2, (), 0)),
        (1e-6, (1, (), 0)),  # never below one iteration
    ):
        cfg = tool.run_config(base, "nl", 0, scale, "/tmp/ab")
        assert tuple(cfg.SOLVER[k] for k in SOLVER_KEYS) == expected, scale
        # detectron2 builds the LR schedule of every scaled config
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
        build_lr_scheduler(cfg, optimizer)


def _write_metrics(folder, entries):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")


def _evaluation(iteration, overall, per_category):
    entry = {"iteration": iteration, "bbox/AP": overall, "bbox/AP50": overall + 1}
    entry.update({f"bbox/AP-{n}": v for n, v in zip(context.CATEGORY_NAMES, per_category)})
    return entry


def test_final_metrics_and_last_health(tool, tmp_path):
    out = str(tmp_path / "run")
    assert tool.final_metrics(out) == {} and tool.last_health(out) == {}
    gate, share = "nonlocal/res4.nonlocal1/gate", "nonlocal/res4.nonlocal1/share"
    _write_metrics(
        out,
        [
            {"iteration": 0, "total_loss": 3.0, gate: 0.0},
            _evaluation(4, 10.0, (20.0, 40.0, 60.0, 80.0)),
            {"iteration": 9, "total_loss": 2.0, gate: 0.1, share: 0.3},
            _evaluation(9, 12.0, (30.0, 50.0, 70.0, 91.0)),
            {"iteration": 10, gate: 0.2},
        ],
    )
    metrics = tool.final_metrics(out)
    assert metrics["bbox/AP"] == 12.0 and metrics["iteration"] == 9  # the last evaluation
    assert metrics["target/AP"] == pytest.approx(40.0)  # mean of the two target categories
    assert metrics["cue/AP"] == pytest.approx(80.5)  # mean of the two cue categories
    assert tool.last_health(out) == {gate: 0.2, share: 0.3}
    # training logged, nothing evaluated yet
    _write_metrics(out, [{"iteration": 0, "total_loss": 3.0}])
    assert tool.final_metrics(out) == {}


def _run(target_acc, target_ap, cue_acc=0.9, cue_ap=80.0, attention=None, gate=None):
    run = {
        "metrics": {"target/AP": target_ap, "cue/AP": cue_ap},
        "accuracy": {"target_accuracy": target_acc, "cue_accuracy": cue_acc},
        "health": {} if gate is None else {"nonlocal/res4.nonlocal1/gate": gate},
    }
    if attention is not None:  # self share, then partner and distractor % of the rest (uniform)
        keys = ("self_share", "partner_outside", "partner_outside_uniform")
        keys += ("distractor_outside", "distractor_outside_uniform")
        run["attention"] = dict(zip(keys, attention))
    return run


def test_summary_table(tool):
    results = {
        "stock": [_run(a / 100, ap) for a, ap in ((50, 10.0), (60, 20.0), (70, 30.0))],
        "mean": [_run(0.55, 12.0, gate=0.01234)],  # no attention
        # one seed of the pair rung: no distractor (NaN)
        "nl_gaussian": [_run(0.95, 60.0, attention=(0.8, 0.9, 0.1, math.nan, math.nan), gate=0.2)],
        "nl": [
            _run(0.8, 40.0, cue_acc=1.0, attention=(0.6, 0.3, 0.05, 0.02, 0.04), gate=0.5),
            _run(0.9, 50.0, cue_acc=0.8, attention=(0.8, 0.5, 0.07, 0.04, 0.04), gate=0.7),
        ],
    }
    lines = tool.summary_table(results).splitlines()
    assert lines[0] == (
        "| model | seeds | target acc. % | target AP | cue acc. % | cue AP | self share % "
        "| partner % of the rest (uniform) | distractor % of the rest (uniform) | gate |"
    )
    assert lines[1] == "|" + "---|" * 10
    assert lines[2] == (
        "| stock | 3 | 60.0 ± 10.0 | 20.0 ± 10.0 | 90.0 ± 0.0 | 80.0 ± 0.0 | — | — | — | — |"
    )
    assert lines[3] == "| mean | 1 | 55.0 | 12.0 | 90.0 | 80.0 | — | — | — | 0.012 |"
    assert (
        lines[4]
        == "| nl_gaussian | 1 | 95.0 | 60.0 | 90.0 | 80.0 | 80.0 | 90.0 (10.0) | — | 0.200 |"
    )
    assert lines[5] == (
        "| nl | 2 | 85.0 ± 7.1 | 45.0 ± 7.1 | 90.0 ± 14.1 | 80.0 ± 0.0 | 70.0 ± 14.1 "
        "| 40.0 ± 14.1 (6.0) | 3.0 ± 1.4 (4.0) | 0.600 ± 0.141 |"
    )
    assert len(lines) == 6


def test_decide(tool):
    stock = [_run(a / 100, 10.0) for a in (50, 52, 54)]
    results = {
        "stock": stock,
        "nl": [_run(a / 100, 10.0) for a in (80, 82, 84)],  # +30, spread 2
        "mean": [_run(a / 100, 10.0) for a in (53, 55, 57)],  # +3, within 3 x 2
        "gc": [_run(0.9, 10.0)],
    }
    assert tool.decide(results) == [
        "nl vs stock: target acc. % +30.0 (3 x larger seed std 6.0): decided",
        "mean vs stock: target acc. % +3.0 (3 x larger seed std 6.0): not decided",
        "gc vs stock: needs 2 or more seeds of each to decide",
    ]
    # another column; a lower mean is decided as well
    worse = {"stock": [_run(0.5, ap) for ap in (30.0, 31.0)], "nl": [_run(0.5, 10.0)] * 2}
    (line,) = tool.decide(worse, "target AP")
    assert line.startswith("nl vs stock: target AP -20.5 (") and line.endswith(": decided")
    # one seed of stock, or no stock at all
    assert tool.decide({"stock": stock[:1], "nl": results["nl"]}) == [
        "nl vs stock: needs 2 or more seeds of each to decide"
    ]
    assert tool.decide({"nl": results["nl"]}) == []


def test_reference_lines_and_no_health_plot(tool, tmp_path):
    spec = context.ContextSpec("bind", num_images=32, seed=4)
    json_file, _ = context_source.ensure_written(str(tmp_path), "bind", "val", spec=spec)
    name = "nl_context_ab_reference_test"
    MetadataCatalog.get(name).set(json_file=json_file)
    try:
        rule, coin = tool.reference_lines(name)
    finally:
        MetadataCatalog.remove(name)
    assert rule == "true boxes named by the rule: target AP 100.0, AP50 100.0"
    assert coin.startswith("true boxes named by a coin (3 draws): target AP ")
    assert " ± " in coin and coin.endswith("; target accuracy 50%")
    # no run with health records: no figure
    results = {"stock": [dict(_run(0.5, 1.0), output_dir=str(tmp_path / "stock"))]}
    assert tool.plot_health(results, str(tmp_path)) == ""
    assert not os.path.exists(tmp_path / "block_health.png")


def test_bad_options(tool, tmp_path):
    out = ["--output", str(tmp_path)]
    with pytest.raises(ValueError, match="--scale=0.0 must be > 0"):
        tool.main(out + ["--scale", "0"])
    with pytest.raises(ValueError, match="--jobs=0 must be >= 1"):
        tool.main(out + ["--jobs", "0"])
    with pytest.raises(ValueError, match=r"--seeds \[1, 1\] repeat"):
        tool.main(out + ["--seeds", "1", "1"])
    with pytest.raises(ValueError, match="--threads=-1 must be >= 0"):
        tool.main(out + ["--threads", "-1"])
    for bad in (["--models", "stock", "xl"], ["--rung", "triple"]):
        with pytest.raises(SystemExit):
            tool.main(out + bad)
    assert os.listdir(tmp_path) == []  # nothing was trained


@pytest.mark.slow
def test_short_ab_run(tool, tmp_path, monkeypatch):
    """stock and NL, one seed of 3 iterations on the pair rung (val: 8 images written ahead into
    the datasets root): every run trains, is evaluated and read out, lands in the table and in
    results.json; a second call reuses the finished runs."""
    root = str(tmp_path / "datasets")
    val = context.ContextSpec("pair", num_images=8, seed=9)
    context_source.ensure_written(root, "pair", "val", spec=val)  # found by the subprocesses
    monkeypatch.setenv("DETECTRON2_DATASETS", root)  # for the train_net subprocesses
    register_builtin_datasets(root)
    try:
        out = str(tmp_path / "ab")
        argv = ["--rung", "pair", "--models", "stock", "nl", "--seeds", "0", "--scale", "0.0012"]
        # 3 iterations: keep every detection, so that each category gets an AP
        argv += [
            "--jobs",
            "2",
            "--output",
            out,
            "--opts",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
        ]
        results = tool.main(argv)
        with open(os.path.join(out, "results.json")) as f:
            saved = json.load(f)
        assert saved["config"] == tool.CONFIGS["pair"] and saved["scale"] == 0.0012
        runs = saved["runs"]
        assert list(runs) == ["stock", "nl"] == list(results)
        for model, (run,) in runs.items():
            assert run["seed"] == 0
            with open(os.path.join(run["output_dir"], "config.yaml")) as f:
                text = f.read()
            assert "SEED: 0" in text and "MAX_ITER: 3" in text
            assert "iter: 2" in open(os.path.join(run["output_dir"], "train.log")).read()
            for key in ("target/AP", "cue/AP", "bbox/AP"):
                assert 0 <= run["metrics"][key] <= 100
            assert run["accuracy"]["targets"] == run["accuracy"]["cues"] == val.num_images
            if model == "nl":
                assert run["attention"]["num_queries"] == val.num_images  # every val target
                assert 0 < run["attention"]["partner_uniform"] < 0.2
                assert math.isnan(run["attention"]["distractor_share"])  # one pair per image
                assert "nonlocal/res4.nonlocal1/gate" in run["health"]
            else:
                assert "attention" not in run and run["health"] == {}
        table = open(os.path.join(out, "table.md")).read()
        lines = table.splitlines()
        assert lines[2].startswith("| stock | 1 | ") and lines[3].startswith("| nl | 1 | ")
        assert "- true boxes named by the rule: target AP 100.0, AP50 100.0" in lines
        assert any(line.startswith("- true boxes named by a coin (3 draws)") for line in lines)
        assert "- nl vs stock: needs 2 or more seeds of each to decide" in lines
        assert lines[-1] == "Block health: block_health.png"
        assert os.path.isfile(os.path.join(out, "block_health.png"))

        log = os.path.join(runs["nl"][0]["output_dir"], "train.log")
        mtime = os.path.getmtime(log)
        again = tool.main(argv)
        assert os.path.getmtime(log) == mtime  # not retrained
        assert again["nl"][0]["metrics"] == results["nl"][0]["metrics"]
    finally:
        register_builtin_datasets()
