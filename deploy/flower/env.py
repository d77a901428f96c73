"""Where Flower's executables are and the environment every Flower child process gets."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path


def bin_dir() -> Path:
    """Scripts folder of the running interpreter (the venv's ``bin``), not resolved.

    Flower's SuperExec starts ``flwr-serverapp`` / ``flwr-clientapp`` by bare name, so this
    folder must also be on the children's PATH even when the venv is not activated.
    """
    return Path(sys.executable).parent


def flower_exe(name: str) -> str:
    """Absolute path of a Flower console script (``flower-superlink``, ``flwr``, ...)."""
    candidate = bin_dir() / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def child_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower child process.

    Inherits ours (so ``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_LEROBOT_HOME`` and CUDA settings
    reach the ClientApps), turns off telemetry and the update check (no network besides the
    federation's), puts this venv's scripts first on PATH and sets ``FLWR_HOME`` (connection
    config, installed FABs) so nothing lands in the operator's ``~/.flwr``.
    """
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


# flower-superexec's wait between AcquireTask polls (flwr 1.42: 0.01-60 s, default 1.0). A
# site's SuperExec starts each ClientApp within this after the SuperNode stored the message;
# each poll is one HTTPS request to the SuperNode (~1 % of a core at 0.25 s, measured idle).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SITE_SUPEREXEC_POLL_SECONDS = 0.25


def superexec_env(
    flwr_home: Path, poll_seconds: float | None = SITE_SUPEREXEC_POLL_SECONDS
) -> dict[str, str]:
    """:func:`child_env` for a ``flower-superexec``, with its task poll interval set (None:
    Flower's default)."""
    if poll_seconds is None:
        return child_env(flwr_home)
    if not 0.01 <= poll_seconds <= 60.0:
        raise ValueError(f"superexec poll interval {poll_seconds} s: Flower accepts 0.01-60")
    return child_env(flwr_home, {SUPEREXEC_POLL_ENV: f"{poll_seconds:g}"})
