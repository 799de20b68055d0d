"""scripts/gpu_benchmarks.sh, dry-run on any machine: every step is a command the tools and
pytest accept, and the forced-path steps cover every path the benchmark knows."""

import os
import shlex
import subprocess
import sys

from conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "gpu_benchmarks.sh")


def _run(out_dir, *parts):
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable)
    command = ["bash", SCRIPT, str(out_dir), *parts]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)


def test_every_step_is_a_command_the_tools_accept(tmp_path, load_tool, monkeypatch):
    run = _run(tmp_path)
    assert run.returncode == 0, run.stderr
    # "step NAME: COMMAND..." per step, shell-quoted
    steps = [shlex.split(line)[2:] for line in run.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 10  # goals 6, paths 2, triton 2
    blocks, model = load_tool("benchmark_blocks"), load_tool("benchmark_model")
    monkeypatch.setattr(blocks.torch.cuda, "is_available", lambda: True)  # as on the GPU
    monkeypatch.setattr(blocks, "triton_runs_on", lambda device_type: device_type == "cuda")
    forced = []
    for python, *argv in steps:
        assert python == sys.executable
        if argv[:2] == ["-m", "pytest"]:
            paths = [a.split("=")[-1] for a in argv if a.startswith(("tests/", "--ignore="))]
            assert paths and all(os.path.exists(os.path.join(REPO, p)) for p in paths), paths
        elif argv[0] == "tools/benchmark_blocks.py":
            args = blocks.argument_parser().parse_args(argv[1:])
            blocks.check_arguments(args)
            forced += args.paths or []
        else:
            assert argv[0] == "tools/benchmark_model.py"
            cfg, _ = model.setup(model.argument_parser().parse_args(argv[1:]))
            assert cfg.MODEL.DEVICE == "cuda" and cfg.MODEL.WEIGHTS == ""
    assert sorted(forced) == blocks.ALL_PATHS


def test_an_unknown_part_is_refused(tmp_path):
    run = _run(tmp_path, "goals", "everything")
    assert run.returncode == 2
    assert "unknown part 'everything'; allowed: goals, paths, triton" in run.stderr
