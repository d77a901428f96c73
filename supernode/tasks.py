"""What a site does for each server message, whichever process runs it.

- ``query.stats``: describe the dataset (features, episode counts) and send count-level moments
  of the numeric features, so the server can build the policy and exact global norm stats.
- ``train``: load the global trainable weights, optionally evaluate them on the held-out
  episodes, train ``local-steps`` with the strategy's drift correction (FedProx term, decoupled
  proximal step, SCAFFOLD's control variates kept on the site's disk:
  :mod:`supernode.control_variates`), and send back the update (and SCAFFOLD's control-variate
  delta). Unreadable
  samples are skipped and counted (:mod:`supernode.sample_guard`); if training fails after the
  evaluation succeeded, the reply carries that evaluation and the reason, and no update.
- ``evaluate``: evaluate the global weights only (the final model after the last round); with
  ``personalize-steps`` also fine-tune them on the site's own data, score and keep that
  personalized model (:mod:`supernode.personalization`).

When the server asks for a trajectory (``trajectory-every``), the evaluation also replays the
first ``trajectory-frames`` frames of one held-out episode; their predicted and recorded actions
go back with the reply, or, with ``share-trajectories = false`` in the node config, are plotted
under the site's state dir and only a note says so. Nothing else leaves the site: no frames,
no other per-sample values, no frozen weights.

Each handler takes the message's content and the node config, run config and run id Flower gave
the ClientApp, and returns the reply's content. The per-message ClientApp
(:mod:`supernode.client_app`) calls them with a fresh :class:`SiteRuntime`; the site worker
(:mod:`supernode.worker`) with the one it keeps, so both paths run exactly this code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, RecordDict

from common import codec
from common.logs import get_logger
from common.norm_stats import stats_from_record, to_record
from common.policy_factory import (
    LoadedPolicy,
    load_trainable,
    trainable_parameters,
    trainable_state,
)
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    CONTROL,
    CONTROL_CODEC,
    METRICS,
    MOMENTS,
    NORM_STATS,
    NOTES,
    SITE,
    STATS_QUERY,
    TRAJECTORY,
    TRAJECTORY_INFO,
    RoundInstructions,
    SiteNotes,
    SiteReport,
)
from supernode.control_variates import ControlRound
from supernode.evaluation import evaluate_action_mse
from supernode.local_site import Site
from supernode.personalization import personalize
from supernode.runtime import SiteRuntime
from supernode.sample_guard import BadDataError
from supernode.site_dataset import DatasetError
from supernode.training import DriftCorrection, train_round
from supernode.trajectory import keep_at_site, plotted_episode, predict_trajectory

log = get_logger("zk0.supernode")

Config = Mapping[str, Any]
Handler = Callable[[RecordDict, Config, Config, int, SiteRuntime | None], RecordDict]


def stats(content: RecordDict, node_config: Config, run_config: Config, run_id: int,
          runtime: SiteRuntime | None = None) -> RecordDict:
    site = (runtime or SiteRuntime()).site(node_config, run_config)
    info = site.info()
    log.info("stats", site=info.site_name, train_frames=info.train_frames,
             eval_episodes=info.eval_episodes)
    return RecordDict({SITE: info.to_record(), MOMENTS: to_record(site.moments())})


@dataclass
class _Received:
    """A train/evaluate message, opened at the site: the global weights are in the policy."""

    runtime: SiteRuntime
    site: Site
    instructions: RoundInstructions
    payload: codec.Payload
    weights: dict
    bundle: LoadedPolicy
    decode_seconds: float  # verifying and decoding the weights (part of the setup)


def _receive(content: RecordDict, node_config: Config, run_config: Config,
             runtime: SiteRuntime | None) -> _Received:
    runtime = runtime or SiteRuntime()
    site = runtime.site(node_config, run_config)
    instructions = RoundInstructions.from_record(content.config_records[CONFIG])
    start = time.perf_counter()
    payload = codec.from_content(content, ARRAYS, CODEC)
    weights = codec.decode(payload)  # verifies every digest first
    decoded = time.perf_counter() - start
    stats = stats_from_record(content.array_records[NORM_STATS])
    bundle = runtime.policy(site, instructions, stats)
    load_trainable(bundle.policy, weights)
    return _Received(runtime, site, instructions, payload, weights, bundle, decoded)


def precision(site: Site) -> contextlib.AbstractContextManager:
    """The node's ``precision``: bf16 autocast around local training and evaluation."""
    if site.node.precision == "bf16":
        return torch.autocast(device_type=site.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: What a site's own data can do wrong; anything else is a bug and fails the message loudly.
DATA_ERRORS = (BadDataError, DatasetError)


def _evaluate(
    site: Site, bundle: LoadedPolicy, instructions: RoundInstructions, after_round: int,
    run_id: int,
) -> tuple[dict, dict, dict]:
    """The held-out action MSE (SiteReport fields), what was skipped (SiteNotes fields) and,
    if asked, the trajectory (records)."""
    tally = site.skip_tally("evaluation", site.run.eval_samples)
    dataset = site.eval_dataset(tally)
    with precision(site):
        result = evaluate_action_mse(
            bundle, dataset, site.run.eval_samples, site.run.eval_batch_size, site.run.seed,
            tally=tally,
        )
    report = {"eval_action_mse": result.action_mse, "eval_samples": result.samples,
              "eval_seconds": result.seconds, "skipped_eval_samples": result.skipped}
    notes = {"eval_skipped": result.skipped_summary}
    if not instructions.trajectory:
        return report, notes, {}
    start = time.perf_counter()
    try:  # the plot is for people: a frame that cannot be read costs the plot, not the round
        with precision(site):
            trajectory = predict_trajectory(
                bundle, dataset.dataset, plotted_episode(site.split.eval, site.run.seed),
                site.run.trajectory_frames, site.run.eval_batch_size, site.run.seed,
            )
    except Exception as err:
        log.warning("trajectory_failed", site=site.node.site_name, round=after_round,
                    error=f"{type(err).__name__}: {err}"[:300])
        return report, notes, {}
    if site.node.share_trajectories:
        arrays, info = trajectory.to_records()
        records = {TRAJECTORY: arrays, TRAJECTORY_INFO: info}
    else:
        path = keep_at_site(trajectory, site.run_state_dir(run_id), site.node.site_name,
                            after_round)
        log.info("trajectory_kept", site=site.node.site_name, round=after_round, plot=str(path))
        records = {TRAJECTORY_INFO: ConfigRecord({"kept-at-site": True})}
    report["trajectory_seconds"] = time.perf_counter() - start
    return report, notes, records


def _reply(site: Site, report: dict, notes: dict, update=None,
           extra: dict | None = None) -> RecordDict:
    records = {
        METRICS: SiteReport(**report).to_record(),
        SITE: ConfigRecord({"site-name": site.node.site_name}),
        NOTES: SiteNotes(**notes).to_record(),
        **(extra or {}),
    }
    if update is not None:
        records |= {ARRAYS: update.arrays, CODEC: update.meta}
    return RecordDict(records)


def train(content: RecordDict, node_config: Config, run_config: Config, run_id: int,
          runtime: SiteRuntime | None = None) -> RecordDict:
    start = time.perf_counter()
    got = _receive(content, node_config, run_config, runtime)
    site, bundle, instructions = got.site, got.bundle, got.instructions
    server_round = instructions.server_round
    report: dict = {"num_examples": site.info().train_frames,
                    "setup_seconds": time.perf_counter() - start}
    notes: dict = {}
    extra: dict = {}
    if instructions.evaluate:
        try:
            metrics, more, extra = _evaluate(site, bundle, instructions, server_round - 1, run_id)
            report |= metrics
            notes |= more
        except DATA_ERRORS as err:  # the update does not depend on it: train anyway
            notes["eval_error"] = f"{type(err).__name__}: {err}"
            log.warning("eval_failed", site=site.node.site_name, error=notes["eval_error"])
    site.seed_round(server_round)
    federation = instructions.federation_id or run_id
    moments = site.optimizer_files(federation, server_round)
    tally = site.skip_tally("training", site.run.local_steps * site.run.batch_size)
    control = None
    try:
        control = ControlRound.from_message(content, instructions.control_round,
                                            site.run_state_dir(federation))
        drift = DriftCorrection(
            proximal_step=instructions.proximal_step,  # type: ignore[arg-type]  # checked there
            control=control.correction(list(trainable_parameters(bundle.policy)))
            if control else None,
            control_mode=site.run.scaffold_correction,
        )
        with precision(site):
            result = train_round(
                bundle, site.train_loader(server_round, tally), site.run, server_round,
                instructions.proximal_mu, moments.save, moments.start, tally=tally,
                optimizer=got.runtime.optimizer(bundle, site.run, moments.start, moments.save),
                drift=drift,
            )
        got.runtime.optimizer_saved(moments.save)
        encode_start = time.perf_counter()
        local = trainable_state(bundle.policy)
        update = codec.encode(local, str(got.payload.meta["wire-dtype"]), base=got.weights)
        if control is not None:  # SCAFFOLD: c_i+ kept pending until the server counts it
            delta = control.finish(server_round, got.weights, local, result.lr_sum)
            extra |= {CONTROL: delta.arrays, CONTROL_CODEC: delta.meta}
            report |= {"control_bytes": delta.nbytes,
                       "control_base_round": control.base.round}
        encode_seconds = time.perf_counter() - encode_start
    except Exception as err:
        got.runtime.forget_training()
        if "eval_action_mse" not in report:
            raise  # nothing measured to keep: Flower's error reply carries the reason
        # The evaluation of the global model stands: report it with the reason, no update.
        notes |= {"train_error": f"{type(err).__name__}: {err}",
                  "train_error_kind": "bad-data" if isinstance(err, DATA_ERRORS) else "error"}
        report["skipped_samples"] = tally.skipped
        log.warning("train_failed", site=site.node.site_name, round=server_round,
                    eval_mse=report["eval_action_mse"], error=notes["train_error"])
        return _reply(site, report, notes, extra=extra)
    report |= {
        "train_loss": result.loss_mean, "train_loss_last": result.loss_last,
        "proximal": result.proximal_mean, "steps": result.steps, "samples": result.samples,
        "train_seconds": result.seconds, "payload_bytes": update.nbytes,
        "skipped_samples": result.skipped,
    }
    notes["skipped"] = result.skipped_summary
    # where the handler's time went (bench/overhead.py reads these from the log)
    log.info("trained", site=site.node.site_name, round=server_round,
             loss=round(result.loss_mean, 4), eval_mse=report.get("eval_action_mse"),
             skipped=result.skipped, skipped_eval=report.get("skipped_eval_samples", 0),
             seconds=round(time.perf_counter() - start, 3),
             decode_seconds=round(got.decode_seconds, 4),
             setup_seconds=round(report["setup_seconds"], 4),
             eval_seconds=round(report.get("eval_seconds", 0.0)
                                + report.get("trajectory_seconds", 0.0), 4),
             train_seconds=round(result.seconds, 4), encode_seconds=round(encode_seconds, 4))
    return _reply(site, report, notes, update, extra)


def evaluate(content: RecordDict, node_config: Config, run_config: Config, run_id: int,
             runtime: SiteRuntime | None = None) -> RecordDict:
    start = time.perf_counter()
    got = _receive(content, node_config, run_config, runtime)
    setup = time.perf_counter() - start
    # nothing else to report: a failure is the reply
    metrics, notes, extra = _evaluate(got.site, got.bundle, got.instructions,
                                      got.instructions.server_round, run_id)
    report = {"num_examples": got.site.info().eval_frames, "setup_seconds": setup, **metrics}
    if got.instructions.personalize and got.site.run.personalize_steps > 0:
        federation = got.instructions.federation_id or run_id
        personal = personalize(got.site, got.bundle, federation, precision(got.site))
        got.runtime.forget_training()  # the policy now holds the personalized weights
        report |= {"personal_action_mse": personal.action_mse,
                   "personal_steps": personal.steps, "personal_seconds": personal.seconds}
        log.info("personalized", site=got.site.node.site_name, steps=personal.steps,
                 global_mse=report["eval_action_mse"], personal_mse=personal.action_mse,
                 checkpoint=str(personal.checkpoint))
    log.info("evaluated", site=got.site.node.site_name, eval_mse=report["eval_action_mse"],
             skipped=report["skipped_eval_samples"])
    return _reply(got.site, report, notes, extra=extra)


HANDLERS: dict[str, Handler] = {STATS_QUERY: stats, "train": train, "evaluate": evaluate}


def handle(message_type: str, content: RecordDict, node_config: Config, run_config: Config,
           run_id: int, runtime: SiteRuntime | None = None) -> RecordDict:
    """Run the handler for ``message_type``; a failure drops what a half-done round left."""
    handler = HANDLERS.get(message_type)
    if handler is None:
        raise ValueError(f"unknown message type {message_type!r}; expected one of "
                         f"{sorted(HANDLERS)}")
    runtime = runtime or SiteRuntime()
    try:
        return handler(content, node_config, run_config, run_id, runtime)
    except BaseException:
        runtime.forget_training()
        raise
