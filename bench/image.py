"""zk0's container image: size, cold build time, rebuild time after a code change.

A coordinator's first ``docker compose up`` and a lab's first site container both start with a
build (or a ``docker load``) of the one image every role runs, so its size and build time are
what those operators wait for. Cold = ``--no-cache`` (every layer, the pinned dependencies
included, from PyPI); rebuild = the same build again after a change to the code only (the
dependency layer comes from the engine's cache, as after a ``git pull``).

Needs a Docker Engine and the base image (``scripts/docker-engine-up.sh`` on a machine without
a registry builds ``debian:trixie-slim``); builds with the classic builder and host networking.
The tag it builds (``zk0-bench:image``) is removed afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench import BenchContext
from bench.results import Metric, Section

REPO = Path(__file__).resolve().parent.parent
TAG = "zk0-bench:image"
BASE_IMAGE = os.environ.get("ZK0_BASE_IMAGE", "debian:trixie-slim")
TOUCHED = "deploy/__init__.py"  # a code file: only the layers after the dependencies rebuild


def _build(*extra: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
         *extra, "-t", TAG, str(REPO)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SystemExit(f"docker build of {REPO / 'Dockerfile'} failed:\n{tail}")
    return time.monotonic() - started


def _inspect() -> dict:
    out = subprocess.run(["docker", "image", "inspect", TAG], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)[0]


def _rebuild_after_code_change() -> float:
    """Build once more with one code file changed (restored after), as after a ``git pull``."""
    path = REPO / TOUCHED
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# bench.image: a code change\n")
        return _build()
    finally:
        path.write_bytes(original)


def run(ctx: BenchContext) -> list[Section]:
    del ctx  # no policy needed
    section = Section("image", f"zk0 image (base {BASE_IMAGE}, classic builder)")
    built: list[str] = []  # image ids: the rebuild leaves the cold build's image untagged
    try:
        cold = _build("--no-cache")
        image = _inspect()
        built.append(image["Id"])
        size = int(image["Size"])
        rebuild = _rebuild_after_code_change()
        built.append(_inspect()["Id"])
    finally:
        for ref in [TAG, *reversed(built)]:
            subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True, check=False)
    section.add(
        Metric("image size", size, "bytes",
               note="the PyPI torch wheel is the CUDA build (NVIDIA libraries)"),
        Metric("cold build (--no-cache)", cold, "s", note="dependencies from PyPI + code"),
        Metric("rebuild after a code change", rebuild, "s", ratio=rebuild / cold,
               reference="cold build"),
    )
    section.details = {"base_image": BASE_IMAGE, "touched": TOUCHED}
    return [section]
