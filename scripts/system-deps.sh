#!/usr/bin/env bash
# System (Debian) packages zk0 and its tests use besides Python, installed only when missing and
# only as root with apt-get (CI machines); idempotent: a second run installs nothing. Not root or
# no apt-get: says what is missing and leaves it to you; the tests that need a package skip
# outside CI and fail in CI (CI=true) without it.
#   nginx       the labs' only entry in front of the SuperLink (deploy/coordinator/proxy/); without it
#               `zk0 cluster` runs on loopback without the shielded entry
#   prometheus  (with promtool) the monitoring tests run the project's config, alert rules and
#               dashboards' queries against a real Prometheus; no service is started here
#   chromium    the summary-page and manual tests render pages in headless Chromium
# and, as root, a Docker Engine with Compose v2 and the local base image debian:trixie-slim
# (scripts/docker-engine-up.sh; idempotent) for the compose test (tests/test_e2e_compose.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have nginx || need+=(nginx)
{ have prometheus && have promtool; } || need+=(prometheus)
{ have chromium || have chromium-browser; } || need+=(chromium)
root=false
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && root=true
if [ ${#need[@]} -gt 0 ]; then
  if $root; then
    echo "[system-deps] installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "[system-deps] missing Debian packages: ${need[*]} (not root or no apt-get; install them)" >&2
  fi
fi
if $root; then
  "$here/docker-engine-up.sh"
elif ! docker compose version >/dev/null 2>&1; then
  echo "[system-deps] no Docker Compose v2 (the compose test skips; as root scripts/docker-engine-up.sh brings it up)" >&2
fi
