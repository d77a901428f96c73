#!/usr/bin/env bash
# The test suite on a fresh machine: set up, lint, then every test (unit, real-process e2e).
# Extra arguments go to pytest (e.g. -m "not e2e" for the fast part only).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
# The summary-page test renders the page in headless Chromium (Debian's package); it fails in CI
# (CI=true) without it, so install it when we may (root, apt), as on CI machines.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[test] installing chromium (Debian package) for the summary-page test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
