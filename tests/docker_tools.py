"""The Docker tests' shared parts: is there a docker CLI / Compose v2 / Engine, the zk0 image
(built once per session), compose command lines, cleanup.

Where something is missing: in CI (``CI`` set) the test FAILS, since scripts/system-deps.sh
brings the engine up as root (scripts/docker-engine-up.sh: Debian's docker.io, Compose v2, a
locally built ``debian:trixie-slim``; no registry is reachable); elsewhere it skips, saying why.

The image: ``ZK0_TEST_IMAGE`` names an existing one to use as is (e.g. ``zk0:dev`` built by
hand; never removed); otherwise the session builds the repo's top-level ``Dockerfile`` once as
``zk0-test:<pid>`` from ``debian:trixie-slim`` (classic builder, host network, as the CI notes
require) and removes it at the end. Every test that runs zk0 in a container (the compose stack,
the site container) takes it from the ``zk0_image`` fixture, so CI builds the ~6 GB image once.
The docker layer cache keeps the dependency layer between sessions, so a rebuild after a code
change only redoes the code layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("ZK0_TEST_BASE_IMAGE", "debian:trixie-slim")
BUILD_TIMEOUT_S = 3600.0
# What docker and compose read from the caller's environment is only what the test passes (a
# ZK0_* variable in the shell would otherwise override the test's env file).
_KEEP = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH",
         "DOCKER_TLS_VERIFY", "XDG_RUNTIME_DIR")


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere: the one rule for every missing piece of Docker."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: scripts/system-deps.sh brings it up as root)")
    pytest.skip(f"{reason} (not CI)")


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), check=False)


def require_compose() -> None:
    """The docker CLI with the Compose v2 plugin (enough for ``docker compose config``)."""
    if shutil.which("docker") is None:
        missing("no docker CLI on PATH")
    out = _docker("compose", "version", timeout=30)
    if out.returncode != 0:
        missing(f"no Docker Compose v2: {out.stderr.strip()[:200]}")


def require_engine() -> None:
    """The docker CLI and a Docker Engine that answers."""
    if shutil.which("docker") is None:
        missing("no docker CLI on PATH")
    out = _docker("info", "--format", "{{.ServerVersion}}")
    if out.returncode != 0:
        missing(f"no Docker Engine answers: {out.stderr.strip()[:200]}")


def require_image(tag: str) -> None:
    """An image on the engine (no registry is reachable: the base image is built locally)."""
    if not image_exists(tag):
        missing(f"image {tag} is missing (scripts/docker-engine-up.sh builds {BASE_IMAGE})")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    env["DOCKER_BUILDKIT"] = "0"  # classic builder: no buildx on these machines
    env.update(extra or {})
    return env


def write_env_file(path: Path, values: Mapping[str, object]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def compose_cmd(project: str, env_file: Path, files: Sequence[Path], *args: str) -> list[str]:
    """``docker compose`` on ``files`` (relative paths in them resolve against the first file's
    folder, as compose does by default), reading only ``env_file``."""
    cmd = ["docker", "compose", "-p", project, "--project-directory", str(files[0].parent),
           "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    return [*cmd, *args]


def image_exists(tag: str) -> bool:
    return _docker("image", "inspect", tag).returncode == 0


def remove_image(tag: str) -> None:
    _docker("image", "rm", tag, timeout=300)


def build_image(tag: str, context: Path = REPO, base_image: str = BASE_IMAGE) -> float:
    """``docker build`` the top-level Dockerfile as ``tag``; seconds taken. Fails the test with
    the build's last lines if it fails."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        pytest.fail(f"{dockerfile}: no Dockerfile at the repo's top (the zk0 image)")
    require_image(base_image)
    t0 = time.monotonic()
    done = subprocess.run(
        ["nice", "-n", "10", "docker", "build", "--network", "host",
         "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag, str(context)],
        env=clean_env(), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )
    took = time.monotonic() - t0
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        pytest.fail(f"docker build of {dockerfile} failed (exit {done.returncode}):\n{tail}")
    print(f"built {tag} from {dockerfile} in {took:.0f} s", file=sys.stderr)
    return took


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
