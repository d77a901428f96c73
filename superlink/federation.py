"""The federated run, round by round, as the ServerApp drives it.

Flower's ``Strategy.start`` runs train/evaluate rounds but has no place for zk0's stage 0
(federated normalization stats), per-round LeRobot checkpoints, per-site reports, and the
accounting of failed or silent sites; so this loop calls the strategy's own steps
(``configure_train`` -> exchange -> ``aggregate_train``) and does those things in between.

Evaluation never costs an extra broadcast: the model a site receives at the start of round
``r + 1`` *is* the global model after round ``r``, so the site evaluates it on its held-out
episodes before training. Only the final model needs one evaluate message.

Faults (docs/explanation/failure-handling.md): the output folder is checked before any
site is contacted (:mod:`superlink.disk`); stage 0 and every round wait at most ``join-timeout`` for
sites (:mod:`superlink.federated_stats`, :mod:`superlink.strategy.node_selection`); messages
expire with the round and transient SuperLink errors are retried (:mod:`superlink.exchange`);
every update is checked before aggregation (:mod:`superlink.strategy.codec_fedavg`); a round
with fewer than ``min-replies`` usable updates fails without moving the model or writing a
checkpoint, and how the run ends is its status (:mod:`superlink.run_status`); every round that
completes leaves what a resumed run needs (:mod:`superlink.resume`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.serverapp import Grid

from common import atomic
from common import logs as zlog
from common.norm_stats import stats_to_record
from common.policy_factory import (
    LoadedPolicy,
    build_policy,
    frozen_fingerprint,
    make_policy_config,
    trainable_state,
)
from common.protocol import METRICS, RoundInstructions, SiteReport
from common.records import RecordError
from common.settings import RunConfig
from superlink import disk, federated_stats, resume
from superlink.authenticity import FederationGuard
from superlink.checkpoints import PRETRAINED_DIR, checkpoint_dir, save_checkpoint
from superlink.exchange import Exchange, exchange
from superlink.metrics import run_failed
from superlink.polling import IdleBackoff
from superlink.reports import RunReport
from superlink.run_status import RoundLedger
from superlink.server_state import ServerState
from superlink.strategy import EVALUATE, TRAIN, CodecFedAvg, Failure, RoundReplies, make_strategy
from superlink.summary import write_summary
from superlink.tracking import Tracker, open_tracker

log = zlog.get_logger("zk0.superlink")


def _site_name(sites: Mapping[int, str], node: int) -> str:
    return sites.get(node, f"node-{node}")


def _progress(sites: Mapping[int, str], label: str):
    def on_reply(msg: Message, node: int) -> None:
        site = _site_name(sites, node)
        if msg.has_error():
            log.warning(f"{label}_failed", site=site, reason=(msg.error.reason or "")[:300])
            return
        try:  # the reply model's own parse of the report (unverified: a progress line only)
            report = SiteReport.from_record(msg.content.get(METRICS), METRICS)
        except RecordError:
            log.warning(f"{label}_reply_unreadable", site=site)  # the strategy says why
            return
        log.info(
            f"{label}_reply",
            site=site,
            loss=round(report.train_loss, 4) if report.train_loss >= 0 else None,
            eval_mse=round(report.eval_action_mse, 3) if report.eval_action_mse >= 0 else None,
            seconds=round(report.train_seconds + report.eval_seconds + report.setup_seconds, 1),
        )

    return on_reply


def run_federation(grid: Grid, context: Context) -> Path:
    """Run the whole federation (or resume one); return the run folder.

    A run that fails leaves its reason in ``run.json`` (``status: "failed: ..."``) and
    ``logs.jsonl`` next to the rounds and checkpoints it completed, then re-raises so Flower
    marks the run failed. Errors found before any site is contacted (run config, output
    folder, a run folder that cannot be resumed) write nothing.
    """
    run = RunConfig.parse(context.run_config, "run config")  # fails before any work
    run_dir = resume.run_folder(run, context.run_id)
    point = resume.load(run_dir, run) if run.resume_from else None
    disk.check_output_dir(run_dir, disk.early_estimate(run))  # before any site is contacted
    zlog.configure(json_file=run_dir / "logs.jsonl")
    tracker = Tracker()
    try:
        tracker = open_tracker(run, run_dir, context.run_id, run.to_flwr())
        return _federate(grid, context, run, run_dir, point, tracker)
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"
        log.error("run_failed", run_dir=str(run_dir), error=reason)
        run_failed(context.run_id)
        _record_failure(run_dir, reason)
        tracker.finish({"failed": reason}, [], exit_code=1)
        raise


def _record_failure(run_dir: Path, reason: str) -> None:
    """The failure in run.json; if even that cannot be written (disk full), the log has it."""
    meta_path = run_dir / "run.json"
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        atomic.write_json(meta_path, {**meta, "failed": reason, "status": f"failed: {reason}"})
        write_summary(run_dir)


def _federate(
    grid: Grid, context: Context, run: RunConfig, run_dir: Path,
    point: resume.ResumePoint | None, tracker: Tracker,
) -> Path:
    started = time.time()
    first_round = point.completed_round + 1 if point else 1
    make_policy_config(run, "cpu")  # policy name and policy-options, before any site is asked
    log.info(
        "run_started",
        run_dir=str(run_dir),
        policy=run.policy,
        strategy=run.strategy,
        rounds=run.num_server_rounds,
        local_steps=run.local_steps,
        wire_dtype=run.wire_dtype,
        min_sites=run.min_sites,
        resumed_after_round=point.completed_round if point else None,
    )

    # no coordinator key: fail before any work; instructions carry the federation id, which a
    # resumed run keeps, and sequence numbers that go on in the run folder (sites refuse replays)
    guard = FederationGuard.for_run(
        context, federation_id=point.federation_id if point else str(context.run_id),
        run_dir=run_dir)
    data = federated_stats.collect(grid, run, guard, point.features if point else None,
                                   point.fps if point else None)
    stats = point.state.stats if point and point.state else data.stats
    bundle = build_policy(run, data.features, stats, "cpu")
    initial = {k: v.numpy() for k, v in trainable_state(bundle.policy).items()}
    n_trainable = sum(v.size for v in initial.values())
    n_total = sum(p.numel() for p in bundle.policy.parameters())
    disk.check_room_for_checkpoints(
        run_dir, disk.checkpoint_bytes(bundle.policy, n_trainable, run.strategy),
        run.num_server_rounds - first_round + 1, run.keep_checkpoints,
    )
    sites = {node: info.site_name for node, info in data.sites.items()}
    meta = {
        "run_id": context.run_id,
        "federation_id": str(context.run_id),
        "run_config": run.to_flwr(),
        "status": "running",
        "sites": {
            info.site_name: {
                "node_id": node,
                "train_frames": info.train_frames,
                "eval_episodes": info.eval_episodes,
                "device": info.device,
                "key": guard.identity(node).fingerprint,  # the registered key it signs with
            }
            for node, info in data.sites.items()
        },
        "stats_failures": {str(k): v for k, v in data.failures.items()},
        "excluded_sites": data.excluded,
        "features": data.features,
        "fps": data.fps,
        "parameters": {"total": n_total, "trainable": n_trainable},
        "started": started,
        "failed_rounds": [],
    }
    if point:  # the same federation goes on: keep its identity, history and first start
        runs = point.meta.get("runs") or [{"run_id": point.meta["run_id"],
                                           "started": point.meta.get("started")}]
        keep = {k: point.meta[k] for k in ("run_id", "federation_id", "started", "initial_eval")
                if k in point.meta}
        meta |= keep | {
            "failed_rounds": point.ledger.failed_rounds,
            "runs": [*runs, {"run_id": context.run_id, "started": started,
                             "resumed_after_round": point.completed_round}],
        }
    report = RunReport(run_dir, meta, point.rounds if point else None,
                       point.evals if point else None)
    log.info("policy_built", policy=run.policy, parameters=n_total, trainable=n_trainable,
             sites=len(data.sites), excluded=sorted(data.excluded))
    tracker.update_config({k: report.meta[k] for k in ("sites", "parameters")})

    action_dims = int(data.features["action"]["shape"][0])
    strategy = make_strategy(run, stats_to_record(stats), sites, action_dims, guard=guard)
    weights = initial
    if point and point.state:
        weights = dict(point.state.weights)
        strategy.restore_state(point.state.strategy, point.state.layout)
    fed = Rounds(
        grid=grid, run=run, run_dir=run_dir, report=report, strategy=strategy, bundle=bundle,
        sites=sites, stats=stats, weights=weights, federation_id=str(meta["federation_id"]),
        fingerprint=frozen_fingerprint(bundle.policy), run_id=context.run_id,
        features=data.features,
        ledger=point.ledger if point else RoundLedger(run.max_failed_rounds), tracker=tracker,
    )
    for server_round in range(first_round, run.num_server_rounds + 1):
        fed.train_round(server_round)
    status = fed.ledger.final_status()
    final = fed.final_eval()
    report.update_meta(finished=time.time(), seconds=time.time() - started, final_eval=final,
                       status=status, failed_rounds=fed.ledger.failed_rounds)
    tracker.finish(
        {"eval/final_mse": final["action_mse_weighted"] if final else None,
         "seconds": time.time() - started, "status": status},
        report.failures(),
    )
    report.metrics.completed()
    log.info("run_finished", run_dir=str(run_dir), status=status,
             failed_rounds=fed.ledger.failed_rounds, seconds=round(time.time() - started, 1))
    print(
        "\nHeld-out action MSE per site (global model after each round):\n" + report.table()
        + f"\nSummary page: {run_dir / 'summary.html'}",
        flush=True,
    )
    return run_dir


@dataclass
class Rounds:
    """The state the round loop carries from round to round, and its two steps."""

    grid: Grid
    run: RunConfig
    run_dir: Path
    report: RunReport
    strategy: CodecFedAvg
    bundle: LoadedPolicy
    sites: dict[int, str]
    stats: dict[str, dict[str, Any]]
    weights: dict[str, np.ndarray]  # the global trainable weights, as the strategy made them
    federation_id: str
    fingerprint: str
    run_id: int
    features: dict[str, Any]
    ledger: RoundLedger
    tracker: Tracker

    def instructions(self, server_round: int, evaluate: bool, train: bool = True):
        after_round = server_round - 1 if train else server_round
        return RoundInstructions(
            server_round=server_round,
            proximal_mu=self.run.proximal_mu,
            features=self.features,
            fingerprint=self.fingerprint,
            evaluate=evaluate,
            train=train,
            trajectory=evaluate and self.run.is_trajectory_round(after_round),
            federation_id=self.federation_id,
            personalize=not train and self.run.personalize_steps > 0,
        ).to_record()

    def record_eval(
        self, after_round: int, replies: RoundReplies, failures: list[Failure]
    ) -> dict[str, Any] | None:
        """The held-out MSE (and per-joint plots) of the model after ``after_round``."""
        entry = self.report.record_eval(after_round, replies.measured,
                                        failures + replies.eval_failures,
                                        replies.trajectories, replies.trajectory_notes)
        if entry is not None:
            self.tracker.log_eval(entry, self.run_dir)
        return entry

    def _arrays(self) -> ArrayRecord:
        return ArrayRecord({name: Array(value) for name, value in self.weights.items()})

    def _send(self, messages: list[Message], label: str) -> tuple[Exchange, list[Failure]]:
        """Exchange ``messages``; the replies, and a failure for every silent site, every site
        the round could not reach and every stale reply."""
        result = exchange(self.grid, messages, self.run.round_timeout or None,
                          _progress(self.sites, label), IdleBackoff.of(self.run),
                          self.run.upload_stall_timeout)
        failures = [
            Failure(n, _site_name(self.sites, n), "timeout",
                    f"no reply within round-timeout={self.run.round_timeout}s")
            for n in result.missing
        ]
        failures += [Failure(n, _site_name(self.sites, n), "upload", reason)
                     for n, reason in result.incomplete.items()]
        failures += [
            Failure(m.metadata.src_node_id, _site_name(self.sites, m.metadata.src_node_id),
                    "stale", f"reply to message {m.metadata.reply_to_message_id!r} of an "
                    "earlier exchange; dropped")
            for m in result.stale
        ]
        return result, failures

    def _offline(self, server_round: int) -> list[Failure]:
        return [
            Failure(n, _site_name(self.sites, n), "offline",
                    f"not connected when round {server_round} started (waited up to "
                    f"join-timeout={self.run.join_timeout}s for min-sites={self.run.min_sites})")
            for n in self.strategy.offline
        ]

    def train_round(self, server_round: int) -> None:
        run, strategy = self.run, self.strategy
        round_start = time.time()
        evaluate_incoming = server_round == 1 or run.is_eval_round(server_round - 1)
        messages = strategy.configure_train(
            server_round, self._arrays(), self.instructions(server_round, evaluate_incoming),
            self.grid,
        )
        # Unix times of the round's steps: where a round's seconds go (bench/overhead.py)
        timing: dict[str, Any] = {"started": round_start, "configured": time.time()}
        self.report.metrics.round_started(server_round)
        log.info("round_started", round=server_round, sites=len(messages),
                 downlink_bytes_per_site=strategy.downlink_bytes)
        failures = self._offline(server_round)
        aggregated = None
        aggregation_seconds = 0.0
        if len(messages) < run.min_replies:  # cannot succeed: spare the sites the work
            reason = (f"{len(messages)} site(s) to ask, min-replies is {run.min_replies}; "
                      "nothing was sent")
            messages = []
        else:
            result, lost = self._send(messages, "train")
            timing |= {"pushed": result.pushed_at, "replies": {
                _site_name(self.sites, n): t for n, t in result.arrived_at.items()}}
            aggregation_start = time.perf_counter()
            aggregated, _ = strategy.aggregate_train(server_round, result.replies)
            aggregation_seconds = time.perf_counter() - aggregation_start
            timing["aggregated"] = time.time()
            failures = strategy.replies(TRAIN, server_round).failures + lost + failures
            usable = len(strategy.replies(TRAIN, server_round).accepted)
            reason = f"{usable} usable update(s), min-replies is {run.min_replies}"
        replies = strategy.replies(TRAIN, server_round)
        if evaluate_incoming:
            self.record_eval(server_round - 1, replies, failures)
        ok = aggregated is not None
        if ok:
            self.weights = {k: v.numpy() for k, v in aggregated.items()}
        entry = self.report.round_entry(
            server_round,
            replies.reports,
            failures,
            status="ok" if ok else "failed",
            failure_reason=None if ok else reason,
            aggregated=ok,
            downlink_bytes_per_site=strategy.downlink_bytes,
            downlink_bytes=strategy.downlink_bytes * len(messages),
            seconds=time.time() - round_start,
            aggregation_seconds=aggregation_seconds,
            checkpoint=str(checkpoint_dir(self.run_dir, server_round) / PRETRAINED_DIR)
            if ok else None,
            notes=replies.notes,
            timing=timing,
            **strategy.round_summary(server_round),
        )
        if ok:
            self._checkpoint(server_round, sorted(replies.reports), entry)
            timing["checkpointed"] = time.time()
            self.ledger.succeeded()
        else:
            self.ledger.failed(server_round)
        self.report.store_round(entry, replies.reports, failures)
        for f in failures:
            log.warning(
                "site_failed", round=server_round, site=f.site, kind=f.kind, reason=f.reason[:300]
            )
        self.tracker.log_round(entry)
        log.info(
            "round_finished",
            round=server_round,
            status=entry["status"],
            sites_ok=len(replies.reports),
            sites_failed=len(failures),
            train_loss=entry["train_loss"],
            uplink_bytes=entry["uplink_bytes"],
            seconds=round(entry["seconds"], 1),
        )
        print(progress_line(entry, run.num_server_rounds, self.report.evals), flush=True)
        if not ok:
            log.error("round_failed", round=server_round, reason=reason,
                      failed_in_a_row=self.ledger.consecutive_failed,
                      max_failed_rounds=run.max_failed_rounds)
            self.report.update_meta(failed_rounds=self.ledger.failed_rounds)
            self.ledger.check(reason)

    def _checkpoint(self, server_round: int, sites: list[str], entry: dict[str, Any]) -> None:
        arrays, layout = self.strategy.export_state()
        state = ServerState(server_round, self.run.strategy, self.weights, arrays, layout,
                            self.stats)
        info = {"round": server_round, "run_id": self.run_id,
                "federation_id": self.federation_id, "sites": sites, "report": entry}
        save_checkpoint(self.run_dir, server_round, self.bundle, self.weights, info,
                        keep=self.run.keep_checkpoints, state=state)

    def final_eval(self) -> dict[str, Any] | None:
        """The final model: one evaluate message (the only broadcast made just for it)."""
        final_round = self.run.num_server_rounds
        messages = self.strategy.configure_evaluate(
            final_round, self._arrays(),
            self.instructions(final_round, evaluate=True, train=False), self.grid,
        )
        result, lost = self._send(messages, "eval")
        self.strategy.aggregate_evaluate(final_round, result.replies)
        evaluated = self.strategy.replies(EVALUATE, final_round)
        failures = evaluated.failures + lost + self._offline(final_round)
        self.report.metrics.exchange_recorded(evaluated.reports, failures,
                                              self.strategy.downlink_bytes)
        return self.record_eval(final_round, evaluated, failures)


def progress_line(entry: Mapping, rounds: int, evals: Mapping[int, dict]) -> str:
    """The one line per round a person watching the console looks for."""
    latest = max((r for r in evals if r < entry["round"]), default=None)
    mse = (f"held-out MSE {evals[latest]['action_mse_weighted']:.2f} (model after round "
           f"{latest})" if latest is not None else "held-out MSE -")
    loss = "-" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
    failed = len(entry["failures"])
    verdict = ("" if entry.get("status", "ok") == "ok"
               else f" | ROUND FAILED ({entry.get('failure_reason')}): model not moved")
    return (
        f"[zk0] ===== round {entry['round']}/{rounds} | train loss {loss} | {mse} | "
        f"{len(entry['sites'])} sites ok{f', {failed} FAILED' if failed else ''} | "
        f"up {entry['uplink_bytes'] / 1e6:.2f} MB | {entry['seconds']:.1f} s{verdict} ====="
    )
