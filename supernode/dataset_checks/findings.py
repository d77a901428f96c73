"""One problem a dataset check found, named by file, episode, frame and key: what every check
module of :mod:`supernode.dataset_checks` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, which check, where (file, episode, frame, key), and what was
    expected."""

    severity: Severity
    check: str  # layout | features | federation | fps | tables | timestamps | index | values
    #             | video | images | split
    message: str
    file: str | None = None  # relative to the dataset root
    episode: int | None = None
    frame: int | None = None
    key: str | None = None

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.episode is not None:
            parts.append(f"episode {self.episode}")
        if self.frame is not None:
            parts.append(f"frame {self.frame}")
        if self.key:
            parts.append(f"key {self.key}")
        return ", ".join(parts)

    def line(self) -> str:
        where = self.where()
        return f"{self.severity.upper()} [{self.check}] " + (
            f"{where}: {self.message}" if where else self.message
        )


def error(check: str, message: str, **where: Any) -> Finding:
    return Finding("error", check, message, **where)


def warning(check: str, message: str, **where: Any) -> Finding:
    return Finding("warning", check, message, **where)
