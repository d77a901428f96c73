"""A ClientApp that answers like zk0's but trains nothing: fast tests of the ServerApp's loop.

Stage 0 (``query.stats``) and the exclusion notice go to zk0's real ClientApp (real datasets on
disk, real features and moments). ``train`` decodes the global weights it received (digests
verified, as a site does) and sends back a small deterministic update (seeded by site and
round) through zk0's codec; ``evaluate`` and the train message's evaluation report an "action
MSE" computed from the weights received, so the eval history follows the model. What a real
site costs (building SmolVLA, a DataLoader, optimizer steps) is left out, so a federation of
several rounds runs in seconds: tests of round accounting, faults and resume run on this, and
the equivalence of resumed and uninterrupted runs is checked with the real ClientApp.

Instructions are verified and replies signed as zk0's ClientApp does
(:mod:`supernode.authenticity`). Faults are per site name (:class:`Fault`): an update with
NaN/Inf (and a valid digest), an update ``scale`` times larger than the others', or an error
raised in given rounds.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from common import codec
from common.protocol import ARRAYS, CODEC, CONFIG, METRICS, SITE, RoundInstructions, SiteReport

UPDATE_STD = 1e-3


@dataclass(frozen=True)
class Fault:
    nonfinite: bool = False  # NaN and Inf in the update, with a valid digest
    scale: float = 1.0  # the update times this
    fail_rounds: tuple[int, ...] = ()  # rounds in which the ClientApp raises
    fail_always: bool = False


def _mse(weights: Mapping[str, np.ndarray]) -> float:
    """A stand-in for a held-out MSE: a smooth function of the weights received."""
    return float(sum(np.square(v, dtype=np.float64).sum() for v in weights.values()))


class SyntheticSites:
    """Callable as a ClientApp: ``SyntheticSites(faults={"site-1": Fault(nonfinite=True)})``."""

    def __init__(self, faults: Mapping[str, Fault] | None = None) -> None:
        from supernode.client_app import app

        self.real = app
        self.faults = dict(faults or {})
        self.trained: list[tuple[str, int]] = []  # (site, round) of every train message

    def __call__(self, msg: Message, context) -> Message:
        if msg.metadata.message_type.startswith("query."):
            return self.real(msg, context)
        from common.packing import packing_mod
        from supernode.authenticity import authenticity_mod

        # packed and signed both ways, as zk0's ClientApp is: the server's checks see a real site
        return packing_mod(msg, context,
                           lambda m, c: authenticity_mod(m, c, self._answer))

    def _answer(self, msg: Message, context) -> Message:
        kind = msg.metadata.message_type
        site = str(context.node_config["site-name"])
        instructions = RoundInstructions.from_record(msg.content.config_records[CONFIG])
        fault = self.faults.get(site, Fault())
        if fault.fail_always or instructions.server_round in fault.fail_rounds:
            raise RuntimeError(f"{site}: injected failure in round {instructions.server_round}")
        payload = codec.from_content(msg.content, ARRAYS, CODEC)
        weights = codec.decode(payload)
        # distinct per site, within any demo site's training frames (the server bounds it)
        report = {"num_examples": 20 + zlib.crc32(site.encode()) % 50}
        if instructions.evaluate:
            report |= {"eval_action_mse": _mse(weights), "eval_samples": 8, "eval_seconds": 0.0}
        content = RecordDict({SITE: ConfigRecord({"site-name": site})})
        if kind == "train":
            self.trained.append((site, instructions.server_round))
            rng = np.random.default_rng([zlib.crc32(site.encode()), instructions.server_round])
            local = {}
            for name, w in weights.items():
                step = rng.normal(0.0, UPDATE_STD, w.shape).astype(np.float32) * fault.scale
                local[name] = w + step
            if fault.nonfinite:
                name = next(iter(local))
                local[name].reshape(-1)[:2] = [np.nan, np.inf]
            update = codec.encode(local, str(payload.meta["wire-dtype"]), base=weights)
            content[ARRAYS] = update.arrays
            content[CODEC] = update.meta
            report |= {"train_loss": 1.0, "steps": 1, "samples": 1,
                       "payload_bytes": update.nbytes}
        content[METRICS] = SiteReport(**report).to_record()
        return Message(content, reply_to=msg)
