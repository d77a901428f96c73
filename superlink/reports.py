"""The run folder's reports: per-round JSON, the eval history (JSON + PNG), and a console table.

Layout of ``<output-dir>/run-<id>/``::

    run.json               run config, sites, features, timings (rewritten as the run goes)
    rounds/round_003.json  per-site and aggregated train loss, eval action MSE, samples, steps,
                           bytes, durations, failures, checkpoint path
    eval_history.json      held-out action MSE per site and weighted, model after round 0..R
    eval_mse.png           the same as a chart
    logs.jsonl             structured log events
    checkpoints/000003/pretrained_model/   LeRobot checkpoint of the global policy

Round ``r``'s eval numbers measure the global model *after* round ``r`` (round 0 = the starting
model). Sites evaluate it at the start of round ``r + 1`` (it is the model they receive then),
so a round file is first written without them and completed one round later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common import atomic
from common.protocol import SiteReport
from superlink.strategy import Failure


def weighted_mean(values: Mapping[str, float], weights: Mapping[str, float]) -> float | None:
    total = sum(weights[s] for s in values)
    if not values or total <= 0:
        return None
    return sum(values[s] * weights[s] for s in values) / total


class RunReport:
    """Owns the run folder's report files; every write is atomic."""

    def __init__(self, run_dir: Path, meta: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.meta = meta
        self.rounds: dict[int, dict[str, Any]] = {}
        self.evals: dict[int, dict[str, Any]] = {}
        (run_dir / "rounds").mkdir(parents=True, exist_ok=True)
        self._write_meta()

    def _write_meta(self) -> None:
        atomic.write_json(self.run_dir / "run.json", self.meta)

    def update_meta(self, **values: Any) -> None:
        self.meta.update(values)
        self._write_meta()

    def record_round(
        self,
        server_round: int,
        reports: Mapping[str, SiteReport],
        failures: list[Failure],
        **extra: Any,
    ) -> dict[str, Any]:
        weights = {s: float(r.num_examples) for s, r in reports.items()}
        losses = {s: r.train_loss for s, r in reports.items()}
        entry = {
            "round": server_round,
            "sites": {s: asdict(r) for s, r in reports.items()},
            "train_loss": weighted_mean(losses, weights),
            "train_loss_mean": sum(losses.values()) / len(losses) if losses else None,
            "samples": sum(r.samples for r in reports.values()),
            "steps": sum(r.steps for r in reports.values()),
            "uplink_bytes": sum(r.payload_bytes + r.control_bytes for r in reports.values()),
            "failures": [asdict(f) for f in failures],
            "eval": self.evals.get(server_round),
            **extra,
        }
        self.rounds[server_round] = entry
        self._write_round(server_round)
        return entry

    def record_eval(
        self, after_round: int, reports: Mapping[str, SiteReport], failures: list[Failure]
    ) -> dict[str, Any] | None:
        """Held-out MSE of the global model after ``after_round`` rounds, per site + weighted."""
        measured = {s: r for s, r in reports.items() if r.eval_action_mse >= 0}
        if not measured:
            return None
        mse = {s: r.eval_action_mse for s, r in measured.items()}
        weights = {s: float(r.eval_samples) for s, r in measured.items()}
        entry = {
            "after_round": after_round,
            "action_mse": mse,
            "action_mse_weighted": weighted_mean(mse, weights),
            "action_mse_mean": sum(mse.values()) / len(mse),
            "samples": {s: r.eval_samples for s, r in measured.items()},
            "seconds": {s: r.eval_seconds for s, r in measured.items()},
            "failures": [asdict(f) for f in failures if f.site not in measured],
        }
        self.evals[after_round] = entry
        if after_round in self.rounds:
            self.rounds[after_round]["eval"] = entry
            self._write_round(after_round)
        self._write_history()
        return entry

    def _write_round(self, server_round: int) -> None:
        path = self.run_dir / "rounds" / f"round_{server_round:03d}.json"
        atomic.write_json(path, self.rounds[server_round])

    def history(self) -> dict[str, Any]:
        rounds = sorted(self.evals)
        sites = sorted({s for e in self.evals.values() for s in e["action_mse"]})
        return {
            "metric": "held-out action MSE (real units^2), global model after each round",
            "rounds": rounds,
            "per_site": {s: [self.evals[r]["action_mse"].get(s) for r in rounds] for s in sites},
            "weighted": [self.evals[r]["action_mse_weighted"] for r in rounds],
            "mean": [self.evals[r]["action_mse_mean"] for r in rounds],
        }

    def _write_history(self) -> None:
        history = self.history()
        atomic.write_json(self.run_dir / "eval_history.json", history)
        _plot(history, self.run_dir / "eval_mse.png")

    def table(self) -> str:
        return format_history(self.history())


def format_history(history: Mapping[str, Any]) -> str:
    """Per-site eval action MSE per round as a console table (from ``eval_history.json``)."""
    sites = list(history["per_site"])
    head = ["after round", *sites, "weighted"]
    rows = [head]
    for i, r in enumerate(history["rounds"]):
        cells = [history["per_site"][s][i] for s in sites] + [history["weighted"][i]]
        rows.append([str(r), *("-" if v is None else f"{v:.2f}" for v in cells)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plot(history: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    rounds = history["rounds"]
    for site, values in history["per_site"].items():
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", lw=1, alpha=0.7, label=site)
    ax.plot(rounds, history["weighted"], color="black", lw=2.5, marker="s", label="weighted")
    ax.set_xlabel("global model after round")
    ax.set_ylabel("held-out action MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("zk0: held-out action MSE per site")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
