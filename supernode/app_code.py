"""Which zk0 code a process runs, and whether a run's app bundle (FAB) carries the same.

The site worker (:mod:`supernode.worker`) runs every ClientApp message of a run with the zk0 it
was started from, not with the code Flower shipped in the run's FAB: that is what lets it keep
torch, LeRobot, the policy and the dataset loaded. It may do so only when both are the same
code, so before each message it compares the FAB's ``common/`` and ``supernode/`` (the code a
site executes) with its own, file by file, and refuses a run whose bundle differs, naming both.

Standard library only (the fingerprint of a FAB is computed from its zip in memory).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

#: What a site executes for a message: the FAB's and the worker's must be identical.
CODE_PACKAGES = ("common", "supernode")
_VERSION = b"zk0-site-code-1"


def code_root() -> Path:
    """The folder holding this process's ``common/`` and ``supernode/``."""
    return Path(__file__).resolve().parent.parent


def _digest(files: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256(_VERSION)
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _is_site_code(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) > 1 and parts[0] in CODE_PACKAGES and name.endswith(".py")
            and "__pycache__" not in parts)


@cache
def code_fingerprint(root: Path | None = None) -> str:
    """SHA-256 over the ``.py`` files of ``common/`` and ``supernode/`` under ``root``
    (default: this process's own code), by relative path and content."""
    base = Path(root) if root is not None else code_root()
    files = []
    for package in CODE_PACKAGES:
        for path in (base / package).rglob("*.py"):
            name = path.relative_to(base).as_posix()
            if _is_site_code(name):
                files.append((name, path.read_bytes()))
    return _digest(files)


def fab_fingerprint(fab: bytes) -> str:
    """The same fingerprint over the files a FAB (Flower's app bundle, a zip) carries."""
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        return _digest((name, archive.read(name)) for name in archive.namelist()
                       if _is_site_code(name))


class AppCodeMismatch(RuntimeError):
    """The run's app bundle carries other site code than this worker runs."""


@dataclass
class CodeCheck:
    """Compares each run's FAB with this process's code (one verdict per FAB hash)."""

    mine: str = field(default_factory=code_fingerprint)
    _verdicts: dict[str, str | None] = field(default_factory=dict)

    def problem(self, fab_hash: str, fab: bytes) -> str | None:
        """Why this worker cannot run the FAB's ClientApp (None: it can)."""
        if fab_hash not in self._verdicts:
            try:
                theirs = fab_fingerprint(fab)
            except zipfile.BadZipFile as err:
                self._verdicts[fab_hash] = f"the run's app bundle is not a zip ({err})"
            else:
                self._verdicts[fab_hash] = None if theirs == self.mine else (
                    f"the run's app bundle (FAB {fab_hash[:12]}) carries zk0 site code "
                    f"{theirs[:12]}, this site worker runs {self.mine[:12]} (sha256 of "
                    f"common/ and supernode/ in {code_root()}). Run the zk0 version this "
                    "federation uses at this site (then restart `zk0 supernode`), or start "
                    "it with --no-worker to run the bundle's code in a process per message"
                )
        return self._verdicts[fab_hash]

    def check(self, fab_hash: str, fab: bytes) -> None:
        """Raise :class:`AppCodeMismatch` unless the FAB carries this worker's code."""
        problem = self.problem(fab_hash, fab)
        if problem is not None:
            raise AppCodeMismatch(problem)
