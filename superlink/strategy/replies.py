"""What came back from the sites in one exchange, as the strategy judged it.

A reply is either accepted (its report, its checked payload) or a :class:`Failure` with a kind
and a reason. Reports and failures are keyed by the site's name, which the strategy resolves
from the node the message was sent to, never from what the reply claims about itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.codec import Payload
from common.protocol import SiteNotes, SiteReport
from common.trajectory import Trajectory
from superlink.reply_model import ReplyRejected

__all__ = ["FAILURE_KINDS", "AcceptedReply", "Failure", "ReplyRejected", "RoundReplies"]


@dataclass(frozen=True)
class Failure:
    """A site that did not contribute to a round, and why."""

    node_id: int
    site: str
    kind: str  # one of FAILURE_KINDS
    reason: str
    # What the site still measured (its evaluation of the global model) when only its training
    # or its update failed; None when nothing usable came back.
    report: SiteReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "site": self.site, "kind": self.kind,
                "reason": self.reason,
                "report": None if self.report is None else self.report.to_json()}


#: Why a site did not contribute (``Failure.kind``), counted per site in the run's reports.
FAILURE_KINDS = {
    "error": "the site replied with an error (its ClientApp raised, or its node went offline)",
    "timeout": "no reply within round-timeout (or the message expired with the round)",
    "upload": "the reply's upload stopped for upload-stall-timeout, or was not complete at the "
              "round's deadline (site revoked, crashed or cut off mid-upload)",
    "offline": "not connected when the round started (after waiting up to join-timeout)",
    "integrity": "digest, encoding, names, shapes or dtype do not match the global model",
    "malformed": "a record or value the protocol does not have, of the wrong type, non-finite "
                 "or out of range (superlink.reply_model)",
    "nonfinite": "the update holds NaN or Inf values",
    "norm": "the update's (or control delta's) L2 norm exceeds max-update-norm-ratio x the "
            "round's median (with fewer than 3 updates: the others' and earlier rounds')",
    "stale": "the reply answers a message of an earlier round",
    "excluded": "left out at stage 0 (features or statistics refused)",
    "bad-data": "the site's own data failed it (past max-bad-sample-share unreadable samples)",
}


@dataclass(frozen=True)
class AcceptedReply:
    """A reply that passed every check: what the site reported and the update it sent."""

    node_id: int
    site: str
    report: SiteReport
    payload: Payload | None = None  # None for evaluation replies (no arrays)
    trajectory: Trajectory | None = None  # the held-out episode the site shared, if asked
    trajectory_note: str = ""  # why there is none although the site computed one
    update_norm: float | None = None  # L2 norm of the update (train replies)
    control_norm: float | None = None  # SCAFFOLD: L2 norm of the control-variate delta
    notes: SiteNotes = field(default_factory=SiteNotes)  # what the site skipped, in words
    control: Payload | None = None  # SCAFFOLD: the site's control-variate delta, checked alike


@dataclass
class RoundReplies:
    """Every reply of one exchange: accepted per site, failures, uplink bytes per site."""

    accepted: list[AcceptedReply] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def measured(self) -> dict[str, SiteReport]:
        """Every readable report, accepted or not (the eval numbers of the round): also sites
        whose update was refused (say, not finite) or whose training failed after they had
        evaluated the global model (the measurement stands). Never a report that did not parse
        or whose signature or weight was refused."""
        kept = {f.site: f.report for f in self.failures if f.report is not None}
        return {**kept, **self.reports}

    @property
    def reports(self) -> dict[str, SiteReport]:
        return {r.site: r.report for r in self.accepted}

    @property
    def trajectories(self) -> dict[str, Trajectory]:
        return {r.site: r.trajectory for r in self.accepted if r.trajectory is not None}

    @property
    def trajectory_notes(self) -> dict[str, str]:
        return {r.site: r.trajectory_note for r in self.accepted if r.trajectory_note}

    @property
    def eval_failures(self) -> list[Failure]:
        """Sites whose update was accepted but whose evaluation failed (their own data)."""
        return [Failure(r.node_id, r.site, "bad-data", r.notes.eval_error)
                for r in self.accepted if r.notes.eval_error]

    @property
    def notes(self) -> dict[str, dict[str, Any]]:
        """What each accepted site skipped or could not do, in words (non-empty notes only)."""
        return {r.site: r.notes.to_json() for r in self.accepted if r.notes}

    @property
    def uplink_bytes(self) -> dict[str, int]:
        return {
            r.site: r.payload.nbytes + (r.control.nbytes if r.control is not None else 0)
            for r in self.accepted
            if r.payload is not None
        }
