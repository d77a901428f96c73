"""Benchmark results: typed metrics, machine info, and the JSON + Markdown files they end up in.

These machines are shared and noisy, so absolute numbers drift from run to run; what a reader
should compare is each metric's *ratio* to a reference measured side by side in the same run
(the full-model payload, a plain memory copy, a numpy weighted sum). Every metric therefore
carries its ratio, the reference it is relative to, and the goal set on it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import resource
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1
JSON_NAME = "results.json"
MARKDOWN_NAME = "results.md"


@dataclass(frozen=True)
class Metric:
    """One measured number, and how it compares with its reference.

    ``goal`` is an upper bound on ``ratio`` (every goal is "at most N times the
    reference"); a metric without a goal is context, e.g. the reference itself.
    """

    name: str
    value: float
    unit: str  # "bytes", "GB/s", "s"
    ratio: float | None = None
    reference: str = ""  # what ``ratio`` is relative to
    goal: float | None = None
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio <= self.goal

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"met": self.met}


@dataclass
class Section:
    """What one benchmark reports: a titled table of metrics plus free-form details."""

    name: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the benchmark that produced it
    peak_rss_bytes: int = 0  # peak resident memory while it ran (0 = not measurable)

    def add(self, *metrics: Metric) -> None:
        self.metrics.extend(metrics)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "seconds": self.seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
            "metrics": [m.to_json() for m in self.metrics],
            "details": self.details,
        }


# Machine --------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """Enough about the machine to tell two results files apart (and why their times differ)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_bytes": _ram_bytes(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("torch", "flwr", "numpy", "lerobot")},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory since start or the last :func:`reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Restart the peak-RSS watermark (Linux >= 4.0), so each benchmark gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# Files ----------------------------------------------------------------------------------------
def _fmt_value(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 1e6:,.1f} MB"
    if unit == "s":
        return f"{value * 1e3:,.1f} ms" if value < 1 else f"{value:,.2f} s"
    if unit == "GB/s":
        return f"{value:,.2f} GB/s"
    return f"{value:,.4g} {unit}".strip()


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.3f}" if ratio < 1 else f"{ratio:.2f}x"


def _fmt_goal(metric: Metric) -> str:
    if metric.goal is None:
        return ""
    goal = f"<= {metric.goal:g}" if metric.goal >= 1 else f"<= 1/{1 / metric.goal:g}"
    return f"{goal} {'yes' if metric.met else 'NO'}"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def machine_line(m: dict[str, Any]) -> str:
    """One Markdown line naming the machine and load a result came from (results drift)."""
    ram = f" · {_gib(m['ram_bytes'])} RAM" if m.get("ram_bytes") else ""
    return (
        f"{m['date']} · {m['cpu']} · {m['cores_usable']} cores{ram} · "
        f"load {', '.join(f'{x:.2f}' for x in m['load_average'])} · Python {m['python']} · "
        + " · ".join(f"{k} {v}" for k, v in m["versions"].items())
    )


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header with the machine, then one table per section."""
    lines = [
        "# zk0 benchmarks",
        "",
        machine_line(report["machine"]),
        "",
        f"Command: `{report['command']}` · benchmarks' wall time {report['wall_seconds']:.1f} s · "
        f"peak RSS {_gib(report['peak_rss_bytes'])}",
        "",
        "Ratios compare with a reference measured side by side in the same run; absolute times "
        "on shared machines drift, ratios much less.",
    ]
    for s in report["sections"]:
        lines += [
            "",
            f"## {s['title']}",
            "",
            f"{s['seconds']:.1f} s, peak RSS {_gib(s['peak_rss_bytes'])}."
            if s["peak_rss_bytes"]
            else f"{s['seconds']:.1f} s.",
            "",
            "| Metric | Value | Ratio | Relative to | Goal | Note |",
            "|---|---:|---:|---|---|---|",
        ]
        for d in s["metrics"]:
            metric = Metric(**{k: v for k, v in d.items() if k != "met"})
            lines.append(
                f"| {metric.name} | {_fmt_value(metric.value, metric.unit)} | "
                f"{_fmt_ratio(metric.ratio)} | {metric.reference} | {_fmt_goal(metric)} | "
                f"{metric.note} |"
            )
    return "\n".join(lines) + "\n"


def build_report(
    sections: list[Section],
    config: dict[str, Any],
    command: str,
    wall_seconds: float,
    peak_rss: int,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": command,
        "config": config,
        "machine": machine_info(),
        "wall_seconds": wall_seconds,
        "peak_rss_bytes": peak_rss,
        "sections": [s.to_json() for s in sections],
    }


def write_files(
    report: Mapping[str, Any], markdown: str, json_path: Path, md_path: Path
) -> tuple[Path, Path]:
    """Write a report's JSON (no NaN allowed) and its Markdown, each atomically."""
    from common import atomic

    atomic.write_bytes(json_path, (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
    atomic.write_bytes(md_path, markdown.encode())
    return json_path, md_path


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; return their paths."""
    return write_files(report, to_markdown(report), out_dir / JSON_NAME, out_dir / MARKDOWN_NAME)


def all_metric_values(report: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, number) for every value and ratio in a report: what the smoke test checks."""
    out = []
    for s in report["sections"]:
        for d in s["metrics"]:
            out.append((f"{s['name']}/{d['name']}", d["value"]))
            if d["ratio"] is not None:
                out.append((f"{s['name']}/{d['name']} (ratio)", d["ratio"]))
    return out


def is_finite_positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0
