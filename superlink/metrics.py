"""The coordinator's Prometheus metrics: every site as the SuperLink sees it, and every run.

Written by the ServerApp (one short-lived process per run) into prometheus-client's
multiprocess folder (see :mod:`common.metrics`) and served by ``zk0 coordinator-metrics``, so
the scrape target and the counters outlive each run.

Labels: ``site`` is the name the strategy resolves from the node a message was sent to (never
what a reply says about itself; ``node-<id>`` for a node that never told its name), ``kind`` a
:class:`~superlink.strategy.replies.Failure` kind (whatever kinds the strategy produces: today
``error``, ``malformed``, ``integrity``, ``timeout``, ...; plus ``stats`` for a failed stage-0
query and ``excluded`` for a site left out at stage 0), ``run`` Flower's run id. Nothing is
labelled by round or sample, and no reason text, path or secret becomes a label.

Counters have no ``run`` label: they count for the coordinator's lifetime and never reset
between runs, so ``rate()``/``increase()`` work across runs. Gauges that belong to one run
carry ``run``; a site's "last" values do not (the last value is the last, whichever run).
Gauges use ``mostrecent`` (the last value set by any process, kept after the ServerApp exits)
except ``zk0_run_active`` (``livemostrecent``: gone once its ServerApp process is gone).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import guarded, last_value

if TYPE_CHECKING:  # the exporters' tests import this without Flower's stack
    from common.protocol import SiteReport
    from superlink.strategy.replies import Failure

RUN_STATES = ("running", "completed", "failed")

# -- per site, as the coordinator sees it ------------------------------------------------------
SITE_TRAIN_LOSS = last_value(
    "zk0_site_train_loss", "Mean policy loss of the site's last accepted training round",
    ["site"])
SITE_EVAL_MSE = last_value(
    "zk0_site_eval_action_mse",
    "Held-out action MSE (real units^2) of the latest global model on the site's episodes",
    ["site"])
SITE_LAST_REPLY = last_value(
    "zk0_site_last_reply_timestamp_seconds",
    "Unix time of the site's last reply (accepted or refused; a timeout is no reply)",
    ["site"])
SITE_CONSECUTIVE_FAILURES = last_value(
    "zk0_site_consecutive_failures",
    "Messages in a row the site failed (any failure kind); 0 after an accepted reply",
    ["site"])
SITE_STEPS = Counter("zk0_site_train_steps", "Optimizer steps in accepted replies", ["site"])
SITE_SAMPLES = Counter("zk0_site_train_samples", "Training samples in accepted replies", ["site"])
SITE_SKIPPED = Counter(
    "zk0_site_skipped_samples", "Samples the site reported skipping as unreadable", ["site"])
SITE_EVAL_SAMPLES = Counter(
    "zk0_site_eval_samples", "Held-out frames evaluated in accepted replies", ["site"])
SITE_TRAIN_SECONDS = Counter(
    "zk0_site_train_seconds", "Local training time the site reported", ["site"])
SITE_EVAL_SECONDS = Counter(
    "zk0_site_eval_seconds", "Local evaluation time the site reported", ["site"])
SITE_UPLINK = Counter(
    "zk0_site_uplink_bytes", "Update bytes received from the site (accepted replies)", ["site"])
SITE_DOWNLINK = Counter(
    "zk0_site_downlink_bytes", "Model bytes sent to the site", ["site"])
SITE_REPLIES = Counter(
    "zk0_site_replies", "Replies accepted from the site", ["site"])
SITE_FAILURES = Counter(
    "zk0_site_failures", "Messages the site failed, by failure kind", ["site", "kind"])

# -- per run -----------------------------------------------------------------------------------
RUN_STATE = last_value(
    "zk0_run_state", "1 for the run's current state (running, completed, failed), else 0",
    ["run", "state"])
RUN_ACTIVE = Gauge(
    "zk0_run_active", "1 while the run's ServerApp process is alive and running",
    ["run"], multiprocess_mode="livemostrecent")
RUN_STARTED = last_value(
    "zk0_run_start_timestamp_seconds", "Unix time the run started", ["run"])
RUN_PROGRESS = last_value(
    "zk0_run_last_progress_timestamp_seconds",
    "Unix time the run last completed a round (before the first: when its sites had joined)",
    ["run"])
RUN_ROUND = last_value(
    "zk0_run_current_round", "The round the run is in (the final evaluation: the last round)",
    ["run"])
RUN_ROUNDS = last_value(
    "zk0_run_rounds", "Rounds the run is configured for", ["run"])
RUN_SAMPLED = last_value(
    "zk0_run_sites_sampled", "Sites asked in the run's latest round", ["run"])
RUN_REPLIED = last_value(
    "zk0_run_sites_replied", "Sites whose reply was accepted in the run's latest round",
    ["run"])
RUN_EVAL_MSE = last_value(
    "zk0_run_eval_action_mse",
    "Held-out action MSE of the run's latest evaluated global model, weighted by eval samples",
    ["run"])
RUN_MSE_RISING = last_value(
    "zk0_run_eval_mse_rising_rounds",
    "Evaluations in a row in which the run's weighted held-out MSE rose",
    ["run"])
ROUNDS_COMPLETED = Counter("zk0_rounds_completed", "Rounds that produced a new global model")
ROUNDS_FAILED = Counter("zk0_rounds_failed", "Rounds in which no update could be aggregated")
ROUND_SECONDS = Histogram(
    "zk0_round_duration_seconds", "Wall time of a federated round (send to checkpoint)",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400))
AGGREGATION_SECONDS = Histogram(
    "zk0_aggregation_duration_seconds", "Time the strategy took to check and aggregate a round",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))


def node_label(node_id: int | str) -> str:
    """The ``site`` label of a node that never told its name (its stage-0 query failed)."""
    return f"node-{node_id}"


class RunMetrics:
    """The metrics of one run, updated from :class:`superlink.reports.RunReport`.

    Each exchange's replies are counted exactly once: training rounds through
    :meth:`round_recorded`, the final evaluate exchange through :meth:`exchange_recorded`;
    evaluations (one per global model) through :meth:`eval_recorded`, which only sets gauges
    and counts the held-out work that belongs to that model.
    """

    def __init__(self, run_id: int | str, rounds: int | None = None) -> None:
        self.run = str(run_id)
        self.rounds = rounds
        self._streaks: dict[str, int] = {}
        self._last_mse: float | None = None
        self._rising = 0

    # -- run lifecycle -----------------------------------------------------------------------

    @guarded
    def started(
        self, sites: Iterable[str], stats_failures: Mapping[Any, str],
        started: float | None = None, excluded: Mapping[str, str] | None = None,
    ) -> None:
        """The sites that joined (their series start at 0), those whose stage 0 failed and
        those it left out (``excluded``: site name -> why);
        ``started``: when the run began (Unix time; default now)."""
        now = time.time()
        self._state("running")
        RUN_ACTIVE.labels(self.run).set(1)
        RUN_STARTED.labels(self.run).set(started if started is not None else now)
        RUN_PROGRESS.labels(self.run).set(now)
        RUN_ROUND.labels(self.run).set(0)
        RUN_MSE_RISING.labels(self.run).set(0)
        if self.rounds is not None:
            RUN_ROUNDS.labels(self.run).set(self.rounds)
        for site in sites:
            for counter in (SITE_STEPS, SITE_SAMPLES, SITE_SKIPPED, SITE_EVAL_SAMPLES,
                            SITE_TRAIN_SECONDS, SITE_EVAL_SECONDS, SITE_UPLINK, SITE_DOWNLINK,
                            SITE_REPLIES):
                counter.labels(site)  # exported at 0 from the start: increase() sees the first
            SITE_LAST_REPLY.labels(site).set(now)  # its stage-0 reply
            SITE_CONSECUTIVE_FAILURES.labels(site).set(0)
            self._streaks[site] = 0
        for node, _reason in stats_failures.items():
            SITE_FAILURES.labels(node_label(node), "stats").inc()
        for site in excluded or {}:  # left out at stage 0: features, statistics, reply
            SITE_FAILURES.labels(site, "excluded").inc()

    def completed(self) -> None:
        self._finish("completed")

    def failed(self) -> None:
        self._finish("failed")

    @guarded
    def _finish(self, state: str) -> None:
        self._state(state)
        RUN_ACTIVE.labels(self.run).set(0)

    def _state(self, current: str) -> None:
        for state in RUN_STATES:
            RUN_STATE.labels(self.run, state).set(1 if state == current else 0)

    # -- rounds ------------------------------------------------------------------------------

    @guarded
    def round_started(self, server_round: int) -> None:
        RUN_ROUND.labels(self.run).set(server_round)

    @guarded
    def round_recorded(
        self, entry: Mapping[str, Any], reports: Mapping[str, SiteReport],
        failures: list[Failure],
    ) -> None:
        """A training round: its replies and failures, durations, outcome."""
        self._replies(reports, failures, entry.get("downlink_bytes_per_site", 0))
        for site, report in reports.items():
            SITE_STEPS.labels(site).inc(report.steps)
            SITE_SAMPLES.labels(site).inc(report.samples)
            SITE_TRAIN_SECONDS.labels(site).inc(report.train_seconds)
            SITE_UPLINK.labels(site).inc(report.payload_bytes)
            if report.train_loss >= 0:
                SITE_TRAIN_LOSS.labels(site).set(report.train_loss)
        RUN_SAMPLED.labels(self.run).set(len(reports) + len({f.site for f in failures}))
        RUN_REPLIED.labels(self.run).set(len(reports))
        if entry.get("seconds") is not None:
            ROUND_SECONDS.observe(entry["seconds"])
        if entry.get("aggregation_seconds") is not None:
            AGGREGATION_SECONDS.observe(entry["aggregation_seconds"])
        if entry.get("aggregated", True):
            ROUNDS_COMPLETED.inc()
            RUN_PROGRESS.labels(self.run).set(time.time())
        else:
            ROUNDS_FAILED.inc()

    @guarded
    def exchange_recorded(
        self, reports: Mapping[str, SiteReport], failures: list[Failure],
        downlink_bytes_per_site: int = 0,
    ) -> None:
        """An exchange outside the training rounds (the final evaluation)."""
        self._replies(reports, failures, downlink_bytes_per_site)

    def _replies(
        self, reports: Mapping[str, SiteReport], failures: list[Failure], downlink: int
    ) -> None:
        now = time.time()
        for site, report in reports.items():
            SITE_REPLIES.labels(site).inc()
            SITE_LAST_REPLY.labels(site).set(now)
            SITE_SKIPPED.labels(site).inc(_skipped(report))
            self._streaks[site] = 0
            SITE_CONSECUTIVE_FAILURES.labels(site).set(0)
        for failure in failures:
            SITE_FAILURES.labels(failure.site, failure.kind).inc()
            if failure.kind != "timeout":
                SITE_LAST_REPLY.labels(failure.site).set(now)
        for site in {f.site for f in failures} - set(reports):
            self._streaks[site] = self._streaks.get(site, 0) + 1
            SITE_CONSECUTIVE_FAILURES.labels(site).set(self._streaks[site])
        if downlink:
            for site in set(reports) | {f.site for f in failures}:
                SITE_DOWNLINK.labels(site).inc(downlink)

    # -- evaluation --------------------------------------------------------------------------

    @guarded
    def eval_recorded(
        self, entry: Mapping[str, Any] | None, reports: Mapping[str, SiteReport]
    ) -> None:
        """One global model's held-out evaluation (``entry`` as RunReport.record_eval made it)."""
        if entry is None:
            return
        for site, mse in entry["action_mse"].items():
            SITE_EVAL_MSE.labels(site).set(mse)
            report = reports[site]
            SITE_EVAL_SAMPLES.labels(site).inc(report.eval_samples)
            SITE_EVAL_SECONDS.labels(site).inc(report.eval_seconds)
        weighted = entry.get("action_mse_weighted")
        if weighted is None:
            return
        RUN_EVAL_MSE.labels(self.run).set(weighted)
        if self._last_mse is not None:
            self._rising = self._rising + 1 if weighted > self._last_mse else 0
        self._last_mse = weighted
        RUN_MSE_RISING.labels(self.run).set(self._rising)


def _skipped(report: SiteReport) -> int:
    """Samples the site skipped, when its report says (older sites do not)."""
    return int(getattr(report, "skipped_samples", 0) or 0)


@guarded
def run_failed(run_id: int | str) -> None:
    """Mark a run failed from outside its :class:`RunMetrics` (it may never have been made)."""
    RunMetrics(run_id).failed()
