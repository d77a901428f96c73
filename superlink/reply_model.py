"""Every value a site sends the coordinator, parsed through one validating model before use.

A site's reply is input from another machine: buggy, misconfigured or hostile, it must never
stop or steer the federation. So the coordinator reads a reply only through these pydantic
models (strict, as the run config is, :mod:`common.settings`), after its signature checked out
(:mod:`superlink.authenticity`) and before anything (aggregation, reports, metrics, logs) uses
a value of it:

- :class:`StatsReply` (stage 0): the site's self-description (:class:`~common.protocol.SiteInfo`:
  features, fps, episode and frame counts) and its moments, which must be statistics of exactly
  the frames it declared with those features (:func:`common.norm_stats.check`);
- :class:`SiteReply` (train and evaluate): its report (:class:`~common.protocol.SiteReport`),
  notes, claimed name, codec records, SCAFFOLD's control delta, trajectory, each record of its
  Flower kind, every key present, typed and in range, no record or key the protocol does not
  have, and the records that belong together present together.

Whatever is wrong raises :class:`ReplyRejected` of kind
``"malformed"``, naming the record and the key, what was expected and what came; the caller
makes that the site's failure for the round (or its exclusion at stage 0) and the federation
goes on. The arrays of an update and of a control delta are the codec's to check against the
global model (digests, names, shapes, dtype, finite values: :mod:`superlink.strategy.codec_fedavg`).

A new record key is a field of the record's model (one line); a new record a field here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Self

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from common import norm_stats
from common.codec import CodecMeta, Payload
from common.norm_stats import Moments
from common.protocol import SIGNATURE, SiteClaim, SiteInfo, SiteNotes, SiteReport
from common.records import RecordError, RecordModel, check_record_type, describe
from common.trajectory import KeptAtSite, Trajectory, TrajectoryInfo

TRAIN, EVALUATE = "train", "evaluate"
MALFORMED = "malformed"
KEPT_AT_SITE = "kept at the site (share-trajectories = false)"


class ReplyRejected(ValueError):
    """A reply that arrived but cannot be used; ``kind`` says which check refused it (one of
    :data:`superlink.strategy.replies.FAILURE_KINDS`, or a signature refusal's)."""

    def __init__(self, kind: str, reason: str, report: SiteReport | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.report = report


def _record(kind: type):
    """A field holding one Flower record of ``kind`` (a ConfigRecord is not a MetricRecord)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        check_record_type(value, kind, str(info.field_name).replace("_", "-"))
        return value if kind is ArrayRecord else dict(value)

    return BeforeValidator(check)


@dataclass(frozen=True)
class Expected:
    """What the coordinator asked of the site, which bounds what its reply may hold."""

    kind: str  # TRAIN or EVALUATE
    server_round: int = 0
    control: bool = False  # SCAFFOLD: a train update comes with its control-variate delta
    trajectory_frames: int = 0  # the most frames a trajectory may have
    action_dims: int = 0  # the federation's action size
    # SiteReport field -> the largest value the instruction allows (e.g. steps <= local-steps)
    limits: Mapping[str, int] = field(default_factory=dict)


class _Reply(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", arbitrary_types_allowed=True, populate_by_name=True,
        alias_generator=lambda name: name.replace("_", "-"),
    )

    @classmethod
    def parse(cls, msg: Message, what: str, **context: Any) -> Self:
        """The reply's content as this model, or :class:`ReplyRejected` (``malformed``)."""
        try:
            return cls.model_validate(dict(msg.content.items()),
                                      context={"complete": True, **context})
        except ValidationError as err:
            raise ReplyRejected(MALFORMED, describe(err, what)) from None


class SiteReply(_Reply):
    """A train or evaluate reply (see the module docstring)."""

    metrics: Annotated[SiteReport, _record(MetricRecord)]
    notes: Annotated[SiteNotes, _record(ConfigRecord)] = SiteNotes()
    site: Annotated[SiteClaim | None, _record(ConfigRecord)] = None
    signature: Annotated[dict[str, Any] | None, _record(ConfigRecord)] = None  # the guard's
    arrays: Annotated[ArrayRecord | None, _record(ArrayRecord)] = None
    codec: Annotated[CodecMeta | None, _record(ConfigRecord)] = None
    control: Annotated[ArrayRecord | None, _record(ArrayRecord)] = None
    control_codec: Annotated[CodecMeta | None, _record(ConfigRecord)] = None
    trajectory: Annotated[ArrayRecord | None, _record(ArrayRecord)] = None
    trajectory_info: Annotated[TrajectoryInfo | KeptAtSite | None, _record(ConfigRecord)] = None

    _trajectory: Trajectory | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fits_the_instruction(self, info: ValidationInfo) -> Self:
        expected: Expected = info.context["expected"]
        for names in (("arrays", "codec"), ("control", "control-codec")):
            there = [n for n in names if getattr(self, n.replace("-", "_")) is not None]
            if len(there) == 1:
                raise ValueError(f"records {names[0]!r} and {names[1]!r} come together; only "
                                 f"{there[0]!r} is there")
        failed = bool(self.notes.train_error)
        update = expected.kind == TRAIN and not failed
        if update and self.arrays is None:
            raise ValueError("a train reply without an update ('arrays') and without a "
                             "'train-error' note")
        if not update and self.arrays is not None:
            raise ValueError(f"an update ('arrays') in a {expected.kind} reply"
                             + (" whose training failed" if failed else ""))
        if expected.kind == EVALUATE and failed:
            raise ValueError("a 'train-error' note in an evaluate reply")
        wants_control = update and expected.control
        if wants_control != (self.control is not None):
            raise ValueError("SCAFFOLD's control-variate delta ('control') is "
                             + ("missing" if wants_control else "not asked for"))
        for name, limit in expected.limits.items():
            if getattr(self.metrics, name) > limit:
                raise ValueError(f"record 'metrics' key '{name.replace('_', '-')}': "
                                 f"{getattr(self.metrics, name)} exceeds {limit}, what the "
                                 "instruction allows")
        base = self.metrics.control_base_round
        if wants_control and base >= expected.server_round:
            raise ValueError(f"record 'metrics' key 'control-base-round': {base}, not an "
                             f"earlier round than {expected.server_round}")
        self._trajectory = self._read_trajectory(expected)
        return self

    def _read_trajectory(self, expected: Expected) -> Trajectory | None:
        if isinstance(self.trajectory_info, KeptAtSite) or self.trajectory_info is None:
            if self.trajectory is not None:
                raise ValueError("record 'trajectory' without its 'trajectory-info'")
            return None
        if self.trajectory is None:
            raise ValueError("record 'trajectory-info' without its 'trajectory' arrays")
        return Trajectory.from_records(self.trajectory, self.trajectory_info,
                                       expected.trajectory_frames, expected.action_dims)

    @property
    def update(self) -> Payload | None:
        return None if self.arrays is None else Payload(self.arrays, self.codec.to_record())

    @property
    def control_delta(self) -> Payload | None:
        if self.control is None:
            return None
        return Payload(self.control, self.control_codec.to_record())

    @property
    def plotted(self) -> tuple[Trajectory | None, str]:
        """The trajectory the site sent, or why there is none although it computed one."""
        if isinstance(self.trajectory_info, KeptAtSite):
            return None, KEPT_AT_SITE
        return self._trajectory, ""


class StatsReply(_Reply):
    """A stage-0 reply: the site's self-description and its moments (module docstring)."""

    site: Annotated[SiteInfo, _record(ConfigRecord)]
    moments: Annotated[dict[str, Moments], BeforeValidator(norm_stats.from_record)]
    signature: Annotated[dict[str, Any] | None, _record(ConfigRecord)] = None  # the guard's

    @model_validator(mode="after")
    def _statistics_of_the_declared_frames(self) -> Self:
        norm_stats.check(self.moments, self.site.features, self.site.train_frames)
        return self


class SignatureClaims(RecordModel):
    """What :func:`common.signing.verify` reads from a reply's signature record, typed before
    it reads it (an ``int(inf)`` there would raise ``OverflowError``). The record's format is
    :mod:`common.signing`'s: keys this model does not know pass (the signature covers the
    statement, not this record)."""

    model_config = ConfigDict(extra="ignore")

    scheme: str = Field(max_length=100)
    run_id: int
    round: int
    node_id: int
    site: str = Field(max_length=200)
    signature: bytes = Field(max_length=1024)


def check_signature_record(content: RecordDict) -> None:
    """:class:`ReplyRejected` (``signature``) unless the signature record, if any, is typed as
    :class:`SignatureClaims` says (a missing one is :func:`common.signing.verify`'s to refuse)."""
    if SIGNATURE not in content:
        return
    try:
        SignatureClaims.from_record(content[SIGNATURE], SIGNATURE)
    except RecordError as err:
        raise ReplyRejected("signature", f"malformed signature record: {err}") from None


def parse_reply(msg: Message, expected: Expected) -> SiteReply:
    return SiteReply.parse(msg, f"{expected.kind} reply", expected=expected)


def parse_stats(msg: Message) -> StatsReply:
    return StatsReply.parse(msg, "stats reply")
