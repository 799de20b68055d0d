"""scripts/ensure_env.sh keeps a working torch/torchvision pair, installs one only if none works.

Each test runs the script on a copy of the set-up files against a throwaway venv, offline (pip may
read no index and no local wheel folder), so any attempt to install torch fails the run.
"""

import os
import shutil
import subprocess
import sysconfig
import venv

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_setup_files(dest):
    for name in ("scripts", "nl_detectron"):
        shutil.copytree(
            os.path.join(REPO_ROOT, name),
            os.path.join(dest, name),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), dest)
    if os.path.isdir(os.path.join(REPO_ROOT, "configs")):
        shutil.copytree(os.path.join(REPO_ROOT, "configs"), os.path.join(dest, "configs"))
    return dest


def _venv_seeing(path, site_dir):
    """A venv without its own packages whose interpreter also imports from ``site_dir``."""
    venv.create(path, with_pip=False)
    purelib = sysconfig.get_paths(vars={"base": path, "platbase": path})["purelib"]
    with open(os.path.join(purelib, "outer.pth"), "w") as f:
        f.write(site_dir + "\n")
    return purelib


def _run_offline(repo, venv_dir, **extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no index URL or wheel folder from pip's config files
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",  # pip reads this as --no-build-isolation
        NL_DETECTRON_VENV=venv_dir,
        **extra_env,
    )
    return subprocess.run(
        ["bash", os.path.join(repo, "scripts", "ensure_env.sh")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keeps_the_working_torch_of_the_environment(tmp_path):
    import torch
    import torchvision

    repo = _copy_setup_files(str(tmp_path / "repo"))
    venv_dir = str(tmp_path / "venv")
    # The throwaway venv sees this interpreter's packages: torch, torchvision, detectron2, pip.
    own_site = _venv_seeing(venv_dir, sysconfig.get_paths()["purelib"])

    out = _run_offline(repo, venv_dir)

    assert out.returncode == 0, out.stderr[-4000:]
    kept = f"keeping the working torch {torch.__version__} torchvision {torchvision.__version__}"
    assert kept in out.stderr
    assert "installing torch" not in out.stderr
    assert not any(name.startswith(("torch", "numpy")) for name in os.listdir(own_site))
    with open(os.path.join(venv_dir, ".nl_detectron_env")) as f:
        assert f.read().strip(), "the stamp of a finished run is missing"


def test_installs_the_requested_build_when_torch_is_missing(tmp_path):
    repo = _copy_setup_files(str(tmp_path / "repo"))
    pip_only = tmp_path / "pip_only"
    pip_only.mkdir()
    os.symlink(os.path.join(sysconfig.get_paths()["purelib"], "pip"), os.path.join(pip_only, "pip"))
    venv_dir = str(tmp_path / "venv")
    _venv_seeing(venv_dir, str(pip_only))

    request = "nl-detectron-no-such-torch==0 --index-url file:///nonexistent"
    out = _run_offline(repo, venv_dir, NL_DETECTRON_TORCH_PIP_ARGS=request)

    # The request cannot be met offline; what matters is that the script detected no torch and
    # passed the user's pip arguments on instead of the default pin.
    assert out.returncode != 0
    assert "no working torch/torchvision pair" in out.stderr
    assert "No module named 'torch'" in out.stderr
    assert f"installing {request}" in out.stderr
    assert "nl-detectron-no-such-torch" in out.stderr.split(f"installing {request}", 1)[1]
    assert not os.path.exists(os.path.join(venv_dir, ".nl_detectron_env"))
