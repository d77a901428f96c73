"""The messages zk0's ServerApp and ClientApp exchange, and the record keys inside them.

One module for both sides so the two ends of every key are the same constant. Flower carries
the records; these classes give their contents types and one place to (de)serialize them. What
a site sends is a :class:`~common.records.RecordModel` (strict: every key typed and bounded,
refused by name otherwise); what the coordinator sends is built by the coordinator itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from flwr.app import ConfigRecord, MetricRecord
from pydantic import AfterValidator, BeforeValidator, Field

from common import features as feat
from common.records import (
    Count,
    Finite,
    Measured,
    Name,
    Positive,
    RecordModel,
    Seconds,
    Text,
    parse_json,
)

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


class SiteInfo(RecordModel):
    """A site's self-description (its stage-0 reply): who it is and what data shape it offers
    (never the data). ``train_frames`` are the frames of the training episodes it can read: its
    statistics count exactly those, and they bound its aggregation weight."""

    record_name: ClassVar[str] = "site"

    site_name: Name
    features: Annotated[dict[str, Any], BeforeValidator(parse_json),
                        AfterValidator(feat.checked_spec)]  # common.features.feature_spec
    train_episodes: Positive
    eval_episodes: Positive
    train_frames: Positive
    eval_frames: Positive
    fps: float = Field(gt=0.0, le=1000.0)  # the dataset's frame rate (part of the agreement)
    device: str = Field(min_length=1, max_length=64)

    def to_record(self) -> ConfigRecord:
        values = self.model_dump(by_alias=True)
        values["features"] = json.dumps(self.features, sort_keys=True)
        return ConfigRecord(values)


class SiteClaim(RecordModel):
    """The name a site writes into its train/evaluate replies (checked against the name the
    coordinator registered for its key, :mod:`superlink.authenticity`)."""

    record_name: ClassVar[str] = "site"

    site_name: Name


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


class SiteReport(RecordModel):
    """What a site reports for one message (a MetricRecord: numbers only; -1 = not measured).

    One field per key, its bounds in its type (:mod:`common.records`); a new key is one line.
    """

    record_type: ClassVar[type] = MetricRecord
    record_name: ClassVar[str] = "metrics"

    num_examples: Count  # train frames: FedAvg's weight (bounded by the declared frames)
    train_loss: Finite = -1.0
    train_loss_last: Finite = -1.0
    proximal: Measured = -1.0
    steps: Count = 0
    samples: Count = 0
    train_seconds: Seconds = 0.0
    eval_action_mse: Measured = -1.0
    eval_samples: Count = 0
    eval_seconds: Seconds = 0.0
    trajectory_seconds: Seconds = 0.0  # predicting the plotted episode (part of the eval cost)
    setup_seconds: Seconds = 0.0
    payload_bytes: Count = 0
    skipped_samples: Count = 0  # training samples left out this round: unreadable (SiteNotes)
    skipped_eval_samples: Count = 0  # held-out samples left out: unreadable (SiteNotes)
    control_bytes: Count = 0  # SCAFFOLD: the control-variate delta sent with the update
    control_base_round: Count = 0  # SCAFFOLD: the round of the control variate the delta is from
    # Personalization (final evaluate message): the site's fine-tuned copy of the global model
    personal_action_mse: Measured = -1.0  # its held-out MSE, same frames as eval_action_mse
    personal_steps: Count = 0  # fine-tuning steps on the site's own training episodes
    personal_seconds: Seconds = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


class SiteNotes(RecordModel):
    """What a site skipped or could not do for one message, in words (the counts are in
    :class:`SiteReport`, which a MetricRecord limits to numbers).

    A train reply whose ``train_error`` is set carries no update, only the evaluation of the
    global model the site had already made: that measurement is valid whatever happened to
    training afterwards, so it is reported instead of being lost with the failure.
    """

    record_name: ClassVar[str] = "notes"

    skipped: Text = ""  # training samples left out: file, episode, frame, key and why
    eval_skipped: Text = ""  # held-out samples left out
    train_error: Text = ""  # why training failed (then the reply has no update)
    train_error_kind: Literal["", "bad-data", "error"] = ""  # a failure kind (superlink)
    eval_error: Text = ""  # why evaluation failed (training still ran)

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in type(self).model_fields)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()
