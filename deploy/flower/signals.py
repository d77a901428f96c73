"""SIGTERM and SIGHUP stop a ``zk0`` command the way Ctrl-C does: by unwinding, so that every
``with`` block that started processes stops them.

Docker, systemd, Kubernetes and CI runners stop a program with SIGTERM, whose default action
ends the Python process at once: no ``finally`` runs, and the children it started in their own
sessions (SuperLink, SuperExecs, SuperNodes, ``flwr run``) live on as orphans. Inside
:func:`stop_on_signals` each of these signals raises :class:`Stopped` in the main thread
instead; further signals are ignored while the cleanup runs (each process stop already ends
in SIGKILL after a timeout, so the cleanup is bounded).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):  # like KeyboardInterrupt: a request, not an error
    """A stop signal arrived; unwinding stops what was started."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` raise :class:`Stopped` (main thread only; elsewhere a
    no-op, since Python delivers signals to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in signals:  # one stop at a time: let the cleanup finish
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
