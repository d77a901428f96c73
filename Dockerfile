# One image for every zk0 role: SuperLink, ServerApp SuperExec, a site (`zk0 supernode` =
# SuperNode + SuperExec + site worker), the `zk0`/`flwr` CLIs and the one-shot init jobs.
# docker-compose.yml picks the role per service with `command:`.
#
#   DOCKER_BUILDKIT=0 docker build --network host -t zk0:dev .
#   DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=debian:trixie-slim -t zk0:dev .
#
# Classic builder only (no `# syntax=` line, no RUN --mount): the CI machines have no buildx.
# BASE_IMAGE: the official Python image by default; a plain Debian image (no python3) works too:
# then Debian's python3 + python3-venv are installed (the CI machines build debian:trixie-slim
# locally and reach no registry).
# The PyPI torch wheel is the CUDA build (the NVIDIA libraries come as wheels, ~6 GB venv):
# what a lab's GPU box needs; on a box without a GPU the same image runs on CPU.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# No network besides the federation's: Flower's telemetry and update check off.
# Flower's runtime dependency installation off: every dependency is in this image. In flwr 1.42
# the SuperLink would otherwise `uv sync` a fresh venv per run from a package index
# (flwr/superlink/cli/flower_superlink.py: _runtime_dependency_install_default() reads
# FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION; zk0 also passes
# --disable-runtime-dependency-installation). SuperNodes and SuperExecs install nothing unless
# given --allow-runtime-dependency-installation, which zk0 never passes (flwr/common/args.py:
# RUNTIME_DEPENDENCY_INSTALL = False).
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/zk0/venv \
    PATH=/opt/zk0/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/app \
    FLWR_HOME=/app/.flwr \
    HF_HOME=/app/.cache/huggingface \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

# Debian's Python when the base image has none (debian:trixie-slim); the official Python images
# already have python3 and its venv module. Nothing else is needed: the wheels carry their
# libraries (torch, PyAV's FFmpeg, OpenCV headless).
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 12), sys.version'

# Non-root, as Flower's images: user `app`, uid/gid 49999, HOME and WORKDIR /app. The folders
# the compose file mounts named volumes on exist here, owned by the user, so a new volume starts
# with that owner and mode (Docker copies them into an empty named volume).
RUN set -eux; \
    groupadd --system --gid 49999 app; \
    useradd --system --uid 49999 --gid 49999 --home-dir /app --shell /usr/sbin/nologin app; \
    mkdir -p /app/.flwr /app/.cache /app/certs /app/data /app/state /app/runs /app/site \
             /app/metrics /app/proxy /app/keys; \
    chown -R 49999:49999 /app; \
    chmod 0700 /app/certs /app/state /app/site /app/proxy /app/keys

# Pinned dependencies first, in their own cached layer: a code change does not reinstall them.
# pip's compiled .pyc files stay (~10% of the size): without them every process of every
# container would compile torch, transformers and LeRobot again at import (seconds of CPU each;
# PYTHONDONTWRITEBYTECODE only stops writing new ones at run time).
# deploy/containers/docker/requirements.txt is generated from the tested venv
# (scripts/image-requirements.py).
COPY deploy/containers/docker/requirements.txt /opt/zk0/requirements.txt
RUN set -eux; \
    python3 -m venv "$VIRTUAL_ENV"; \
    pip install -r /opt/zk0/requirements.txt; \
    pip check

# The code last. Installed editable: `flwr run` builds the app bundle from /opt/zk0/app (its
# pyproject.toml), the same folder the zk0 command imports from.
COPY . /opt/zk0/app
RUN set -eux; \
    pip install --no-deps --no-build-isolation -e /opt/zk0/app; \
    python3 -m compileall -q /opt/zk0/app; \
    zk0 --help >/dev/null; \
    flower-superlink --help >/dev/null

USER 49999:49999
WORKDIR /app

# Each role's readiness is Flower's /health (SuperLink port, a SuperNode's runtime port) or a
# zk0 /metrics endpoint, named by ZK0_HEALTH_URL in the service's environment; a role without
# one (a one-shot job, the CLI) is healthy while it runs (deploy/containers/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=10s --start-period=300s --retries=4 \
    CMD ["python", "-m", "deploy.containers.healthcheck"]

CMD ["zk0", "--help"]
