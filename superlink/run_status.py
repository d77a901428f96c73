"""How a run ends, in one line: ``completed``, ``completed with failed rounds``, or
``failed: <reason>``.

A round *fails* when it cannot move the global model: fewer than ``min-replies`` sites were
connected, or fewer than ``min-replies`` of their updates passed the checks. A failed round
keeps its number (sites' learning-rate schedules follow the round number), leaves the global
model and the strategy's state as they were, and writes no checkpoint. ``max-failed-rounds``
failed rounds in a row end the run; so does reaching the last round without a single round
that moved the model. A run that ends ``failed`` raises, so Flower marks it failed too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COMPLETED = "completed"
COMPLETED_WITH_FAILED_ROUNDS = "completed with failed rounds"


class RunFailed(RuntimeError):
    """The run cannot go on (or achieved nothing); the message is its final status."""


@dataclass
class RoundLedger:
    """Which rounds moved the model and which failed, across resumes."""

    max_failed_rounds: int
    failed_rounds: list[int] = field(default_factory=list)
    moved_rounds: int = 0  # rounds whose updates moved the global model
    consecutive_failed: int = 0

    def succeeded(self) -> None:
        self.moved_rounds += 1
        self.consecutive_failed = 0

    def failed(self, server_round: int) -> None:
        self.failed_rounds.append(server_round)
        self.consecutive_failed += 1

    def check(self, reason: str) -> None:
        """Raise :class:`RunFailed` once ``max-failed-rounds`` rounds failed in a row."""
        if self.consecutive_failed >= self.max_failed_rounds:
            raise RunFailed(
                f"{self.consecutive_failed} rounds in a row failed (max-failed-rounds="
                f"{self.max_failed_rounds}), the last (round {self.failed_rounds[-1]}): {reason}"
            )

    def final_status(self) -> str:
        """The status of a run that went through its last round (or :class:`RunFailed`)."""
        if self.moved_rounds == 0:
            raise RunFailed(
                f"no round moved the global model: rounds {self.failed_rounds} all failed"
            )
        return COMPLETED_WITH_FAILED_ROUNDS if self.failed_rounds else COMPLETED
