"""zk0's one change to a Flower internal (deploy/flower/supernode_waits.py), pinned to the
installed Flower, and what each part of it does.

The held AcquireTask runs on Flower's real runtime API in tests/test_site_worker.py; whole
rounds through the changed SuperNode run in tests/test_e2e_federation.py.
"""

from __future__ import annotations

import threading
import time
from importlib import import_module

import pytest

from deploy.flower import supernode_waits as sw


def test_pinned_to_the_installed_flower() -> None:
    """Fails loudly when Flower changes underneath: read the functions named here again, check
    that the waits module still does what its docstring says, then update ``PINNED``."""
    assert sw.drift() == []


def test_install_changes_exactly_the_documented_places_and_undo_restores_them() -> None:
    loop = import_module("flwr.supernode.start_client_internal")
    handlers = import_module("flwr.supernode.servicer.runtime.runtime_handlers")
    names = [(loop, n) for n in ("_pull_and_store_message", "_push_messages", "time",
                                 "pull_objects")]
    names += [(handlers, n) for n in ("acquire_task", "push_messages", "push_object",
                                      "push_task_output")]
    before = {(m.__name__, n): getattr(m, n) for m, n in names}
    installed = sw.install(sw.Waits())
    assert installed is not None
    try:
        for (module, name), original in before.items():
            assert getattr(import_module(module), name) is not original, name
    finally:
        installed.undo()
    for (module, name), original in before.items():
        assert getattr(import_module(module), name) is original, name


def test_empty_pulls_back_off_from_min_to_max_and_start_over_after_a_message() -> None:
    """Flower's loop would sleep 3 s after each empty pull; the wrapper pulls again after
    pull-min, 1.25x longer each time up to pull-max, and the next message starts over."""
    waits = sw.Waits(pull_min=0.1, pull_max=0.3)
    slept: list[float] = []
    answers = iter([None] * 6 + [42] + [None] * 2 + [43])

    def flowers_pull(**kwargs):  # Flower's _pull_and_store_message: run id, or None
        got = kwargs["receive"]()
        return next(answers) if got is None else None

    signals = sw._Signals()
    pull = sw._pull_until_message(flowers_pull, waits, signals, sleep=slept.append)
    assert pull(receive=lambda: None) == 42
    assert slept == pytest.approx([0.1, 0.125, 0.15625, 0.1953125, 0.244140625, 0.3])
    assert signals.generation == 1  # a task was created: held AcquireTasks wake up
    slept.clear()
    assert pull(receive=lambda: None) == 43
    assert slept == pytest.approx([0.1, 0.125])


def test_reply_waits_wake_on_the_clientapps_push() -> None:
    signals = sw._Signals()
    sleep = sw._EventSleep(signals).sleep
    pushed = sw._wakes_reply_waits(lambda *a: "stored", signals)
    threading.Timer(0.2, pushed).start()
    start = time.monotonic()
    sleep(5.0)  # Flower's wait for the reply, bounded as before
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    sleep(0.3)  # no push: the bound holds
    assert 0.25 < time.monotonic() - start < 1.0
    assert sw._EventSleep(signals).monotonic is time.monotonic  # the rest of ``time`` is real


def test_waits_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="min"):
        sw.Waits(pull_min=2.0, pull_max=1.0)
    with pytest.raises(ValueError, match="acquire hold"):
        sw.Waits(acquire_hold=1000)
    with pytest.raises(ValueError, match="object retry"):
        sw.Waits(object_retry=0)
    waits, rest = sw.parse_args(["--pull-max-seconds", "2", "--superlink", "x:1", "--insecure"])
    assert waits.pull_max == 2.0 and rest == ["--superlink", "x:1", "--insecure"]
