#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 and installs zk0 with its pinned dependencies (idempotent).
# Honours PYTHON=/path/to/python3.12. Needs only PyPI (torch, lerobot, flwr come from there).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local c
  for c in ${PYTHON:-} python3.12 python3 python3.13; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      command -v "$c"; return 0
    fi
  done
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3 \
           "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  echo "setup: no Python >= 3.12 found (lerobot 0.6.1 needs it); set PYTHON=/path/to/python3.12" >&2
  return 1
}

stamp=.venv/.zk0-installed
if [ ! -x .venv/bin/python ]; then
  py=$(find_python)
  echo "[setup] creating .venv with $py ($("$py" --version))"
  "$py" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing zk0 and its pinned dependencies (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,docs]"
  .venv/bin/python -m pip check
  touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python --version), $(.venv/bin/flwr --version 2>/dev/null | head -1)"
