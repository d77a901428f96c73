"""What both sides' Prometheus metrics share: the multiprocess setting and a guard.

Flower 1.42 starts a new ``flwr-serverapp`` per run and a new ``flwr-clientapp`` per message,
so a metric kept in such a process's memory would vanish with it. prometheus-client's
multiprocess mode writes every metric to small memory-mapped files in the folder named by
``PROMETHEUS_MULTIPROC_DIR`` instead; a long-lived zk0 process next to the SuperLink
(``zk0 coordinator-metrics``) or on the site's box (``zk0 supernode``) reads that folder and
serves ``/metrics``. The launchers set the variable in the environment of the SuperExec, which
the apps inherit; without it the metrics live in this process's default registry (in-process
runs, tests) and nobody scrapes them.

Metrics must never cost a run: a failure to record one is logged and swallowed.

A gauge in multiprocess mode needs a rule for combining the processes' values; a "last value"
(a site's last loss, a run's round) must survive the process that set it, so it is the value
most recently set by any process (:func:`last_value`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

from prometheus_client import Gauge

from common.logs import get_logger

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = get_logger("zk0.metrics")


def multiprocess_dir() -> str | None:
    """The folder this process writes its metrics to, or None (in-memory registry)."""
    return os.environ.get(MULTIPROC_ENV) or None


def guarded[**P, R](fn: Callable[P, R]) -> Callable[P, R | None]:
    """Run ``fn``; on any error log ``metrics_failed`` and return None instead of raising.

    A full disk or a removed metrics folder must not fail a federated round.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # observability never takes the run down
            log.warning("metrics_failed", where=fn.__qualname__,
                        error=f"{type(err).__name__}: {err}")
            return None

    return wrapper


def last_value(name: str, documentation: str, labels: Sequence[str]) -> Gauge:
    """A gauge whose exported value is the one most recently set by any process, kept after
    that process exits."""
    return Gauge(name, documentation, labels, multiprocess_mode="mostrecent")
