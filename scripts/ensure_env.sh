#!/usr/bin/env bash
# Creates .venv/ at the repository root (or uses NL_DETECTRON_VENV) and installs what nl_detectron
# needs (first use only). What is already there and works is kept.
#
# torch / torchvision:
#   1. a pair that imports, is at least torch 2.1 / torchvision 0.16 (setup.py's minimums) and runs
#      torchvision's compiled ops (nms) is kept, e.g. a build made for the user's CUDA driver;
#   2. otherwise pip installs NL_DETECTRON_TORCH_PIP_ARGS, default "torch==2.14.1 torchvision==0.29.1"
#      (the two must match: a torchvision built for another torch fails with
#      "operator torchvision::nms does not exist"). Another build, e.g. for an older CUDA driver:
#        NL_DETECTRON_TORCH_PIP_ARGS="torch torchvision --index-url https://download.pytorch.org/whl/cu126"
# detectron2:
#   1. NL_DETECTRON_D2_SOURCE=<checkout path or git URL>: build the official source into the venv.
#   2. an importable detectron2 in the venv (an official build stays untouched).
#   3. the PyPI repackage `sal-detectron2==0.7.2` (detectron2 main, pure Python, no _C), installed
#      by its wheel; its runtime dependencies are pinned in requirements-detectron2.txt.
# A second run with the same inputs returns in about a second (stamp file in the venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NL_DETECTRON_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.nl_detectron_env"
SAL_WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
TORCH_PIP_ARGS="${NL_DETECTRON_TORCH_PIP_ARGS:-torch==2.14.1 torchvision==0.29.1}"

log() { echo "[ensure_env] $*" >&2; }

inputs_hash() {
  cat "$ROOT/setup.py" "$ROOT/scripts/ensure_env.sh" "$ROOT/scripts/requirements-detectron2.txt" |
    sha256sum | cut -d' ' -f1
}
WANT="$(inputs_hash)|${NL_DETECTRON_D2_SOURCE:-}|$TORCH_PIP_ARGS"

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

# Prints "torch <version> torchvision <version>" and succeeds when the venv's pair is usable; the
# nms call fails when torchvision's compiled operators do not match the installed torch.
working_torch() {
  "$PY" - <<'PYTHON'
import re

import torch
import torchvision
from torchvision.ops import nms


def major_minor(version):
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())


assert major_minor(torch.__version__) >= (2, 1), f"torch {torch.__version__} is older than 2.1"
assert major_minor(torchvision.__version__) >= (0, 16), (
    f"torchvision {torchvision.__version__} is older than 0.16"
)
boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1], [3.0, 3.0, 4.0, 4.0]])
keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], f"torchvision.ops.nms returned {keep.tolist()}"
print("torch", torch.__version__, "torchvision", torchvision.__version__)
PYTHON
}

if [ ! -x "$PY" ]; then
  log "creating virtual environment at $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check)

probe="$(mktemp)"
trap 'rm -f "$probe"' EXIT
if found="$(working_torch 2>"$probe")"; then
  log "keeping the working $found"
else
  log "no working torch/torchvision pair ($(tail -n 1 "$probe")); installing $TORCH_PIP_ARGS"
  read -r -a torch_args <<<"$TORCH_PIP_ARGS"
  "${PIP[@]}" "${torch_args[@]}"
  found="$(working_torch)" || { log "the installed torch/torchvision pair does not work"; exit 1; }
  log "installed $found"
fi

if [ -n "${NL_DETECTRON_D2_SOURCE:-}" ]; then
  log "detectron2: building the official source from $NL_DETECTRON_D2_SOURCE"
  "${PIP[@]}" "setuptools<81" wheel ninja
  src="$NL_DETECTRON_D2_SOURCE"
  case "$src" in
    http*://* | git@* | ssh://*) src="git+$src" ;;
  esac
  "${PIP[@]}" --no-build-isolation "$src"
elif "$PY" -c "import detectron2" 2>/dev/null; then
  log "detectron2: keeping the importable $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
else
  log "detectron2: installing the PyPI repackage sal-detectron2==0.7.2 (pure Python, no _C)"
  wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels" "$probe"' EXIT
  "$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.10 --platform any -d "$wheels" "sal-detectron2==0.7.2"
  got="$wheels/sal_detectron2-0.7.2-cp310-none-any.whl"
  echo "$SAL_WHEEL_SHA256  $got" | sha256sum -c --quiet - ||
    { log "sha256 mismatch for $got"; exit 1; }
  # The wheel holds only Python sources plus a CPython 3.10 _C that upstream imports lazily,
  # so it is valid for any Python 3; its tag just says otherwise.
  mv "$got" "$wheels/sal_detectron2-0.7.2-py3-none-any.whl"
  "${PIP[@]}" --no-deps "$wheels/sal_detectron2-0.7.2-py3-none-any.whl"
fi
# An official build brings its own dependencies; the repackage is installed without them, and its
# pins also constrain what nl_detectron's extras pull in (else e.g. onnx would lift numpy past the
# repackage's declared numpy<2).
constraints=()
if "$PY" -m pip show --disable-pip-version-check --quiet sal-detectron2 >/dev/null 2>&1; then
  log "detectron2 repackage: runtime dependencies"
  "${PIP[@]}" -r "$ROOT/scripts/requirements-detectron2.txt"
  constraints=(-c "$ROOT/scripts/requirements-detectron2.txt")
fi

log "nl_detectron (editable, with dev extras)"
"${PIP[@]}" ${constraints[@]+"${constraints[@]}"} -e "$ROOT[dev]"

"$PY" -c "import detectron2, nl_detectron; print('[ensure_env] ready: detectron2', detectron2.__version__, '| nl_detectron', nl_detectron.__version__)" >&2
echo "$WANT" >"$STAMP"
