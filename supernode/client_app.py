"""zk0's ClientApp: what runs at a lab, next to its private dataset, for each server message.

- ``query.stats``: describe the dataset (features, episode counts) and send count-level moments
  of the numeric features, so the server can build the policy and exact global norm stats.
- ``train``: load the global trainable weights, optionally evaluate them on the held-out
  episodes, train ``local-steps`` with the FedProx term, and send back the update. Unreadable
  samples are skipped and counted (:mod:`supernode.sample_guard`); if training fails after the
  evaluation succeeded, the reply carries that evaluation and the reason, and no update.
- ``evaluate``: evaluate the global weights only (the final model after the last round).
- ``query.excluded``: the server left this site out at stage 0; log the reason here.

When the server asks for a trajectory (``trajectory-every``), the evaluation also replays the
first ``trajectory-frames`` frames of one held-out episode; their predicted and recorded actions
go back with the reply, or, with ``share-trajectories = false`` in the node config, are plotted
under the site's state dir and only a note says so. Nothing else leaves the site: no frames,
no other per-sample values, no frozen weights. Every reply is signed with the node's key, every
instruction must carry the coordinator's signature (:mod:`supernode.authenticity`).
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from common import codec
from common.logs import get_logger
from common.norm_stats import stats_from_record, to_record
from common.policy_factory import load_trainable, trainable_state
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    METRICS,
    MOMENTS,
    NORM_STATS,
    NOTES,
    NOTICE,
    SITE,
    TRAJECTORY,
    TRAJECTORY_INFO,
    ExclusionNotice,
    RoundInstructions,
    SiteNotes,
    SiteReport,
)
from supernode.authenticity import authenticity_mod
from supernode.evaluation import evaluate_action_mse
from supernode.local_site import Site
from supernode.sample_guard import BadDataError
from supernode.site_dataset import DatasetError
from supernode.training import train_round
from supernode.trajectory import keep_at_site, plotted_episode, predict_trajectory

# Every instruction is checked for the coordinator's signature and every reply signed by this
# node's key (supernode.authenticity).
app = ClientApp(mods=[authenticity_mod])
log = get_logger("zk0.supernode")


@app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    site = Site.open(context.node_config, context.run_config)
    info = site.info()
    log.info("stats", site=info.site_name, train_frames=info.train_frames,
             eval_episodes=info.eval_episodes)
    content = RecordDict({SITE: info.to_record(), MOMENTS: to_record(site.moments())})
    return Message(content, reply_to=msg)


@app.query("excluded")
def excluded(msg: Message, context: Context) -> Message:
    """The server left this site out at stage 0: say why in this site's own log."""
    notice = ExclusionNotice.from_record(msg.content.config_records[NOTICE])
    log.error("excluded_from_federation", site=notice.site_name, reason=notice.reason,
              hint="make this dataset's features match the federation's, then restart the "
                   "SuperNode; the other sites go on without this one")
    return Message(RecordDict(), reply_to=msg)


def _global_policy(site: Site, msg: Message):
    """Rebuild the local policy and load the global weights carried by ``msg``."""
    instructions = RoundInstructions.from_record(msg.content.config_records[CONFIG])
    payload = codec.from_content(msg.content, ARRAYS, CODEC)
    weights = codec.decode(payload)  # verifies every digest first
    stats = stats_from_record(msg.content.array_records[NORM_STATS])
    bundle = site.policy(instructions.features, stats, instructions.fingerprint)
    load_trainable(bundle.policy, weights)
    return instructions, payload, weights, bundle


#: What a site's own data can do wrong; anything else is a bug and fails the message loudly.
DATA_ERRORS = (BadDataError, DatasetError)


def _evaluate(
    site: Site, bundle, instructions: RoundInstructions, after_round: int, run_id: int
) -> tuple[dict, dict, dict]:
    """The held-out action MSE (SiteReport fields), what was skipped (SiteNotes fields) and,
    if asked, the trajectory (records)."""
    tally = site.skip_tally("evaluation", site.run.eval_samples)
    dataset = site.eval_dataset(tally)
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


def _reply(
    msg: Message, site: Site, report: dict, notes: dict, update=None, extra: dict | None = None
) -> Message:
    records = {
        METRICS: SiteReport(**report).to_record(),
        SITE: ConfigRecord({"site-name": site.node.site_name}),
        NOTES: SiteNotes(**notes).to_record(),
        **(extra or {}),
    }
    if update is not None:
        records |= {ARRAYS: update.arrays, CODEC: update.meta}
    return Message(RecordDict(records), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    site = Site.open(context.node_config, context.run_config)
    instructions, payload, weights, bundle = _global_policy(site, msg)
    setup = time.perf_counter() - start
    report: dict = {"num_examples": site.info().train_frames, "setup_seconds": setup}
    notes: dict = {}
    extra: dict = {}
    if instructions.evaluate:
        try:
            metrics, more, extra = _evaluate(site, bundle, instructions,
                                             instructions.server_round - 1, context.run_id)
            report |= metrics
            notes |= more
        except DATA_ERRORS as err:  # the update does not depend on it: train anyway
            notes["eval_error"] = f"{type(err).__name__}: {err}"
            log.warning("eval_failed", site=site.node.site_name, error=notes["eval_error"])
    site.seed_round(instructions.server_round)
    moments = site.optimizer_files(instructions.federation_id or context.run_id,
                                   instructions.server_round)
    tally = site.skip_tally("training", site.run.local_steps * site.run.batch_size)
    try:
        result = train_round(
            bundle, site.train_loader(instructions.server_round, tally), site.run,
            instructions.server_round, instructions.proximal_mu, moments.save, moments.start,
            tally=tally,
        )
        update = codec.encode(
            trainable_state(bundle.policy), str(payload.meta["wire-dtype"]), base=weights
        )
    except Exception as err:
        if "eval_action_mse" not in report:
            raise  # nothing measured to keep: Flower's error reply carries the reason
        # The evaluation of the global model stands: report it with the reason, no update.
        notes |= {"train_error": f"{type(err).__name__}: {err}",
                  "train_error_kind": "bad-data" if isinstance(err, DATA_ERRORS) else "error"}
        report["skipped_samples"] = tally.skipped
        log.warning("train_failed", site=site.node.site_name, round=instructions.server_round,
                    eval_mse=report["eval_action_mse"], error=notes["train_error"])
        return _reply(msg, site, report, notes, extra=extra)
    report |= {
        "train_loss": result.loss_mean, "train_loss_last": result.loss_last,
        "proximal": result.proximal_mean, "steps": result.steps, "samples": result.samples,
        "train_seconds": result.seconds, "payload_bytes": update.nbytes,
        "skipped_samples": result.skipped,
    }
    notes["skipped"] = result.skipped_summary
    log.info("trained", site=site.node.site_name, round=instructions.server_round,
             loss=round(result.loss_mean, 4), eval_mse=report.get("eval_action_mse"),
             skipped=result.skipped, skipped_eval=report.get("skipped_eval_samples", 0),
             seconds=round(time.perf_counter() - start, 1))
    return _reply(msg, site, report, notes, update, extra)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    site = Site.open(context.node_config, context.run_config)
    instructions, _, _, bundle = _global_policy(site, msg)
    setup = time.perf_counter() - start
    # nothing else to report: a failure is the reply
    metrics, notes, extra = _evaluate(site, bundle, instructions, instructions.server_round,
                                      context.run_id)
    report = {"num_examples": site.info().eval_frames, "setup_seconds": setup, **metrics}
    log.info("evaluated", site=site.node.site_name, eval_mse=report["eval_action_mse"],
             skipped=report["skipped_eval_samples"])
    return _reply(msg, site, report, notes, extra=extra)


