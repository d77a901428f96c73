"""What a site does for each server message, whichever process runs it.

- ``query.stats``: describe the dataset (features, episode counts) and send count-level moments
  of the numeric features, so the server can build the policy and exact global norm stats.
- ``train``: load the global trainable weights, optionally evaluate them on the held-out
  episodes, train ``local-steps`` with the FedProx term, and send back the update.
- ``evaluate``: evaluate the global weights only (the final model after the last round).

Nothing else leaves the site: no frames, no per-sample values, no frozen weights.

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
from common.policy_factory import LoadedPolicy, load_trainable, trainable_state
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    METRICS,
    MOMENTS,
    NORM_STATS,
    SITE,
    STATS_QUERY,
    RoundInstructions,
    SiteReport,
)
from supernode.evaluation import evaluate_action_mse
from supernode.local_site import Site
from supernode.runtime import SiteRuntime
from supernode.training import train_round

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


def _receive(content: RecordDict, node_config: Config, run_config: Config,
             runtime: SiteRuntime | None) -> _Received:
    runtime = runtime or SiteRuntime()
    site = runtime.site(node_config, run_config)
    instructions = RoundInstructions.from_record(content.config_records[CONFIG])
    payload = codec.from_content(content, ARRAYS, CODEC)
    weights = codec.decode(payload)  # verifies every digest first
    stats = stats_from_record(content.array_records[NORM_STATS])
    bundle = runtime.policy(site, instructions, stats)
    load_trainable(bundle.policy, weights)
    return _Received(runtime, site, instructions, payload, weights, bundle)


def precision(site: Site) -> contextlib.AbstractContextManager:
    """The node's ``precision``: bf16 autocast around local training and evaluation."""
    if site.node.precision == "bf16":
        return torch.autocast(device_type=site.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _evaluate(site: Site, bundle: LoadedPolicy) -> dict:
    with precision(site):
        result = evaluate_action_mse(
            bundle, site.eval_dataset(), site.run.eval_samples, site.run.eval_batch_size,
            site.run.seed,
        )
    return {"eval_action_mse": result.action_mse, "eval_samples": result.samples,
            "eval_seconds": result.seconds}


def _site_record(site: Site) -> ConfigRecord:
    return ConfigRecord({"site-name": site.node.site_name})


def train(content: RecordDict, node_config: Config, run_config: Config, run_id: int,
          runtime: SiteRuntime | None = None) -> RecordDict:
    start = time.perf_counter()
    got = _receive(content, node_config, run_config, runtime)
    site, bundle, server_round = got.site, got.bundle, got.instructions.server_round
    setup = time.perf_counter() - start
    report: dict = {"num_examples": site.info().train_frames, "setup_seconds": setup}
    if got.instructions.evaluate:
        report |= _evaluate(site, bundle)
    site.seed_round(server_round)
    state_file = site.optimizer_state_file(run_id)
    with precision(site):
        result = train_round(
            bundle, site.train_loader(server_round), site.run, server_round,
            got.instructions.proximal_mu, state_file,
            optimizer=got.runtime.optimizer(bundle, site.run, state_file),
        )
    got.runtime.optimizer_saved(state_file)
    update = codec.encode(
        trainable_state(bundle.policy), str(got.payload.meta["wire-dtype"]), base=got.weights
    )
    report |= {
        "train_loss": result.loss_mean, "train_loss_last": result.loss_last,
        "proximal": result.proximal_mean, "steps": result.steps, "samples": result.samples,
        "train_seconds": result.seconds, "payload_bytes": update.nbytes,
    }
    log.info("trained", site=site.node.site_name, round=server_round,
             loss=round(result.loss_mean, 4), eval_mse=report.get("eval_action_mse"),
             seconds=round(time.perf_counter() - start, 1))
    return RecordDict({
        ARRAYS: update.arrays,
        CODEC: update.meta,
        METRICS: SiteReport(**report).to_record(),
        SITE: _site_record(site),
    })


def evaluate(content: RecordDict, node_config: Config, run_config: Config, run_id: int,
             runtime: SiteRuntime | None = None) -> RecordDict:
    start = time.perf_counter()
    got = _receive(content, node_config, run_config, runtime)
    report = SiteReport(
        num_examples=got.site.info().eval_frames,
        setup_seconds=time.perf_counter() - start,
        **_evaluate(got.site, got.bundle),
    )
    log.info("evaluated", site=got.site.node.site_name, eval_mse=report.eval_action_mse)
    return RecordDict({METRICS: report.to_record(), SITE: _site_record(got.site)})


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
