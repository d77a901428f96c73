"""Structured logs (structlog key-value events) for every zk0 process.

Flower's own logs go to the standard ``logging`` module; ours are structlog events rendered as
``key=value`` on the console and, when a run folder exists, as JSON lines in a file, so an
operator can grep a week-long run and a script can parse it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

_configured = False


def configure(json_file: Path | None = None, level: int = logging.INFO) -> None:
    """Route structlog through stdlib logging: console key=value, optional JSON-lines file."""
    global _configured
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger("zk0")
    root.setLevel(level)
    root.propagate = False
    for handler in list(root.handlers):
        if getattr(handler, "_zk0_console", False) or (
            json_file is not None and getattr(handler, "_zk0_file", None) == str(json_file)
        ):
            root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.dev.ConsoleRenderer(colors=False), foreign_pre_chain=shared
        )
    )
    console._zk0_console = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(json_file)
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(), foreign_pre_chain=shared
            )
        )
        fh._zk0_file = str(json_file)  # type: ignore[attr-defined]
        root.addHandler(fh)
    _configured = True


def get_logger(name: str = "zk0"):
    """A structlog logger under the ``zk0`` stdlib logger (configured on first use)."""
    if not _configured:
        configure()
    return structlog.get_logger(name if name.startswith("zk0") else f"zk0.{name}")
