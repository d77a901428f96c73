#!/usr/bin/env bash
# System packages zk0 needs besides Python: nginx, the labs' only entry in front of the SuperLink
# (deploy/proxy/). Idempotent. Installs from Debian's packages when run as root with apt-get
# (CI does); otherwise only says what is missing: `zk0 cluster` then runs on loopback without
# the shielded entry, and the proxy tests skip outside CI (in CI they fail instead).
set -euo pipefail

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

if have_nginx; then
  echo "[system-deps] $("$(nginx_bin)" -v 2>&1)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[system-deps] nginx not found; install it (Debian/Ubuntu: sudo apt-get install" \
       "nginx-light) to run the labs' entry proxy" >&2
  exit 0
fi
echo "[system-deps] installing nginx from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# bookworm ships the small nginx-light flavour; later releases only `nginx`
apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 ||
  apt-get install -y -qq --no-install-recommends nginx >/dev/null
echo "[system-deps] $("$(nginx_bin)" -v 2>&1)"
