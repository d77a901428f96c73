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
# The server tells a site it was left out of the federation, and why (its operator's log shows it).
EXCLUDED_NOTICE = "query.excluded"

# Record keys inside a RecordDict.
ARRAYS = "arrays"  # ArrayRecord: trainable parameters, encoded by common.codec
CODEC = "codec"  # ConfigRecord: the codec's metadata (wire dtype, digests)
CONFIG = "config"  # ConfigRecord: what the server asks for (Flower's own key for it)
METRICS = "metrics"  # MetricRecord: what a site reports
NORM_STATS = "norm-stats"  # ArrayRecord: the federation's normalization statistics
MOMENTS = "moments"  # ArrayRecord: a site's sufficient statistics (stats query reply)
SITE = "site"  # ConfigRecord: the site's self-description
TRAJECTORY = "trajectory"  # ArrayRecord: predicted/recorded actions of one held-out episode
TRAJECTORY_INFO = "trajectory-info"  # ConfigRecord: its episode, joint names, units, fps
NOTICE = "notice"  # ConfigRecord: an ExclusionNotice
NOTES = "notes"  # ConfigRecord: what a site skipped or could not do, in words (SiteNotes)
SIGNATURE = "signature"  # ConfigRecord: the sender's signature over the rest (common.signing)
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
    trajectory: bool = False  # also predict one held-out episode's actions, for the plots
    # The federation this round belongs to: the first run's id, kept when a run is resumed (a
    # resumed run gets a new Flower run id), so sites find their optimizer state again.
    federation_id: str = ""
    # "gradient": the FedProx term's gradient goes into the optimizer (classic FedProx);
    # "decoupled": w -= lr * mu * (w - w_global) after each optimizer step (fedprox-decoupled)
    proximal_step: str = "gradient"
    # SCAFFOLD: the last round whose control-variate delta from this site the server counted
    # (0 = none); the site's control variate from that round is its base for this one
    control_round: int = 0
    # the final evaluate message: also fine-tune the global model on the site's own data for
    # the run's personalize-steps and score that personalized model (supernode.personalization)
    personalize: bool = False

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "server-round": self.server_round,
                "proximal-mu": float(self.proximal_mu),
                "features": json.dumps(self.features, sort_keys=True),
                "fingerprint": self.fingerprint,
                "evaluate": self.evaluate,
                "train": self.train,
                "trajectory": self.trajectory,
                "federation-id": self.federation_id,
                "proximal-step": self.proximal_step,
                "control-round": self.control_round,
                "personalize": self.personalize,
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
            trajectory=bool(record.get("trajectory", False)),
            federation_id=str(record.get("federation-id", "")),
            proximal_step=str(record.get("proximal-step", "gradient")),
            control_round=int(record.get("control-round", 0)),
            personalize=bool(record.get("personalize", False)),
        )


@dataclass(frozen=True)
class ExclusionNotice:
    """Why the server left a site out of the federation (content of an ``EXCLUDED_NOTICE``)."""

    site_name: str
    reason: str

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"site-name": self.site_name, "reason": self.reason})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ExclusionNotice:
        return cls(site_name=str(record["site-name"]), reason=str(record["reason"]))


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
    trajectory_seconds: float = 0.0  # predicting the plotted episode (part of the eval cost)
    setup_seconds: float = 0.0
    payload_bytes: int = 0
    skipped_samples: int = 0  # training samples left out this round: unreadable (SiteNotes)
    skipped_eval_samples: int = 0  # held-out samples left out: unreadable (SiteNotes)
    control_bytes: int = 0  # SCAFFOLD: the control-variate delta sent with the update
    control_base_round: int = 0  # SCAFFOLD: the round of the control variate the delta is from
    # Personalization (final evaluate message): the site's fine-tuned copy of the global model
    personal_action_mse: float = -1.0  # its held-out MSE, same frames as eval_action_mse
    personal_steps: int = 0  # fine-tuning steps on the site's own training episodes
    personal_seconds: float = 0.0

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


@dataclass(frozen=True)
class SiteNotes:
    """What a site skipped or could not do for one message, in words (the counts are in
    :class:`SiteReport`, which a MetricRecord limits to numbers).

    A train reply whose ``train_error`` is set carries no update, only the evaluation of the
    global model the site had already made: that measurement is valid whatever happened to
    training afterwards, so it is reported instead of being lost with the failure.
    """

    skipped: str = ""  # training samples left out: file, episode, frame, key and why
    eval_skipped: str = ""  # held-out samples left out
    train_error: str = ""  # why training failed (then the reply has no update)
    train_error_kind: str = ""  # "bad-data" (too many unreadable samples) | "error"
    eval_error: str = ""  # why evaluation failed (training still ran)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> SiteNotes:
        """The notes in ``record`` (missing record or keys: nothing to note)."""
        if record is None:
            return cls()
        return cls(**{f.name: str(record.get(f.name.replace("_", "-"), "")) for f in fields(cls)})
