"""Leak checks for tests that start real processes: who is still running, and below whom.

These only look; nothing here signals a process (tests stop what they started, by PID).
"""

from __future__ import annotations

import psutil

from deploy.flower.processes import pid_alive


def procs_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text`` (to find leftovers; never used to kill)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if text in " ".join(proc.info["cmdline"] or []) and pid_alive(proc.pid):
            found.append(proc.pid)
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children of children included)."""
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()
