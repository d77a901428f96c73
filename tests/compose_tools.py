"""Shared by the compose tests: the docker CLI, or a skip only where allowed.

In CI (``CI`` set) a missing docker CLI, Compose v2 or (for the end-to-end test) Docker Engine
FAILS the test: scripts/system-deps.sh brings them up as root (scripts/docker-engine-up.sh).
Elsewhere the tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
TEST_OVERRIDE = REPO / "tests" / "compose" / "docker-compose.test.yml"
# Every combination the repository documents or uses: the default, the GPU override, the
# test override (with and without the GPU one).
COMBINATIONS: dict[str, tuple[Path, ...]] = {
    "default": (BASE,),
    "gpu": (BASE, GPU),
    "test": (BASE, TEST_OVERRIDE),
    "gpu+test": (BASE, GPU, TEST_OVERRIDE),
}
# What compose reads from the caller's environment is only what the test passes.
_KEEP = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "XDG_RUNTIME_DIR")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: scripts/system-deps.sh must bring it up as root)")
    pytest.skip(f"{reason} (not CI)")


def require_compose() -> None:
    """The docker CLI with the Compose v2 plugin (enough for ``docker compose config``)."""
    if shutil.which("docker") is None:
        _missing("no docker CLI")
    out = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                         timeout=30, check=False)
    if out.returncode != 0:
        _missing(f"no Docker Compose v2: {out.stderr.strip()[:200]}")


def require_engine(base_image: str) -> None:
    """Compose, a Docker Engine that answers, and the local base image."""
    require_compose()
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        _missing(f"no Docker Engine answers: {info.stderr.strip()[:200]}")
    image = subprocess.run(["docker", "image", "inspect", base_image], capture_output=True,
                           text=True, timeout=60, check=False)
    if image.returncode != 0:
        _missing(f"base image {base_image} is missing (scripts/docker-engine-up.sh builds it)")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP}
    env["DOCKER_BUILDKIT"] = "0"  # classic builder: no buildx on these machines
    env.update(extra or {})
    return env


def write_env_file(path: Path, values: Mapping[str, object]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def compose_cmd(project: str, env_file: Path, files: Sequence[Path], *args: str) -> list[str]:
    cmd = ["docker", "compose", "-p", project, "--project-directory", str(REPO),
           "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    return [*cmd, *args]
