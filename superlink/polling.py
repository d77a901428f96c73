"""How often the ServerApp asks the SuperLink for replies while it waits.

A fixed interval trades latency for load: Flower's own loop polls every 3 s, zk0's did every
2 s, and a one-site round waited a second on average just to notice a reply. The wait here
starts short right after sending and grows by ``factor`` to ``cap`` while the round runs, so a
short round is noticed quickly, a long one costs a poll per ``cap`` seconds, and a reply is
seen within ``cap`` seconds at worst. Run config keys ``poll-min-seconds`` /
``poll-max-seconds`` set the two ends.

It does not drop back to the minimum when a reply arrives: every poll is a write transaction
in the SuperLink's SQLite state, and right then the other sites are uploading their replies
into the same file. On a starved machine (load 17 on 2 cores) a burst of polls there met a site
upload that waited out SQLite's 5 s lock and failed with HTTP 500, and Flower's SuperNode
does not retry a failed upload: the site's reply was lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MIN_SECONDS = 0.1
DEFAULT_MAX_SECONDS = 0.5
FACTOR = 1.5


@dataclass
class IdleBackoff:
    """Successive waits between polls that found nothing: ``first``, x``factor``, .. ``cap``."""

    first: float = DEFAULT_MIN_SECONDS
    cap: float = DEFAULT_MAX_SECONDS
    factor: float = FACTOR
    _next: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"poll seconds: need 0 < min ({self.first}) <= max ({self.cap})")
        self._next = self.first

    @classmethod
    def of(cls, run) -> IdleBackoff:
        """From a RunConfig's ``poll-min-seconds`` / ``poll-max-seconds``."""
        return cls(run.poll_min_seconds, run.poll_max_seconds)

    def next(self) -> float:
        """The wait after a poll that found nothing (then the next one grows)."""
        wait = self._next
        self._next = min(self._next * self.factor, self.cap)
        return wait

    def reset(self) -> None:
        """Start over (a new exchange)."""
        self._next = self.first
