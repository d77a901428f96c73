#!/usr/bin/env bash
# System (Debian) packages the tests use, installed only when missing and only as root
# (idempotent: a second run installs nothing). Not root or no apt-get: says what is missing and
# leaves it to you; the tests that need a package skip outside CI and fail in CI without it.
#   prometheus (with promtool): the monitoring tests run the project's config, alert rules and
#   dashboards' queries against a real Prometheus (Debian bookworm: 2.42).
# Installing does not start a service here (no systemd); the tests start their own Prometheus.
set -euo pipefail

need=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  need+=(prometheus)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[system-deps] missing Debian packages: ${need[*]} (not root or no apt-get; install them)" >&2
  exit 0
fi
echo "[system-deps] installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
