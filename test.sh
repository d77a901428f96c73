#!/usr/bin/env bash
# The test suite on a fresh machine: set up, lint, then every test (unit, real-process e2e).
# Extra arguments go to pytest (e.g. -m "not e2e" for the fast part only).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/system-deps.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
