"""A site's own Prometheus metrics: what its box did for each message, as it measured it.

Recorded wherever the site handles a message (today the per-message ClientApp process; a
long-lived site worker the same way) into prometheus-client's multiprocess folder (see
:mod:`common.metrics`); ``zk0 supernode`` serves that folder together with the CPU, memory and
GPU use of the site's processes. Everything is labelled by ``site`` (the site's configured
name) and, for messages, ``task`` (``stats``, ``train``, ``evaluate``): never by round, sample,
dataset path or reason text.

The names start with ``zk0_local_`` so that one Prometheus can hold both a site's own view
and the coordinator's view of it (``zk0_site_*``) without a clash.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from common.metrics import guarded, last_value

if TYPE_CHECKING:
    from common.protocol import SiteReport

TASKS = Counter("zk0_local_tasks", "Messages the site handled", ["site", "task"])
TASK_FAILURES = Counter(
    "zk0_local_task_failures", "Messages the site failed to handle (its reply was an error)",
    ["site", "task"])
TASK_SECONDS = Histogram(
    "zk0_local_task_duration_seconds", "Wall time to handle one message, setup included",
    ["site", "task"], buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200))
LAST_TASK = last_value(
    "zk0_local_last_task_timestamp_seconds", "Unix time the site last finished a message",
    ["site", "task"])
TRAIN_LOSS = last_value(
    "zk0_local_train_loss", "Mean policy loss of the site's last training round", ["site"])
EVAL_MSE = last_value(
    "zk0_local_eval_action_mse",
    "Held-out action MSE (real units^2) of the last global model the site evaluated",
    ["site"])
SAMPLES_PER_SECOND = last_value(
    "zk0_local_samples_per_second", "Training samples per second in the site's last round",
    ["site"])
STEPS = Counter("zk0_local_train_steps", "Optimizer steps the site ran", ["site"])
SAMPLES = Counter("zk0_local_train_samples", "Training samples the site used", ["site"])
SKIPPED = Counter("zk0_local_skipped_samples", "Samples skipped as unreadable", ["site"])
EVAL_SAMPLES = Counter("zk0_local_eval_samples", "Held-out frames evaluated", ["site"])
TRAIN_SECONDS = Counter("zk0_local_train_seconds", "Time spent in local training", ["site"])
EVAL_SECONDS = Counter("zk0_local_eval_seconds", "Time spent in held-out evaluation", ["site"])
UPLINK = Counter("zk0_local_uplink_bytes", "Update bytes the site sent", ["site"])


def site_label(node_config: Mapping[str, Any]) -> str:
    """The site's name as configured (read before the config is checked: a task that fails on
    a bad config is still counted for the site)."""
    return str(node_config.get("site-name") or "unknown")


@contextlib.contextmanager
def observe_task(task: str, node_config: Mapping[str, Any]) -> Iterator[None]:
    """Count the message handled inside the block, its duration and whether it failed."""
    site = site_label(node_config)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        _finished(site, task, time.perf_counter() - start, failed=True)
        raise
    _finished(site, task, time.perf_counter() - start, failed=False)


def observed[H: Callable[..., Any]](task: str) -> Callable[[H], H]:
    """Decorate a message handler ``(msg, context) -> Message`` with :func:`observe_task`."""

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        def wrapper(msg: Any, context: Any) -> Any:
            with observe_task(task, context.node_config):
                return handler(msg, context)

        return wrapper  # type: ignore[return-value]

    return decorate


@guarded
def _finished(site: str, task: str, seconds: float, *, failed: bool) -> None:
    TASKS.labels(site, task).inc()
    TASK_FAILURES.labels(site, task).inc(1 if failed else 0)
    TASK_SECONDS.labels(site, task).observe(seconds)
    LAST_TASK.labels(site, task).set(time.time())


@guarded
def record_report(site: str, report: SiteReport) -> None:
    """What the site is about to report to the coordinator, in its own series."""
    if report.train_loss >= 0:
        TRAIN_LOSS.labels(site).set(report.train_loss)
        if report.train_seconds > 0:
            SAMPLES_PER_SECOND.labels(site).set(report.samples / report.train_seconds)
    if report.eval_action_mse >= 0:
        EVAL_MSE.labels(site).set(report.eval_action_mse)
    STEPS.labels(site).inc(report.steps)
    SAMPLES.labels(site).inc(report.samples)
    SKIPPED.labels(site).inc(int(getattr(report, "skipped_samples", 0) or 0))
    EVAL_SAMPLES.labels(site).inc(report.eval_samples)
    TRAIN_SECONDS.labels(site).inc(report.train_seconds)
    EVAL_SECONDS.labels(site).inc(report.eval_seconds)
    UPLINK.labels(site).inc(report.payload_bytes)
