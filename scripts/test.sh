#!/usr/bin/env bash
# Runs the quality gates and the whole test suite (slow end-to-end tests included).
# Creates .venv/ on first use (or uses NL_DETECTRON_VENV, see ensure_env.sh). Extra arguments go to
# pytest, e.g. `-m "not slow"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/ensure_env.sh
PY="${NL_DETECTRON_VENV:-.venv}/bin/python"
echo "[test] ruff check + format check" >&2
"$PY" -m ruff check .
"$PY" -m ruff format --check .
echo "[test] pytest" >&2
"$PY" -m pytest "$@"
