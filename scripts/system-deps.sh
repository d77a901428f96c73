#!/usr/bin/env bash
# System (Debian) packages zk0 and its tests use besides Python, installed only when missing and
# only as root with apt-get (CI machines); idempotent: a second run installs nothing. Not root or
# no apt-get: says what is missing and leaves it to you; the tests that need a package skip
# outside CI and fail in CI (CI=true) without it.
#   nginx       the labs' only entry in front of the SuperLink (deploy/proxy/); without it
#               `zk0 cluster` runs on loopback without the shielded entry
#   prometheus  (with promtool) the monitoring tests run the project's config, alert rules and
#               dashboards' queries against a real Prometheus; no service is started here
#   chromium    the summary-page test renders run summaries in headless Chromium
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have nginx || need+=(nginx)
{ have prometheus && have promtool; } || need+=(prometheus)
{ have chromium || have chromium-browser; } || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[system-deps] missing Debian packages: ${need[*]} (not root or no apt-get; install them)" >&2
  exit 0
fi
echo "[system-deps] installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
