"""zk0's ClientApp: what runs at a lab, next to its private dataset, for each server message.

- ``query.stats``: describe the dataset (features, episode counts) and send count-level moments
  of the numeric features, so the server can build the policy and exact global norm stats.
- ``train``: load the global trainable weights, optionally evaluate them on the held-out
  episodes, train ``local-steps`` with the strategy's drift correction (FedProx term, SCAFFOLD
  control variates: :mod:`supernode.control_variates`), and send back the update (and
  SCAFFOLD's control-variate delta).
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
from common.policy_factory import load_trainable, trainable_parameters, trainable_state
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    CONTROL,
    CONTROL_CODEC,
    METRICS,
    MOMENTS,
    NORM_STATS,
    SITE,
    RoundInstructions,
    SiteReport,
)
from supernode.control_variates import ControlRound
from supernode.evaluation import evaluate_action_mse
from supernode.local_site import Site
from supernode.training import DriftCorrection, train_round

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


def _evaluate(site: Site, bundle) -> dict:
    result = evaluate_action_mse(
        bundle, site.eval_dataset(), site.run.eval_samples, site.run.eval_batch_size,
        site.run.seed,
    )
    return {"eval_action_mse": result.action_mse, "eval_samples": result.samples,
            "eval_seconds": result.seconds}


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    site = Site.open(context.node_config, context.run_config)
    instructions, payload, weights, bundle = _global_policy(site, msg)
    setup = time.perf_counter() - start
    report: dict = {"num_examples": site.info().train_frames, "setup_seconds": setup}
    if instructions.evaluate:
        report |= _evaluate(site, bundle)
    site.seed_round(instructions.server_round)
    control = ControlRound.from_message(
        msg.content, instructions.control_round, site.state_folder(context.run_id)
    )
    drift = DriftCorrection(
        proximal_step=instructions.proximal_step,  # type: ignore[arg-type]  # checked there
        control=control.correction(list(trainable_parameters(bundle.policy)))
        if control else None,
        control_mode=site.run.scaffold_correction,
    )
    result = train_round(
        bundle, site.train_loader(instructions.server_round), site.run,
        instructions.server_round, instructions.proximal_mu,
        site.optimizer_state_file(context.run_id), drift,
    )
    local = trainable_state(bundle.policy)
    update = codec.encode(local, str(payload.meta["wire-dtype"]), base=weights)
    report |= {
        "train_loss": result.loss_mean, "train_loss_last": result.loss_last,
        "proximal": result.proximal_mean, "steps": result.steps, "samples": result.samples,
        "train_seconds": result.seconds, "payload_bytes": update.nbytes,
    }
    extra = {}
    if control is not None:
        delta = control.finish(instructions.server_round, weights, local, result.lr_sum)
        extra = {CONTROL: delta.arrays, CONTROL_CODEC: delta.meta}
        report |= {"control_bytes": delta.nbytes, "control_base_round": control.base.round}
    log.info("trained", site=site.node.site_name, round=instructions.server_round,
             loss=round(result.loss_mean, 4), eval_mse=report.get("eval_action_mse"),
             seconds=round(time.perf_counter() - start, 1))
    content = RecordDict(
        {
            ARRAYS: update.arrays,
            CODEC: update.meta,
            METRICS: SiteReport(**report).to_record(),
            SITE: ConfigRecord({"site-name": site.node.site_name}),
            **extra,
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    site = Site.open(context.node_config, context.run_config)
    _, _, _, bundle = _global_policy(site, msg)
    report = SiteReport(
        num_examples=site.info().eval_frames,
        setup_seconds=time.perf_counter() - start,
        **_evaluate(site, bundle),
    )
    log.info("evaluated", site=site.node.site_name, eval_mse=report.eval_action_mse)
    content = RecordDict(
        {METRICS: report.to_record(), SITE: ConfigRecord({"site-name": site.node.site_name})}
    )
    return Message(content, reply_to=msg)


