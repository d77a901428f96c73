"""Atomic file and folder writes: a crash mid-write never leaves a half file that looks whole.

The one writer for the whole project (run reports, checkpoints, certificates, keys, secrets,
Flower's connection config), so every file gets the same guarantees:

* readers see the old file or the complete new one, never a torn write (temp file in the same
  folder, fsync, ``os.replace``; the folder is fsynced too so the rename survives a power cut);
* the temp file is born with the target's mode (``O_CREAT|O_EXCL`` with ``mode``, then
  ``fchmod`` against the umask): a private key is never readable by others, not even for the
  moment between create and chmod, and not in a temp file a crash leaves behind;
* ``O_NOFOLLOW`` and a random temp name: a link planted at the temp path is not followed, and a
  symlink at ``path`` itself is replaced, not written through.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder``; best effort (some filesystems refuse a dir fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: Path, data: bytes, mode: int = 0o644, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically with file mode ``mode``; returns ``path``.

    ``exclusive=True`` never replaces an existing file: the complete file is linked into place
    and :class:`FileExistsError` is raised if ``path`` already exists (create-if-missing without
    a window where another process sees an empty or partial file). Missing parent folders are
    created with the default mode; callers that need a private folder create it first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    fd = os.open(tmp, _TMP_FLAGS, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits from ``mode``
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` populate a temporary sibling folder, then swap it in as ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (made 0600 if missing) for a
    read-check-write that other processes on the same files must not interleave with."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` (relative), replacing any old link atomically."""
    tmp = _tmp_sibling(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
