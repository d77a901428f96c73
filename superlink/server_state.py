"""What the ServerApp needs to continue a run after round ``r``, saved with round ``r``'s
checkpoint.

The LeRobot checkpoint holds the policy as float32, which is not enough to resume exactly:
Flower's server optimizers keep float64 weights and their own state (FedAvgM's momentum,
FedAdam's ``m_t``/``v_t``) between rounds. ``zk0_server_state.safetensors`` holds, under
prefixes:

- ``weights/<param>``: the global trainable weights as the next round would send them;
- ``strategy/<attribute>/<key>``: the strategy's state (:mod:`superlink.strategy.state`);
- ``stats/<feature>/<stat>``: the federation's normalization stats from stage 0;

and in its metadata the round, the strategy name and the layout of the strategy's state. It is
written inside the checkpoint's temporary folder, so a checkpoint either has it (the round is
complete) or does not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from common import atomic
from superlink.strategy.state import Layout

STATE_FILE = "zk0_server_state.safetensors"
FORMAT = "zk0-server-state/1"


@dataclass(frozen=True)
class ServerState:
    server_round: int
    strategy_name: str
    weights: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    layout: Layout
    stats: dict[str, dict[str, np.ndarray]]


def write(path: Path, state: ServerState) -> None:
    tensors: dict[str, np.ndarray] = {}
    for name, value in state.weights.items():
        tensors[f"weights/{name}"] = np.ascontiguousarray(value)
    for name, value in state.strategy.items():
        tensors[f"strategy/{name}"] = np.ascontiguousarray(value)
    for feature, stats in state.stats.items():
        for stat, value in stats.items():
            tensors[f"stats/{feature}/{stat}"] = np.ascontiguousarray(np.asarray(value))
    metadata = {
        "format": FORMAT,
        "round": str(state.server_round),
        "strategy": state.strategy_name,
        "layout": json.dumps(state.layout),
        "weights": json.dumps(list(state.weights)),  # parameter order
    }
    atomic.write_bytes(path, save(tensors, metadata=metadata))


def read(path: Path) -> ServerState:
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a zk0 server state (format {metadata.get('format')!r})")
    tensors = load(data)
    weights = {name: tensors[f"weights/{name}"] for name in json.loads(metadata["weights"])}
    strategy = {k.removeprefix("strategy/"): v for k, v in tensors.items()
                if k.startswith("strategy/")}
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.startswith("stats/"):
            feature, stat = key.removeprefix("stats/").rsplit("/", 1)
            stats.setdefault(feature, {})[stat] = value
    return ServerState(
        server_round=int(metadata["round"]),
        strategy_name=metadata["strategy"],
        weights=weights,
        strategy=strategy,
        layout=json.loads(metadata["layout"]),
        stats=stats,
    )

