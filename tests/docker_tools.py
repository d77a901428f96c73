"""A real Docker Engine for tests: is there one, the zk0 image (built once per session), cleanup.

CI brings the engine up first (``../shared/ci/docker-engine-up.sh``: Debian's docker.io,
Compose v2, a locally built ``debian:trixie-slim``; no registry is reachable). There, a missing
engine fails the Docker tests; elsewhere they skip.

The image: ``ZK0_TEST_IMAGE`` names an existing one to use as is (e.g. ``zk0:dev`` built by
hand; never removed); otherwise the session builds the repo's top-level ``Dockerfile`` once as
``zk0-test:<pid>`` from ``debian:trixie-slim`` (classic builder, host network, as the CI notes
require) and removes it at the end. The docker layer cache keeps the dependency layer between
sessions, so a rebuild after a code change only redoes the code layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("ZK0_TEST_BASE_IMAGE", "debian:trixie-slim")
BUILD_TIMEOUT_S = 3600.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def engine_problem() -> str | None:
    """None if a Docker engine answers here, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        import docker
        from docker.errors import DockerException

        try:
            docker.from_env().ping()
        except DockerException as err:
            return f"Docker engine unreachable: {err}"
    except ImportError as err:
        return f"docker package missing: {err}"
    return None


def require_engine() -> None:
    """Skip without an engine, except in CI (CI=true), where that is a failure."""
    problem = engine_problem()
    if problem is None:
        return
    if _in_ci():
        pytest.fail(f"{problem}; CI runs ../shared/ci/docker-engine-up.sh first")
    pytest.skip(problem)


def require_compose() -> None:
    """Compose v2 (``docker compose``), with the same skip/fail rule as the engine."""
    require_engine()
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        message = f"docker compose v2 missing: {done.stderr.strip()}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                          check=False).returncode == 0


def build_image(tag: str, context: Path = REPO, base_image: str = BASE_IMAGE) -> float:
    """``docker build`` the top-level Dockerfile as ``tag``; seconds taken. Fails the test with
    the build's last lines if it fails."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        pytest.fail(f"{dockerfile}: no Dockerfile at the repo's top (the zk0 image)")
    if not image_exists(base_image):
        pytest.fail(f"base image {base_image} missing; CI's docker-engine-up.sh builds it")
    t0 = time.monotonic()
    done = subprocess.run(
        ["nice", "-n", "10", "docker", "build", "--network", "host",
         "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True,
        timeout=BUILD_TIMEOUT_S, check=False,
    )
    took = time.monotonic() - t0
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        pytest.fail(f"docker build of {dockerfile} failed (exit {done.returncode}):\n{tail}")
    print(f"built {tag} from {dockerfile} in {took:.0f} s", file=sys.stderr)
    return took


def remove_image(tag: str) -> None:
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)


def zk0_image_session() -> Iterator[str]:
    """Body of the session fixture ``zk0_image`` (tests/conftest.py): the image's tag."""
    require_engine()
    given = os.environ.get("ZK0_TEST_IMAGE", "").strip()
    if given:
        if not image_exists(given):
            pytest.fail(f"ZK0_TEST_IMAGE={given}: no such image on this engine")
        yield given
        return
    tag = f"zk0-test:{os.getpid()}"
    build_image(tag)
    try:
        yield tag
    finally:
        remove_image(tag)


def remove_labelled(label: str) -> list[str]:
    """Force-remove every container carrying ``label`` (``key=value``); their names."""
    import docker

    client = docker.from_env()
    names = []
    for container in client.containers.list(all=True, filters={"label": label}):
        names.append(container.name)
        container.remove(force=True)
    return names
