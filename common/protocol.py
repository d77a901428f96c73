"""The messages zk0's ServerApp and ClientApp exchange, and the record keys inside them.

One module for both sides so the two ends of every key are the same constant. Flower carries
the records; these dataclasses give their contents types and one place to (de)serialize them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from flwr.app import ConfigRecord, MetricRecord

# Message types (Flower routes "<category>.<action>" to @app.<category>("<action>")).
STATS_QUERY = "query.stats"

# Record keys inside a RecordDict.
ARRAYS = "arrays"  # ArrayRecord: trainable parameters, encoded by common.codec
CODEC = "codec"  # ConfigRecord: the codec's metadata (wire dtype, digests)
CONFIG = "config"  # ConfigRecord: what the server asks for (Flower's own key for it)
METRICS = "metrics"  # MetricRecord: what a site reports
NORM_STATS = "norm-stats"  # ArrayRecord: the federation's normalization statistics
MOMENTS = "moments"  # ArrayRecord: a site's sufficient statistics (stats query reply)
SITE = "site"  # ConfigRecord: the site's self-description
# SCAFFOLD (superlink/strategy/scaffold.py, supernode/control_variates.py): the server's control
# variate c on the way down, a site's control-variate delta on the way up, in common.codec form.
CONTROL = "control"  # ArrayRecord
CONTROL_CODEC = "control-codec"  # ConfigRecord: the codec's metadata of CONTROL


@dataclass(frozen=True)
class SiteInfo:
    """A site's self-description: who it is and what data shape it offers (never the data)."""

    site_name: str
    features: dict[str, Any]  # common.datasets.feature_spec of its dataset
    train_episodes: int
    eval_episodes: int
    train_frames: int
    eval_frames: int
    device: str

    def to_record(self) -> ConfigRecord:
        values = asdict(self)
        values["features"] = json.dumps(self.features, sort_keys=True)
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> SiteInfo:
        values = {f.name: record[f.name] for f in fields(cls)}
        values["features"] = json.loads(str(values["features"]))
        return cls(**values)


@dataclass(frozen=True)
class RoundInstructions:
    """What the server asks a site to do this round (the train message's ConfigRecord)."""

    server_round: int
    proximal_mu: float
    features: dict[str, Any]
    fingerprint: str  # SHA-256 of the frozen backbone the server built
    evaluate: bool  # evaluate the received global model before training
    train: bool = True
    # "gradient": the FedProx term's gradient goes into the optimizer (classic FedProx);
    # "decoupled": w -= lr * mu * (w - w_global) after each optimizer step (fedprox-decoupled)
    proximal_step: str = "gradient"
    # SCAFFOLD: the last round whose control-variate delta from this site the server counted
    # (0 = none); the site's control variate from that round is its base for this one
    control_round: int = 0

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "server-round": self.server_round,
                "proximal-mu": float(self.proximal_mu),
                "features": json.dumps(self.features, sort_keys=True),
                "fingerprint": self.fingerprint,
                "evaluate": self.evaluate,
                "train": self.train,
                "proximal-step": self.proximal_step,
                "control-round": self.control_round,
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundInstructions:
        return cls(
            server_round=int(record["server-round"]),
            proximal_mu=float(record.get("proximal-mu", 0.0)),
            features=json.loads(str(record["features"])),
            fingerprint=str(record["fingerprint"]),
            evaluate=bool(record["evaluate"]),
            train=bool(record.get("train", True)),
            proximal_step=str(record.get("proximal-step", "gradient")),
            control_round=int(record.get("control-round", 0)),
        )


@dataclass(frozen=True)
class SiteReport:
    """What a site reports for one message (MetricRecord: numbers only; -1 = not measured)."""

    num_examples: int  # train frames: FedAvg's weight
    train_loss: float = -1.0
    train_loss_last: float = -1.0
    proximal: float = -1.0
    steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    eval_action_mse: float = -1.0
    eval_samples: int = 0
    eval_seconds: float = 0.0
    setup_seconds: float = 0.0
    payload_bytes: int = 0
    control_bytes: int = 0  # SCAFFOLD: the control-variate delta sent with the update
    control_base_round: int = 0  # SCAFFOLD: the round of the control variate the delta is from

    def to_record(self) -> MetricRecord:
        return MetricRecord({f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_record(cls, record: MetricRecord) -> SiteReport:
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in record:
                values[f.name] = int(record[key]) if f.type == "int" else float(record[key])
        return cls(**values)
