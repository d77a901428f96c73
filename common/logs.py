"""Structured logs (structlog key-value events) for every zk0 process, and each line once.

Flower's own logs go to the standard ``logging`` module; ours are structlog events rendered as
``key=value`` on the console and, when a run folder exists, as JSON lines in a file, so an
operator can grep a week-long run and a script can parse it.

Why Flower's lines used to appear twice (``INFO :  ...`` and ``INFO:flwr:...``): the ``flwr``
logger has its own console handler, level DEBUG, and propagates to the root logger. The root
logger has no handler until a library calls the module-level ``logging.info()`` (LeRobot does,
while building a policy or opening a dataset), which runs ``logging.basicConfig()``: from then
on every Flower record was printed again by root's bare handler, DEBUG records included. So
:func:`configure` stops ``flwr`` from propagating and gives the root logger a handler of its
own (third-party libraries: warnings and errors only), so ``basicConfig`` never fires.

Verbosity comes from ``ZK0_LOG_LEVEL`` (``INFO`` unless set; ``zk0 cluster --verbose`` sets
``DEBUG``), read by every zk0 process: the environment reaches the ServerApp and ClientApp
processes through Flower's SuperLink, SuperNode and SuperExec.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import structlog

LEVEL_ENV = "ZK0_LOG_LEVEL"
_configured = False


def env_level() -> int:
    """``ZK0_LOG_LEVEL`` as a logging level (a name such as DEBUG, or a number); INFO if unset."""
    raw = os.environ.get(LEVEL_ENV, "").strip().upper()
    if not raw:
        return logging.INFO
    if raw.isdigit():
        return int(raw)
    level = logging.getLevelName(raw)
    if not isinstance(level, int):
        raise ValueError(f"{LEVEL_ENV}={raw!r}: expected DEBUG, INFO, WARNING or ERROR")
    return level


def _console_handler(shared: list, level: int = logging.NOTSET) -> logging.Handler:
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.dev.ConsoleRenderer(colors=False), foreign_pre_chain=shared
        )
    )
    return console


def _route_library_logs(shared: list, level: int) -> None:
    """Flower's records through Flower's handler only; other libraries' through one root
    handler (WARNING and up, everything with DEBUG)."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    for handler in flwr_logger.handlers:
        if type(handler).__name__ == "ConsoleHandler":  # Flower's own, INFO by default
            handler.setLevel(min(level, logging.INFO))
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_zk0_root", False):
            root.removeHandler(handler)
    handler = _console_handler(shared, logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    handler._zk0_root = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def configure(json_file: Path | None = None, level: int | None = None) -> None:
    """Route structlog through stdlib logging: console key=value, optional JSON-lines file.

    ``level`` defaults to ``ZK0_LOG_LEVEL`` (INFO).
    """
    global _configured
    level = env_level() if level is None else level
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
    console = _console_handler(shared)
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
    _route_library_logs(shared, level)
    _configured = True


def get_logger(name: str = "zk0"):
    """A structlog logger under the ``zk0`` stdlib logger (configured on first use)."""
    if not _configured:
        configure()
    return structlog.get_logger(name if name.startswith("zk0") else f"zk0.{name}")
