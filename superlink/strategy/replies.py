"""What came back from the sites in one exchange, as the strategy judged it.

A reply is either accepted (its report, its checked payload) or a :class:`Failure` with a kind
and a reason. Reports and failures are keyed by the site's name, which the strategy resolves
from the node the message was sent to, never from what the reply claims about itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.codec import Payload
from common.protocol import SiteReport


@dataclass(frozen=True)
class Failure:
    """A site that did not contribute to a round, and why."""

    node_id: int
    site: str
    kind: str  # "error" | "integrity" | "timeout"
    reason: str


class ReplyRejected(ValueError):
    """A reply that arrived but cannot be used; ``kind`` says which check refused it."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class AcceptedReply:
    """A reply that passed every check: what the site reported and the update it sent."""

    node_id: int
    site: str
    report: SiteReport
    payload: Payload | None = None  # None for evaluation replies (no arrays)
    control: Payload | None = None  # SCAFFOLD: the site's control-variate delta, checked alike


@dataclass
class RoundReplies:
    """Every reply of one exchange: accepted per site, failures, uplink bytes per site."""

    accepted: list[AcceptedReply] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def reports(self) -> dict[str, SiteReport]:
        return {r.site: r.report for r in self.accepted}

    @property
    def uplink_bytes(self) -> dict[str, int]:
        return {
            r.site: r.payload.nbytes + (r.control.nbytes if r.control is not None else 0)
            for r in self.accepted
            if r.payload is not None
        }
