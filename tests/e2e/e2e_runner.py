"""Running tools/train_net.py in a subprocess, as a user would, and reading its COCO results."""

import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
QUICK = os.path.join(REPO_ROOT, "configs", "quick_schedules")


def quick_config(name: str) -> str:
    return os.path.join(QUICK, name)


def parse_copypaste(log: str) -> Dict[str, Dict[str, float]]:
    """The last evaluation printed by detectron2's ``print_csv_format`` in ``log``.

    Returns:
        {task: {metric: value}}, e.g. {"bbox": {"AP": 9.3, "AP50": 22.8, ...}, ...}.
    """
    results: Dict[str, Dict[str, float]] = {}
    lines = [m.group(1).strip() for m in re.finditer(r"copypaste: (.*)", log)]
    for i, line in enumerate(lines):
        if line.startswith("Task: ") and i + 2 < len(lines):
            names = lines[i + 1].split(",")
            values = [float(v) for v in lines[i + 2].split(",")]
            results[line[len("Task: ") :]] = dict(zip(names, values))
    return results


class Run:
    """A finished train_net process: its output, exit code and parsed results."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.log = proc.stdout
        self.results = parse_copypaste(self.log)

    def check(self) -> "Run":
        assert self.returncode == 0, self.log[-6000:]
        return self


def run_train_net(
    datasets_root: str,
    config: str,
    out_dir: str,
    *args: str,
    opts: Optional[List[str]] = None,
    threads: Optional[int] = None,
    timeout: int = 600,
) -> Run:
    """``python tools/train_net.py --config-file config *args OUTPUT_DIR out_dir *opts``."""
    args = ("--config-file", config, *args, "OUTPUT_DIR", out_dir, *(opts or []))
    return run_tool(datasets_root, TRAIN_NET, *args, threads=threads, timeout=timeout)


def run_tool(
    datasets_root: str,
    script: str,
    *args: str,
    threads: Optional[int] = None,
    timeout: int = 600,
) -> Run:
    """``python script *args`` from the repository root, with the built-in data under
    ``datasets_root``."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, PYTHONUNBUFFERED="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return Run(proc)
