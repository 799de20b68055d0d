"""scripts/gpu_benchmarks.sh and its Python half, on any machine: the dry run lists every part
within its time limit and file count, with commands the tools and pytest accept; the preflight
names what is missing before anything runs; the summary puts every goal cell in one table."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "gpu_benchmarks.sh")
PARTS = ["goals-blocks", "goals-models", "paths", "triton-tests", "triton-tables"]
PART_SECONDS = 8 * 60  # one device call is at most 10 minutes: a part leaves room for the rest
PART_FILES = 3


@pytest.fixture(scope="module")
def helper():
    """scripts/gpu_benchmarks.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "gpu_benchmarks", os.path.join(REPO, "scripts", "gpu_benchmarks.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out_dir, *parts, dry=True, env=None):
    env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    if dry:
        env["DRY_RUN"] = "1"
    command = ["bash", SCRIPT, str(out_dir), *parts]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)


def _plan(output):
    """{part: (seconds, files, [(step seconds, step name, argv)])} of a dry run."""
    plan = {}
    for line in output.splitlines():
        if line.startswith("part "):
            head, files = line.split(", files: ")
            name, seconds = head[len("part ") :].split(": at most ")
            steps = []
            plan[name] = (int(seconds.rstrip(" s")), files.split(), steps)
        else:
            assert line.startswith("step "), line
            _, seconds, *rest = shlex.split(line)
            colon = next(i for i, word in enumerate(rest) if word.endswith(":"))
            name = " ".join(rest[: colon + 1])[:-1]
            steps.append((int(seconds), name, rest[colon + 1 :]))
    return plan


def test_every_part_fits_one_device_call_and_writes_at_most_three_files(tmp_path):
    run = _run(tmp_path)
    assert run.returncode == 0, run.stderr
    plan = _plan(run.stdout)
    assert list(plan) == PARTS
    for part, (seconds, files, steps) in plan.items():
        assert sum(step[0] for step in steps) == seconds <= PART_SECONDS, part
        assert len(files) <= PART_FILES and f"{part}.log" in files, (part, files)
        preflight = [sys.executable, "scripts/gpu_benchmarks.py", "preflight", part]
        assert steps[0][1:] == ("preflight", preflight)
        # the tools' rows go elsewhere until the summary: no command names a file in OUT
        assert not [a for _, _, argv in steps for a in argv if a.startswith(f"{tmp_path}/")]
    assert os.listdir(tmp_path) == []  # a dry run writes nothing


def test_every_step_is_a_command_the_tools_accept(tmp_path, load_tool, monkeypatch, helper):
    plan = _plan(_run(tmp_path).stdout)
    blocks, model = load_tool("benchmark_blocks"), load_tool("benchmark_model")
    monkeypatch.setattr(blocks.torch.cuda, "is_available", lambda: True)  # as on the GPU
    monkeypatch.setattr(blocks, "triton_runs_on", lambda device_type: device_type == "cuda")
    forced = []
    for part, (_, files, steps) in plan.items():
        rows = set()  # the --json files of the part's measurements: what its summary reads
        for _, _, (python, *argv) in steps:
            assert python == sys.executable
            if argv[:2] == ["-m", "pytest"]:
                paths = [a.split("=")[-1] for a in argv if a.startswith(("tests/", "--ignore="))]
                assert paths and all(os.path.exists(os.path.join(REPO, p)) for p in paths), paths
            elif argv[0] == "scripts/gpu_benchmarks.py":
                args = helper.argument_parser().parse_args(argv[1:])
                if args.command == "summary":
                    assert "summary.json" in files and args.out_dir == str(tmp_path)
                    assert set(args.rows) == rows and len(rows) == 1, (part, args.rows)
            elif argv[0] == "tools/benchmark_blocks.py":
                args = blocks.argument_parser().parse_args(argv[1:])
                blocks.check_arguments(args)
                forced += args.paths or []
                rows.add(args.json)
            else:
                assert argv[0] == "tools/benchmark_model.py"
                args = model.argument_parser().parse_args(argv[1:])
                cfg, _ = model.setup(args)
                assert cfg.MODEL.DEVICE == "cuda" and cfg.MODEL.WEIGHTS == ""
                rows.add(args.json)
    assert sorted(set(forced)) == blocks.ALL_PATHS  # every path, the candidate `efficient` too
    assert "efficient" in blocks.PATH_VARIANTS["NL gaussian"]


def test_the_helper_knows_the_parts_and_variants_the_tools_do(tmp_path, helper, load_tool):
    assert list(helper.PART_NEEDS) == PARTS
    assert helper.VARIANTS == tuple(load_tool("benchmark_blocks").VARIANTS)


def test_aliases_name_their_parts_and_an_unknown_part_is_refused(tmp_path):
    assert list(_plan(_run(tmp_path, "goals", "triton").stdout)) == PARTS[:2] + PARTS[3:]
    run = _run(tmp_path, "paths", "everything")
    assert run.returncode == 2
    assert f"unknown part 'everything'; allowed: {' '.join(PARTS)}" in run.stderr


def _hiding(tmp_path, *modules):
    """An environment whose Pythons find none of ``modules``, as if not installed (a None entry
    in sys.modules, set by a sitecustomize on PYTHONPATH)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    hide = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    (shim / "sitecustomize.py").write_text("import sys\n" + hide)
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def test_the_preflight_names_a_missing_package_and_nothing_runs(tmp_path):
    out = tmp_path / "out"
    run = _run(out, "goals-blocks", "paths", dry=False, env=_hiding(tmp_path, "detectron2"))
    assert run.returncode == 3, run.stdout + run.stderr
    message = "missing: detectron2 (carry the sal-detectron2 wheel; see the header of "
    assert message in run.stdout
    assert "goals-blocks: nothing measured, the preflight failed" in run.stderr
    assert os.listdir(out) == ["goals-blocks.log"]  # the first part stopped the script
    assert message in (out / "goals-blocks.log").read_text()


def test_the_preflight_names_each_missing_package_once(helper, monkeypatch):
    # Only what is hidden is missing: the rest of the stack is already imported here.
    for name in ("portalocker", "yacs"):
        monkeypatch.setitem(sys.modules, name, None)
    assert helper.preflight(["goals-models"]) == [
        "missing: portalocker (carry the portalocker wheel; see the header of "
        "scripts/gpu_benchmarks.sh)",
        "missing: yacs (carry the yacs wheel; see the header of scripts/gpu_benchmarks.sh)",
    ]


def test_the_preflight_finds_every_package_here(helper):
    # (CPU-only torch builds come without triton)
    has_triton = importlib.util.find_spec("triton") is not None
    lines = helper.preflight([p for p in PARTS if has_triton or "triton" not in p])
    if torch.cuda.is_available():
        assert lines == []
    else:
        assert [line.split(" (")[0] for line in lines] == [
            "missing: a CUDA device visible to torch"
        ]


def _block_row(stage, dtype, variant, budget, ratio, peak, path="kept", table="block", **extra):
    return {
        "table": table,
        "device": "cuda",
        "device_name": "NVIDIA H200",
        "stage": stage,
        "dtype": dtype,
        "variant": variant,
        "budget_mb": budget,
        "effective_budget_mb": budget or 9000.0,
        "path": path,
        "fwd_bwd_s": 0.01,
        "fwd_bwd_explicit_s": 0.01 * ratio,
        "peak_mib_fwd_bwd": peak,
        "peak_mib_explicit_fwd_bwd": 8800.0,
        **extra,
    }


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_the_summary_puts_every_goal_cell_in_one_table(tmp_path, helper):
    model = {
        "table": "model",
        "device": "cuda",
        "device_name": "NVIDIA H200",
        "config": "mask_rcnn_nl_R50",
        "amp": "bf16",
        "input_size": [800, 1333],
        "batch_size": 2,
        "train_s_nl": 0.0623,
        "train_s_stock": 0.0595,
        "inference_s_nl": 0.030,
        "inference_s_stock": 0.030,
        "train_peak_mib_nl": 3190.0,
        "train_peak_mib_stock": 2933.0,
    }
    rows = [
        _block_row("res3", "bf16", "NL embedded_gaussian", None, 2.2, 400.0, path="fused"),
        _block_row("res3", "fp32", "DNL", 1024.0, 0.8, 1100.0, path="chunked (2714 rows)"),
        model,
        dict(model, device="cpu", amp="fp32"),  # a CPU run is no GPU goal cell
    ]
    helper.summarize(str(tmp_path), [_write_rows(tmp_path / "rows.jsonl", rows)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    cells = summary["cells"]
    # 7 variants x 2 stages x 3 dtypes at the default budget, 7 x 3 at res3 under 1 GiB, 6 models
    assert len(cells) == 42 + 21 + 6 and summary["devices"] == ["NVIDIA H200"]
    measured = {(c["goal"], c["subject"], c["dtype"]): c for c in cells if c["met"] is not None}
    assert set(measured) == {
        ("default budget", "NL embedded_gaussian", "bf16"),
        ("1 GiB budget", "DNL", "fp32"),
        ("model train vs stock", "mask_rcnn_nl_R50", "bf16"),
        ("model inference vs stock", "mask_rcnn_nl_R50", "bf16"),
    }
    flash = measured["default budget", "NL embedded_gaussian", "bf16"]
    assert flash["met"] and flash["least_ratio"] == 2.0 and flash["path"] == "fused"
    # fast enough (time 1.25x explicit <= 1.3x) but over the budget
    assert not measured["1 GiB budget", "DNL", "fp32"]["met"]
    train = measured["model train vs stock", "mask_rcnn_nl_R50", "bf16"]
    assert not train["met"] and train["ratio"] == pytest.approx(1.047, abs=1e-3)
    table = (tmp_path / "summary.md").read_text()
    assert "2 of 69 goal cells met, 65 unmeasured" in table
    assert (
        "| default budget | NL embedded_gaussian | res3 | bf16 | default | fused | 2.20x | >= 2x "
        "| yes | 400 / 8800 |" in table
    )
    assert "| 1 GiB budget | DNL | res3 | fp32 | 1024 MiB | chunked (2714 rows) | 0.80x " in table
    assert (
        "| model train vs stock | mask_rcnn_nl_R50 | 800x1333 | bf16 | default | - | 1.05x "
        in table
    )
    assert table.count("| unmeasured |") == 65

    # a part run later into the same folder adds its rows; a row measured again replaces its own
    again = [_block_row("res3", "bf16", "NL embedded_gaussian", None, 1.5, 400.0, path="fused")]
    helper.summarize(str(tmp_path), [_write_rows(tmp_path / "more.jsonl", again)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["rows"]) == 4
    assert sum(c["met"] is not None for c in summary["cells"]) == 4
    other = tmp_path / "other"
    other.mkdir()
    helper.summarize(str(other), [str(tmp_path / "summary.json")])  # summaries merge
    assert json.loads((other / "summary.json").read_text())["rows"] == summary["rows"]


def test_the_summary_sets_each_forced_path_beside_the_policys(tmp_path, helper):
    def forced(path, ratio, peak, taken=None):
        policy = "chunked (2202 rows)"
        row = _block_row("res3", "fp32", "NL gaussian", 1024.0, ratio, peak, taken or path, "paths")
        return dict(row, forced=path, policy=policy)

    rows = [
        forced("chunked", 0.6, 950.0, taken="chunked (2202 rows)"),
        forced("efficient", 0.9, 500.0),
        forced("kept", 1.0, 4700.0),  # fastest, but over the budget
    ]
    helper.summarize(str(tmp_path), [_write_rows(tmp_path / "rows.jsonl", rows)])
    (decision,) = json.loads((tmp_path / "summary.json").read_text())["paths"]
    assert decision["fastest_within_budget"] == "efficient"
    assert decision["policy_is_fastest"] is False
    table = (tmp_path / "summary.md").read_text()
    assert (
        "| cuda | res3 | fp32 | NL gaussian | 1024 | chunked (2202 rows) | efficient | **no** "
        in table
    )
    assert "efficient 0.90x / 500" in table


def test_rows_of_the_block_benchmark_reach_the_summary(tmp_path, load_tool, helper, capsys):
    rows = tmp_path / "rows.jsonl"
    argv = ["--stages", "tiny", "--tables", "paths", "block", "--threads", "1", "--variants"]
    argv += ["NL gaussian", "--paths", "kept", "efficient", "--json", str(rows)]
    load_tool("benchmark_blocks").main(argv)
    capsys.readouterr()
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["table"], r.get("forced")) for r in written] == [
        ("block", None),
        ("paths", "kept"),
        ("paths", "efficient"),
    ]
    assert all(r["device"] == "cpu" and r["effective_budget_mb"] == 512 for r in written)
    helper.summarize(str(tmp_path), [str(rows)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(c["met"] is None for c in summary["cells"])  # CPU rows fill no GPU goal cell
    (decision,) = summary["paths"]
    assert set(decision["paths"]) == {"kept", "efficient"} and decision["policy"] == "kept"
