"""The package imports beside detectron2, exposes its version, explains a missing detectron2,
works without triton (CPU-only torch builds lack it), and builds a wheel that carries the configs
and accepts numpy 2."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

import nl_detectron

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_string_matches_setup():
    assert re.fullmatch(r"\d+\.\d+\.\d+", nl_detectron.__version__)
    out = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == nl_detectron.__version__


def test_imports_beside_detectron2():
    import detectron2

    assert detectron2.__file__ != nl_detectron.__file__
    assert os.path.dirname(nl_detectron.__file__) == os.path.join(REPO_ROOT, "nl_detectron")


def _run_without(module, code):
    """``code`` run by this Python in a fresh process where ``import module`` fails as if it were
    not installed (a None entry in sys.modules does that)."""
    script = f"import sys\nsys.modules[{module!r}] = None\n{code}"
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )


def test_missing_detectron2_raises_helpful_import_error():
    code = (
        "try:\n"
        "    import nl_detectron\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR:', e)\n"
        "else:\n"
        "    print('IMPORTED')\n"
    )
    out = _run_without("detectron2", code)
    assert "IMPORT-ERROR:" in out.stdout, out.stdout + out.stderr
    message = out.stdout
    assert "detectron2" in message
    assert "scripts/ensure_env.sh" in message
    assert "pip install" in message


def test_works_without_triton_and_says_so_when_asked_for_its_kernels():
    # torch's CPU-only builds come without triton.
    code = (
        "import torch\n"
        "import nl_detectron.modeling\n"
        "from nl_detectron import NonLocalBlock\n"
        "block = NonLocalBlock(8, norm='')\n"
        "x = torch.randn(1, 8, 4, 5)\n"
        "assert block(x).shape == x.shape\n"
        "block.use_triton = True\n"
        "try:\n"
        "    block(x)\n"
        "except ValueError as e:\n"
        "    print('VALUE-ERROR:', e)\n"
    )
    out = _run_without("triton", code)
    assert "VALUE-ERROR: use_triton=True: the Triton kernels need the triton package" in out.stdout


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    """A wheel built as `pip wheel .` does, from a copy of the sources (no build/ in the repo)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("nl_detectron", "configs"):
        shutil.copytree(
            os.path.join(REPO_ROOT, name),
            src / name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), src)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--no-index", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("nl_detectron-*.whl")
    return wheel


def test_wheel_ships_every_config(built_wheel):
    with zipfile.ZipFile(built_wheel) as whl:
        shipped = {
            os.path.relpath(name, "nl_detectron/model_zoo/configs")
            for name in whl.namelist()
            if name.startswith("nl_detectron/model_zoo/configs/")
        }
    in_repo = {
        os.path.relpath(os.path.join(folder, name), os.path.join(REPO_ROOT, "configs"))
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, "configs"))
        for name in files
        if name.endswith((".yaml", ".py"))
    }
    assert in_repo <= shipped


def test_installed_wheel_reads_configs_through_the_model_zoo(built_wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
        + ["--target", str(target), str(built_wheel)],
        check=True,
        capture_output=True,
    )
    (lazy_config, *_) = sorted(
        name for name in os.listdir(os.path.join(REPO_ROOT, "configs")) if name.endswith(".py")
    )
    code = (
        "from nl_detectron import model_zoo\n"
        f"print(type(model_zoo.get_config({lazy_config!r}).model).__name__)\n"
        "cfg = model_zoo.get_config('mask_rcnn_nl_R50.yaml')\n"
        "print(model_zoo.get_config_file('mask_rcnn_nl_R50.yaml'))\n"
        "print(cfg.MODEL.NONLOCAL.TYPE, cfg.MODEL.NONLOCAL.STAGES)\n"
    )
    # Run outside the checkout so that only the installed copy can be imported.
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lazy_model, config_file, nonlocal_node = out.stdout.strip().splitlines()[-3:]
    assert lazy_model == "DictConfig"  # a LazyConfig, its relative imports resolved in the target
    assert config_file == str(target / "nl_detectron/model_zoo/configs/mask_rcnn_nl_R50.yaml")
    assert nonlocal_node == "nl ['res4']"


def test_wheel_installs_beside_numpy_2(built_wheel):
    # pip must not downgrade a numpy 2 that other packages (e.g. current opencv) are built for.
    with zipfile.ZipFile(built_wheel) as whl:
        (metadata,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        lines = whl.read(metadata).decode().splitlines()
    requirements = [
        Requirement(line.split(":", 1)[1]) for line in lines if "Requires-Dist:" in line
    ]
    for requirement in requirements:
        if requirement.name == "numpy":
            assert requirement.specifier.contains("2.4.6"), requirement
    assert any(r.name == "numpy" for r in requirements)
