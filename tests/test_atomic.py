"""The one atomic writer (common.atomic): real crashes in a child process, real file modes.

A crash is made real with RLIMIT_FSIZE: the child may write only 4 KiB per file, so the kernel
stops it in the middle of writing a larger file (SIGXFSZ kills it, or, with the signal ignored,
``write`` fails with EFBIG). No function is replaced.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common import atomic

REPO = Path(__file__).resolve().parent.parent

_CHILD = """
import os, resource, signal, sys
from pathlib import Path
from common import atomic  # imported before the limit: writing .pyc files must not hit it

path, mode, on_limit = Path(sys.argv[1]), int(sys.argv[2], 8), sys.argv[3]
os.umask(0)  # a temp file created with the default 0666 would show here
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
# CPython ignores SIGXFSZ (write() then fails with EFBIG); its default action kills the process
signal.signal(signal.SIGXFSZ, signal.SIG_IGN if on_limit == "fail" else signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
atomic.write_bytes(path, b"n" * 100_000, mode)
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _write_in_child(path: Path, mode: int, on_limit: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), f"{mode:o}", on_limit],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_crash_mid_write_keeps_old_file_and_temp_is_never_looser(
    tmp_path: Path, mode: int
) -> None:
    target = tmp_path / "state.key"
    atomic.write_bytes(target, b"old", mode)
    proc = _write_in_child(target, mode, "die")
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr
    assert target.read_bytes() == b"old" and _mode(target) == mode
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1, leftovers  # the crash left its half-written temp file ...
    half = leftovers[0]
    assert half.name.startswith(".state.key.") and half.stat().st_size == 4096
    assert _mode(half) == mode  # ... born with the target's mode, never looser


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic.write_bytes(target, b"old")
    proc = _write_in_child(target, 0o644, "fail")
    assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr
    assert target.read_bytes() == b"old"
    assert sorted(tmp_path.iterdir()) == [target]


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        public = atomic.write_bytes(tmp_path / "a.crt", b"cert", 0o644)
    finally:
        os.umask(0)
    try:
        private = atomic.write_bytes(tmp_path / "a.key", b"key", 0o600)
        private.chmod(0o666)  # a loose existing file is replaced by a tight one
        atomic.write_bytes(private, b"key2", 0o600)
    finally:
        os.umask(old)
    assert _mode(public) == 0o644 and _mode(private) == 0o600
    assert private.read_bytes() == b"key2"


def test_symlink_at_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "secret"
    link.symlink_to(victim)
    atomic.write_bytes(link, b"new", 0o600)
    assert victim.read_bytes() == b"untouched"
    assert not link.is_symlink() and link.read_bytes() == b"new" and _mode(link) == 0o600


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "superexec.secret"
    atomic.write_bytes(target, b"first", 0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        atomic.write_bytes(target, b"second", 0o600, exclusive=True)
    assert target.read_bytes() == b"first" and _mode(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["superexec.secret"]


def test_write_json_and_symlink(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}\n'
    (tmp_path / "round-1").mkdir()
    (tmp_path / "round-2").mkdir()
    atomic.symlink("round-1", tmp_path / "last")
    atomic.symlink("round-2", tmp_path / "last")
    assert os.readlink(tmp_path / "last") == "round-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "r.json", "round-1", "round-2"]
