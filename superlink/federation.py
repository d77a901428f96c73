"""The federated run, round by round, as the ServerApp drives it.

Flower's ``Strategy.start`` runs train/evaluate rounds but has no place for zk0's stage 0
(federated normalization stats), per-round LeRobot checkpoints, per-site reports, and the
accounting of failed or silent sites; so this loop calls the strategy's own steps
(``configure_train`` -> exchange -> ``aggregate_train``) and does those things in between.

Evaluation never costs an extra broadcast: the model a site receives at the start of round
``r + 1`` *is* the global model after round ``r``, so the site evaluates it on its held-out
episodes before training. Only the final model needs one evaluate message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid

from common import atomic
from common import logs as zlog
from common.norm_stats import stats_to_record
from common.policy_factory import build_policy, frozen_fingerprint, trainable_state
from common.protocol import METRICS, RoundInstructions, SiteReport
from common.settings import RunConfig
from superlink import federated_stats
from superlink.checkpoints import save_checkpoint
from superlink.exchange import exchange
from superlink.reports import RunReport
from superlink.strategy import EVALUATE, TRAIN, CodecFedAvg, Failure, make_strategy
from superlink.strategy.state import save_state

log = zlog.get_logger("zk0.superlink")


def _site_name(sites: Mapping[int, str], node: int) -> str:
    return sites.get(node, f"node-{node}")


def _progress(sites: Mapping[int, str], label: str):
    def on_reply(msg: Message, node: int) -> None:
        site = _site_name(sites, node)
        if msg.has_error():
            log.warning(f"{label}_failed", site=site, reason=(msg.error.reason or "")[:300])
            return
        report = SiteReport.from_record(msg.content.metric_records[METRICS])
        log.info(
            f"{label}_reply",
            site=site,
            loss=round(report.train_loss, 4) if report.train_loss >= 0 else None,
            eval_mse=round(report.eval_action_mse, 3) if report.eval_action_mse >= 0 else None,
            seconds=round(report.train_seconds + report.eval_seconds + report.setup_seconds, 1),
        )

    return on_reply


def _send(grid: Grid, sites: Mapping[int, str], messages, run: RunConfig, label: str):
    """Exchange ``messages``; the replies, and a timeout failure for every silent site."""
    result = exchange(grid, messages, run.round_timeout or None, _progress(sites, label))
    timeouts = [
        Failure(n, _site_name(sites, n), "timeout",
                f"no reply within round-timeout={run.round_timeout}s")
        for n in result.missing
    ]
    return result, timeouts


def run_federation(grid: Grid, context: Context) -> Path:
    """Run the whole federation; return the run folder.

    A run that fails leaves its reason in ``run.json`` and ``logs.jsonl`` next to the rounds
    and checkpoints it completed, then re-raises so Flower marks the run failed.
    """
    run = RunConfig.parse(context.run_config, "run config")  # fails before any work
    run_dir = (Path(run.output_dir).expanduser() / f"run-{context.run_id}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    zlog.configure(json_file=run_dir / "logs.jsonl")
    try:
        return _federate(grid, context, run, run_dir)
    except BaseException as err:
        log.error("run_failed", run_dir=str(run_dir), error=f"{type(err).__name__}: {err}")
        meta_path = run_dir / "run.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        atomic.write_json(meta_path, {**meta, "failed": f"{type(err).__name__}: {err}"})
        raise


def _federate(grid: Grid, context: Context, run: RunConfig, run_dir: Path) -> Path:
    started = time.time()
    log.info(
        "run_started",
        run_dir=str(run_dir),
        policy=run.policy,
        strategy=run.strategy,
        rounds=run.num_server_rounds,
        local_steps=run.local_steps,
        wire_dtype=run.wire_dtype,
        min_sites=run.min_sites,
    )

    data = federated_stats.collect(grid, run)
    bundle = build_policy(run, data.features, data.stats, "cpu")
    fingerprint = frozen_fingerprint(bundle.policy)
    weights = {k: v.numpy() for k, v in trainable_state(bundle.policy).items()}
    n_trainable = sum(v.size for v in weights.values())
    n_total = sum(p.numel() for p in bundle.policy.parameters())
    report = RunReport(
        run_dir,
        {
            "run_id": context.run_id,
            "run_config": run.to_flwr(),
            "sites": {
                info.site_name: {
                    "node_id": node,
                    "train_frames": info.train_frames,
                    "eval_episodes": info.eval_episodes,
                    "device": info.device,
                }
                for node, info in data.sites.items()
            },
            "stats_failures": {str(k): v for k, v in data.failures.items()},
            "features": data.features,
            "parameters": {"total": n_total, "trainable": n_trainable},
            "started": started,
        },
    )
    log.info(
        "policy_built",
        policy=run.policy,
        parameters=n_total,
        trainable=n_trainable,
        sites=len(data.sites),
    )

    sites = {node: info.site_name for node, info in data.sites.items()}
    strategy: CodecFedAvg = make_strategy(run, stats_to_record(data.stats), sites)

    def instructions(server_round: int, evaluate: bool, train: bool = True):
        return RoundInstructions(
            server_round=server_round,
            proximal_mu=run.proximal_mu,
            features=data.features,
            fingerprint=fingerprint,
            evaluate=evaluate,
            train=train,
        ).to_record()

    for server_round in range(1, run.num_server_rounds + 1):
        round_start = time.time()
        evaluate_incoming = server_round == 1 or run.is_eval_round(server_round - 1)
        messages = strategy.configure_train(
            server_round,
            ArrayRecord(dict(_arrays(weights))),
            instructions(server_round, evaluate_incoming),
            grid,
        )
        log.info(
            "round_started",
            round=server_round,
            sites=len(messages),
            downlink_bytes_per_site=strategy.downlink_bytes,
        )
        result, timeouts = _send(grid, sites, messages, run, "train")
        aggregated, _ = strategy.aggregate_train(server_round, result.replies)
        replies = strategy.replies(TRAIN, server_round)
        failures = replies.failures + timeouts
        if evaluate_incoming:
            report.record_eval(server_round - 1, replies.reports, failures)
        if aggregated is not None:
            weights = {k: v.numpy() for k, v in aggregated.items()}
        ckpt = save_checkpoint(
            run_dir,
            server_round,
            bundle,
            weights,
            {"round": server_round, "run_id": context.run_id, "sites": sorted(replies.reports)},
            keep=run.keep_checkpoints,
        )
        save_state(ckpt.parent, strategy.state_arrays())  # SCAFFOLD's c, ...: for resume
        entry = report.record_round(
            server_round,
            replies.reports,
            failures,
            aggregated=aggregated is not None,
            downlink_bytes_per_site=strategy.downlink_bytes,
            downlink_bytes=strategy.downlink_bytes * len(messages),
            seconds=time.time() - round_start,
            checkpoint=str(ckpt),
            **strategy.round_summary(server_round),
        )
        for f in failures:
            log.warning(
                "site_failed", round=server_round, site=f.site, kind=f.kind, reason=f.reason[:300]
            )
        log.info(
            "round_finished",
            round=server_round,
            sites_ok=len(replies.reports),
            sites_failed=len(failures),
            train_loss=entry["train_loss"],
            uplink_bytes=entry["uplink_bytes"],
            seconds=round(entry["seconds"], 1),
        )

    # The final model: one evaluate message (the only broadcast made just for evaluation).
    final_round = run.num_server_rounds
    messages = strategy.configure_evaluate(
        final_round,
        ArrayRecord(dict(_arrays(weights))),
        instructions(final_round, evaluate=True, train=False),
        grid,
    )
    result, timeouts = _send(grid, sites, messages, run, "eval")
    strategy.aggregate_evaluate(final_round, result.replies)
    evaluated = strategy.replies(EVALUATE, final_round)
    final = report.record_eval(final_round, evaluated.reports, evaluated.failures + timeouts)
    report.update_meta(finished=time.time(), seconds=time.time() - started, final_eval=final)
    log.info("run_finished", run_dir=str(run_dir), seconds=round(time.time() - started, 1))
    print(
        "\nHeld-out action MSE per site (global model after each round):\n" + report.table(),
        flush=True,
    )
    return run_dir


def _arrays(weights):
    from flwr.app import Array

    for name, value in weights.items():
        yield name, Array(value)
