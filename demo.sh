#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run a 4-site federation on a local TLS cluster
# (SuperLink on loopback behind nginx, the labs' only entry, + 4 authenticated SuperNodes on
# 127.0.0.1; without nginx the sites dial the SuperLink and it says so) with the offline tiny
# SmolVLA preset on generated demo data, ending with a per-site held-out action MSE report.
# Extra arguments go to `zk0 cluster` (e.g. -c num-server-rounds=10).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/system-deps.sh   # nginx as the labs' entry; without it the demo runs unshielded
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/zk0 cluster "$@"
