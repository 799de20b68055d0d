#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs what nl_detectron needs (first use only).
#
# Choices, in order, for detectron2:
#   1. NL_DETECTRON_D2_SOURCE=<checkout path or git URL>: build the official source into the venv.
#   2. an importable detectron2 in the venv (an official build stays untouched).
#   3. the PyPI repackage `sal-detectron2==0.7.2` (detectron2 main, pure Python, no _C), installed
#      by its wheel with the runtime dependencies pinned below.
# A second run with the same inputs returns in about a second (stamp file in .venv/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NL_DETECTRON_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.nl_detectron_env"
SAL_WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

log() { echo "[ensure_env] $*" >&2; }

inputs_hash() {
  cat "$ROOT/setup.py" "$ROOT/scripts/ensure_env.sh" "$ROOT/scripts/requirements-detectron2.txt" |
    sha256sum | cut -d' ' -f1
}
WANT="$(inputs_hash)|${NL_DETECTRON_D2_SOURCE:-}"

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

if [ ! -x "$PY" ]; then
  log "creating virtual environment at $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check)

log "installing torch 2.14.1 + torchvision 0.29.1 (pinned together; see README)"
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"

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
  trap 'rm -rf "$wheels"' EXIT
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
log "detectron2 runtime dependencies"
"${PIP[@]}" -r "$ROOT/scripts/requirements-detectron2.txt"

log "nl_detectron (editable, with dev extras)"
"${PIP[@]}" -e "$ROOT[dev]"

"$PY" -c "import detectron2, nl_detectron; print('[ensure_env] ready: detectron2', detectron2.__version__, '| nl_detectron', nl_detectron.__version__)" >&2
echo "$WANT" >"$STAMP"
