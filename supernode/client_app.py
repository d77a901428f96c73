"""zk0's ClientApp: what runs at a lab, next to its private dataset, for each server message.

- ``query.stats``: describe the dataset (features, episode counts) and send count-level moments
  of the numeric features, so the server can build the policy and exact global norm stats.
- ``train``: load the global trainable weights, optionally evaluate them on the held-out
  episodes, train ``local-steps`` with the FedProx term, and send back the update. Unreadable
  samples are skipped and counted (:mod:`supernode.sample_guard`); if training fails after the
  evaluation succeeded, the reply carries that evaluation and the reason, and no update.
- ``evaluate``: evaluate the global weights only (the final model after the last round).

Nothing else leaves the site: no frames, no per-sample values, no frozen weights.
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
    SITE,
    RoundInstructions,
    SiteNotes,
    SiteReport,
)
from supernode.evaluation import evaluate_action_mse
from supernode.local_site import Site
from supernode.sample_guard import BadDataError
from supernode.site_dataset import DatasetError
from supernode.training import train_round

app = ClientApp()
log = get_logger("zk0.supernode")


@app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    site = Site.open(context.node_config, context.run_config)
    info = site.info()
    log.info("stats", site=info.site_name, train_frames=info.train_frames,
             eval_episodes=info.eval_episodes)
    content = RecordDict({SITE: info.to_record(), MOMENTS: to_record(site.moments())})
    return Message(content, reply_to=msg)


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


def _evaluate(site: Site, bundle) -> tuple[dict, dict]:
    """(SiteReport fields, SiteNotes fields) of the held-out evaluation."""
    tally = site.skip_tally("evaluation", site.run.eval_samples)
    result = evaluate_action_mse(
        bundle, site.eval_dataset(tally), site.run.eval_samples, site.run.eval_batch_size,
        site.run.seed, tally=tally,
    )
    return (
        {"eval_action_mse": result.action_mse, "eval_samples": result.samples,
         "eval_seconds": result.seconds, "skipped_eval_samples": result.skipped},
        {"eval_skipped": result.skipped_summary},
    )


def _reply(msg: Message, site: Site, report: dict, notes: dict, update=None) -> Message:
    records = {
        METRICS: SiteReport(**report).to_record(),
        SITE: ConfigRecord({"site-name": site.node.site_name}),
        NOTES: SiteNotes(**notes).to_record(),
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
    if instructions.evaluate:
        try:
            metrics, more = _evaluate(site, bundle)
            report |= metrics
            notes |= more
        except DATA_ERRORS as err:  # the update does not depend on it: train anyway
            notes["eval_error"] = f"{type(err).__name__}: {err}"
            log.warning("eval_failed", site=site.node.site_name, error=notes["eval_error"])
    site.seed_round(instructions.server_round)
    tally = site.skip_tally("training", site.run.local_steps * site.run.batch_size)
    try:
        result = train_round(
            bundle, site.train_loader(instructions.server_round, tally), site.run,
            instructions.server_round, instructions.proximal_mu,
            site.optimizer_state_file(context.run_id), tally=tally,
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
        return _reply(msg, site, report, notes)
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
    return _reply(msg, site, report, notes, update)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    site = Site.open(context.node_config, context.run_config)
    _, _, _, bundle = _global_policy(site, msg)
    metrics, notes = _evaluate(site, bundle)  # nothing else to report: a failure is the reply
    report = {"num_examples": site.info().eval_frames,
              "setup_seconds": time.perf_counter() - start, **metrics}
    log.info("evaluated", site=site.node.site_name, eval_mse=report["eval_action_mse"],
             skipped=report["skipped_eval_samples"])
    return _reply(msg, site, report, notes)
