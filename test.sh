#!/usr/bin/env bash
# The test suite on a fresh machine: set up, lint, build the manual (strict: a broken link or a
# page missing from the navigation fails), then every test (unit, real-process e2e).
# Extra arguments go to pytest (e.g. -m "not e2e" for the fast part only).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/system-deps.sh   # nginx, prometheus, chromium (Debian packages, when root as in CI)
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --site-dir site
exec .venv/bin/python -m pytest -q "$@"
