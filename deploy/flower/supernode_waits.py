"""zk0's SuperNode: Flower 1.42's ``flower-supernode`` with the fixed waits of its message path
made short or event-driven. The one place where zk0 changes a Flower internal.

    python -m deploy.flower.supernode_waits [--pull-min-seconds S] [--pull-max-seconds S]
        [--acquire-hold-seconds S] [--object-retry-seconds S] <every flower-supernode argument>

Flower's SuperNode loses seconds per message in fixed waits that no flag or variable sets
(``flwr/supernode/start_client_internal.py``, ``flwr/supernode/servicer/runtime``):

1. After a pull from the SuperLink that found no message it sleeps 3 s (``time.sleep(3)``): a
   message waits 1.5 s on average, up to 3 s, before the site sees it.
2. While its ClientApp works it looks for the reply every 0.5 s, and for each of the reply's
   objects every 0.5 s, before uploading.
3. Its runtime API answers ``AcquireTask`` at once, so whoever executes tasks must poll it
   (``flower-superexec``: every 1 s by default).
4. The SuperLink hands a message out as soon as its sender pushed the message itself, before
   its objects (records, arrays, 5 MiB array chunks): an object not there yet is asked for again
   after 1 s, then 2, 4, ... (``pull_objects``' default backoff). A site that pulls promptly
   meets the ServerApp still uploading, and waited 1 + 2 + 4 s for a 400 KB message.

Here, and nowhere else:

1. :func:`_pull_until_message` repeats the pull itself until a message comes, waiting
   ``pull-min`` seconds after the first empty pull and 1.25x longer after each further one, up
   to ``pull-max`` (Flower's 3 s by default); every message starts the waits over. A round's
   next message is seen within a fraction of a second of its sending; an idle site polls as
   rarely as before. Flower's own ``time.sleep(3)`` is never reached.
2. :class:`_EventSleep` replaces the ``time`` module inside ``start_client_internal``: its
   ``sleep(s)`` waits at most ``s`` seconds for the ClientApp's next ``PushMessages`` /
   ``PushObject`` / ``PushTaskOutput`` (:func:`_wakes_reply_waits`), so the reply is uploaded as
   soon as it is pushed; Flower's checks, including its detection of a ClientApp that stopped
   responding, run as before.
3. :func:`_holding_acquire` holds an ``AcquireTask`` that finds no task for up to
   ``acquire-hold`` seconds, answering as soon as the SuperNode stores a message: the site
   worker (:mod:`supernode.worker`) gets each message without polling. A plain
   ``flower-superexec`` works unchanged (it just waits in the call instead of in its sleep).
4. The SuperNode's ``pull_objects`` asks again for a missing object after ``object-retry``
   seconds, doubling up to 1 s (Flower's limits on tries and total time stay).

It also logs, per message, the times (Unix seconds) the pull that brought it started and the
message was stored, and when its reply's upload started and ended: ``zk0 message stored {...}``
and ``zk0 reply sent {...}`` (JSON), which ``bench/overhead.py`` reads.

Pinned to the installed Flower: :data:`PINNED` holds the SHA-256 of the source of every function
these changes rely on. ``tests/test_supernode_waits.py`` fails when any differs (Flower changed
underneath: re-read the functions, then update the digests); at start a mismatch leaves Flower
untouched and says so (the site then works, with Flower's waits).

The upstream changes that would make this module unnecessary (flwrlabs/flower): a setting for
the SuperNode's pull interval, or a long-polling Fleet ``PullMessages``; a condition variable
instead of ``time.sleep(0.5)`` in ``_push_messages``; a long-polling ``AcquireTask`` on the
runtime API (the SuperExec sleeps between polls too); and a TaskExecutor plugin point in
``flower-superexec`` so that a warm, in-process executor such as zk0's site worker could be
plugged in rather than speaking the protocol itself (issue #3670, non-ephemeral ClientApps).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

FLOWER_VERSION = "1.42.0"
_LOOP = "flwr.supernode.start_client_internal"
_HANDLERS = "flwr.supernode.servicer.runtime.runtime_handlers"
#: SHA-256 of the source of each function whose behaviour the changes here depend on.
PINNED: dict[str, str] = {
    f"{_LOOP}:start_client_internal":
        "9e89a6eb68fbec6821e817cd2c09f7894fc7b0f5725c2365b19a7122307f11f3",
    f"{_LOOP}:_pull_and_store_message":
        "eaf5d0e36dc34e4cf46a490511d077ac55cc8edbbcdbe938c1f6dbcb758628be",
    f"{_LOOP}:_push_messages":
        "00bb86faffdec114db87e7f716af2acd901d12284e44f51f5c2a84704db05f64",
    f"{_HANDLERS}:acquire_task":
        "d11e03ec4b0b06a4775d46a180c0aca16aee4ddd02a6f7c17806c03e032ee171",
    f"{_HANDLERS}:push_messages":
        "f0b01d8d3c43d44a09f516e4192e6ab2aa16a211292ae0d5750b8ddeb87a1678",
    f"{_HANDLERS}:push_task_output":
        "1d148b25ce523291effd343fb4016288ac42e3a673d811cbde5c7032feb5075d",
    "flwr.supercore.servicer.runtime.runtime_handlers:acquire_task":
        "e3701406b5547001d679f65d5aeb1ebdaf1e53a680fca9e39455d55ea3b0e003",
    "flwr.supercore.inflatable.inflatable_utils:pull_objects":
        "31bb2de46b450e6acfadb7a8bb15e3f2074bb112199826a40a5eaa648bad5b2b",
    "flwr.supercore.routers.runtime.router:acquire_task":
        "dd75481efa7c4a7ca358ac3fb6f6ff82b741ca90eef054a63ca0b9bc4c09f372",
}
_WAKERS = ("push_messages", "push_object", "push_task_output")


@dataclass(frozen=True)
class Waits:
    """How long the SuperNode waits between empty pulls, and how long it holds AcquireTask."""

    pull_min: float = 0.05
    pull_max: float = 3.0
    acquire_hold: float = 20.0
    object_retry: float = 0.05
    factor: float = 1.25

    def __post_init__(self) -> None:
        if not 0 < self.pull_min <= self.pull_max <= 60:
            raise ValueError(f"pull waits: need 0 < min ({self.pull_min}) <= max "
                             f"({self.pull_max}) <= 60 seconds")
        if not 0 <= self.acquire_hold <= 300:
            raise ValueError(f"acquire hold {self.acquire_hold} s: expected 0-300")
        if not 0 < self.object_retry <= 1:
            raise ValueError(f"object retry {self.object_retry} s: expected 0 < s <= 1")


def source_digest(target: str) -> str:
    """SHA-256 of the source of ``module:function``."""
    module, name = target.split(":")
    return hashlib.sha256(inspect.getsource(getattr(import_module(module), name)).encode()
                          ).hexdigest()


def drift() -> list[str]:
    """What differs from the Flower these changes were written against (empty: nothing)."""
    import flwr

    problems = []
    if flwr.__version__ != FLOWER_VERSION:
        problems.append(f"flwr {flwr.__version__} installed, written for {FLOWER_VERSION}")
    for target, digest in PINNED.items():
        try:
            now = source_digest(target)
        except (ImportError, AttributeError, OSError, TypeError) as err:
            problems.append(f"{target}: {type(err).__name__}: {err}")
            continue
        if now != digest:
            problems.append(f"{target}: source changed (sha256 {now[:12]}, pinned "
                            f"{digest[:12]})")
    return problems


@dataclass
class _Signals:
    """What the SuperNode's threads tell each other: a task was created; the ClientApp pushed."""

    created: threading.Condition = field(default_factory=threading.Condition)
    generation: int = 0
    progress: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False

    def task_created(self) -> None:
        with self.created:
            self.generation += 1
            self.created.notify_all()

    def stop(self) -> None:
        with self.created:
            self.stopping = True
            self.created.notify_all()
        self.progress.set()


class _EventSleep:
    """Stands in for the ``time`` module inside ``start_client_internal``: ``sleep(s)`` returns
    at the ClientApp's next push, or after ``s`` seconds."""

    def __init__(self, signals: _Signals) -> None:
        self._signals = signals

    def sleep(self, seconds: float) -> None:
        self._signals.progress.wait(seconds)
        self._signals.progress.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _log(event: str, values: dict[str, Any]) -> None:
    from logging import INFO

    from flwr.supercore import log

    log(INFO, "zk0 %s %s", event, json.dumps(values, sort_keys=True))


def _pull_until_message(original: Callable[..., int | None], waits: Waits, signals: _Signals,
                        sleep: Callable[[float], None] = time.sleep) -> Callable[..., int | None]:
    def pull(**kwargs: Any) -> int | None:
        receive = kwargs["receive"]
        seen: dict[str, Any] = {}

        def timed_receive() -> Any:
            seen["pull_started"] = time.time()
            got = receive()
            if got is not None:
                seen["message_id"] = got[0].metadata.message_id
                seen["message_type"] = got[0].metadata.message_type
                seen["received"] = time.time()
            return got

        delay = waits.pull_min
        while True:
            seen.clear()
            run_id = original(**{**kwargs, "receive": timed_receive})
            if run_id is not None:
                _log("message stored", {**seen, "run_id": run_id, "stored": time.time()})
                signals.task_created()
                return run_id
            if "message_id" in seen:  # one came but could not be kept: the next may be there
                delay = waits.pull_min
            sleep(delay)
            delay = min(delay * waits.factor, waits.pull_max)

    return pull


def _timed_push(original: Callable[..., None]) -> Callable[..., None]:
    def push(**kwargs: Any) -> None:
        send = kwargs["send"]
        sent: list[dict[str, Any]] = []

        def timed_send(message: Any, *args: Any) -> Any:
            sent.append({"reply_to": message.metadata.reply_to_message_id,
                         "message_type": message.metadata.message_type,
                         "error": message.has_error(), "send_started": time.time()})
            return send(message, *args)

        original(**{**kwargs, "send": timed_send})
        for entry in sent:
            _log("reply sent", {**entry, "sent": time.time()})

    return push


def _holding_acquire(original: Callable[..., Any], waits: Waits,
                     signals: _Signals) -> Callable[..., Any]:
    def acquire_task(request: Any, state: Any) -> Any:
        deadline = time.monotonic() + waits.acquire_hold
        while True:
            with signals.created:
                generation = signals.generation
            res = original(request, state)
            left = deadline - time.monotonic()
            if res.HasField("task") or signals.stopping or left <= 0:
                return res
            with signals.created:
                signals.created.wait_for(
                    lambda seen=generation: signals.generation != seen or signals.stopping,
                    timeout=left)

    return acquire_task


def _wakes_reply_waits(original: Callable[..., Any], signals: _Signals) -> Callable[..., Any]:
    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            signals.progress.set()

    return handler


@dataclass
class Installed:
    """The changes in force in this process; :meth:`undo` restores Flower's own functions."""

    signals: _Signals
    saved: list[tuple[Any, str, Any]]

    def undo(self) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()


def install(waits: Waits) -> Installed | None:
    """Apply the changes to this process's Flower (before the SuperNode starts). None, with a
    warning on stderr, when the installed Flower is not the one they were written for."""
    problems = drift()
    if problems:
        print("zk0: Flower's SuperNode runs with its own fixed waits (3 s between empty pulls, "
              "0.5 s reply checks): the installed Flower differs from the one zk0's changes "
              "were written for:\n  " + "\n  ".join(problems), file=sys.stderr, flush=True)
        return None
    loop, handlers = import_module(_LOOP), import_module(_HANDLERS)
    signals = _Signals()
    done = Installed(signals, [])

    def replace(owner: Any, name: str, value: Any) -> None:
        done.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    replace(loop, "_pull_and_store_message",
            _pull_until_message(loop._pull_and_store_message, waits, signals))
    replace(loop, "_push_messages", _timed_push(loop._push_messages))
    replace(loop, "time", _EventSleep(signals))
    replace(loop, "pull_objects", functools.partial(
        loop.pull_objects, initial_backoff=waits.object_retry,
        backoff_cap=max(1.0, waits.object_retry)))
    replace(handlers, "acquire_task", _holding_acquire(handlers.acquire_task, waits, signals))
    for name in _WAKERS:
        replace(handlers, name, _wakes_reply_waits(getattr(handlers, name), signals))
    return done


def parse_args(argv: list[str]) -> tuple[Waits, list[str]]:
    """zk0's own flags, and everything else for ``flower-supernode``."""
    p = argparse.ArgumentParser(add_help=False)
    defaults = Waits()
    p.add_argument("--pull-min-seconds", type=float, default=defaults.pull_min)
    p.add_argument("--pull-max-seconds", type=float, default=defaults.pull_max)
    p.add_argument("--acquire-hold-seconds", type=float, default=defaults.acquire_hold)
    p.add_argument("--object-retry-seconds", type=float, default=defaults.object_retry)
    ours, rest = p.parse_known_args(argv)
    waits = Waits(ours.pull_min_seconds, ours.pull_max_seconds, ours.acquire_hold_seconds,
                  ours.object_retry_seconds)
    return waits, rest


def main(argv: list[str] | None = None) -> None:
    try:
        waits, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
    except ValueError as err:
        print(f"zk0 supernode: {err}", file=sys.stderr)
        sys.exit(2)
    installed = install(waits)
    if installed is not None:
        from flwr.supercore.exit import add_exit_handler

        # wake held AcquireTask calls before Flower stops its runtime API server, which waits
        # for open requests
        add_exit_handler(installed.signals.stop, run_before_force_exit=True)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
