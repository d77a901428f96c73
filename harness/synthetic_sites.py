"""A ClientApp that answers like zk0's but trains nothing: fast tests of the ServerApp's loop.

Stage 0 (``query.stats``) and the exclusion notice go to zk0's real ClientApp (real datasets on
disk, real features and moments). ``train`` decodes the global weights it received (digests
verified, as a site does) and sends back a small deterministic update (seeded by site and
round) through zk0's codec, with SCAFFOLD's control-variate delta when the message carries
``c``; ``evaluate`` and the train message's evaluation report an "action MSE" computed from
the weights received, so the eval history follows the model, and a trajectory when asked.
Replies hold exactly the records the real ClientApp's hold (report, name, notes, update,
control delta, trajectory). What a real site costs (building SmolVLA, a DataLoader, optimizer
steps) is left out, so a federation of several rounds runs in seconds: tests of round
accounting, faults and resume run on this, and the equivalence of resumed and uninterrupted
runs is checked with the real ClientApp.

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
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    CONTROL,
    CONTROL_CODEC,
    METRICS,
    NOTES,
    SITE,
    TRAJECTORY,
    TRAJECTORY_INFO,
    RoundInstructions,
    SiteNotes,
    SiteReport,
)
from common.trajectory import Trajectory, joint_names, joint_unit

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
        # distinct per site, within any demo site's training (120) and held-out (60) frames
        # (the server bounds each by what the site declared)
        spread = zlib.crc32(site.encode())
        report = {"num_examples": 20 + spread % 50 if kind == "train" else 10 + spread % 30}
        if instructions.evaluate:
            report |= {"eval_action_mse": _mse(weights), "eval_seconds": 0.0,
                       "eval_samples": min(8, int(context.run_config.get("eval-samples", 8)))}
        content = RecordDict({SITE: ConfigRecord({"site-name": site}),
                              NOTES: SiteNotes().to_record()})
        if instructions.evaluate and instructions.trajectory:
            arrays, info = _trajectory(instructions.features, weights).to_records()
            content[TRAJECTORY], content[TRAJECTORY_INFO] = arrays, info
        if kind == "train":
            self.trained.append((site, instructions.server_round))
            rng = np.random.default_rng([zlib.crc32(site.encode()), instructions.server_round])
            wire = str(payload.meta["wire-dtype"])
            local = {}
            for name, w in weights.items():
                step = rng.normal(0.0, UPDATE_STD, w.shape).astype(np.float32) * fault.scale
                local[name] = w + step
            if fault.nonfinite:
                name = next(iter(local))
                local[name].reshape(-1)[:2] = [np.nan, np.inf]
            update = codec.encode(local, wire, base=weights)
            content[ARRAYS] = update.arrays
            content[CODEC] = update.meta
            report |= {"train_loss": 1.0, "steps": 1, "samples": 1,
                       "payload_bytes": update.nbytes}
            if CONTROL in msg.content.array_records:  # SCAFFOLD: a delta of the same layout
                zeros = {k: np.zeros_like(w) for k, w in weights.items()}
                delta = codec.encode({k: rng.normal(0.0, UPDATE_STD, w.shape).astype(np.float32)
                                      for k, w in weights.items()}, wire, base=zeros)
                content[CONTROL], content[CONTROL_CODEC] = delta.arrays, delta.meta
                report |= {"control_bytes": delta.nbytes,
                           "control_base_round": instructions.control_round}
        content[METRICS] = SiteReport(**report).to_record()
        return Message(content, reply_to=msg)


def _trajectory(features: Mapping, weights: Mapping[str, np.ndarray]) -> Trajectory:
    """A few frames of "predicted" and "recorded" actions in the federation's action shape."""
    dims = int(features["action"]["shape"][0])
    names = joint_names(features["action"].get("names"), dims)
    frames = 8
    recorded = np.linspace(0.0, 1.0, frames * dims, dtype=np.float32).reshape(frames, dims)
    return Trajectory(episode=0, fps=30.0, names=names, units=tuple(map(joint_unit, names)),
                      frame_index=np.arange(frames), recorded=recorded,
                      predicted=recorded + np.float32(_mse(weights) % 1.0),
                      chunk_starts=np.arange(0, frames, 4))
