"""The run folder's reports: per-round JSON, the eval history (JSON + PNG), per-joint
trajectory plots, the summary page and a console table.

Layout of ``<output-dir>/run-<id>/``::

    run.json               run config, sites, features, timings, status, failed rounds,
                           excluded sites, failures by site and kind (rewritten as it goes)
    summary.html           one page: MSE chart, last per-joint plots, round table, failures
    rounds/round_003.json  per-site and aggregated train loss, eval action MSE, samples, steps,
                           bytes, durations, status, every failure by site, kind and reason,
                           checkpoint path
    eval_history.json      held-out action MSE per site and weighted, model after round 0..R
                           (and the final model as each site personalized it, if asked)
    eval_mse.png           the same as a chart
    plots/round_003/site-0.png          predicted vs recorded actions per joint (shared sites)
    trajectories/round_003/site-0.json  the numbers behind that plot
    logs.jsonl             structured log events
    checkpoints/000003/pretrained_model/   LeRobot checkpoint of the global policy

Round ``r``'s eval numbers measure the global model *after* round ``r`` (round 0 = the starting
model). Sites evaluate it at the start of round ``r + 1`` (it is the model they receive then),
so a round file is first written without them and completed one round later. The starting
model's numbers (round 0) are ``initial_eval`` in ``run.json``, the final model's
``final_eval``.

A resumed run (``resume-from``) reopens the same folder: :class:`RunReport` is given the rounds
and evaluations already on disk and goes on from there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from common import atomic
from common.protocol import SiteReport
from common.trajectory import Trajectory
from superlink import plots
from superlink.metrics import RunMetrics
from superlink.strategy import Failure
from superlink.summary import comparison_rows, load_references, write_summary


def weighted_mean(values: Mapping[str, float], weights: Mapping[str, float]) -> float | None:
    total = sum(weights[s] for s in values)
    if not values or total <= 0:
        return None
    return sum(values[s] * weights[s] for s in values) / total


class RunReport:
    """Owns the run folder's report files; every write is atomic.

    What it records also goes to the run's Prometheus metrics (``self.metrics``), so the
    report files and the metrics cannot disagree.
    """

    def __init__(
        self,
        run_dir: Path,
        meta: dict[str, Any],
        rounds: Mapping[int, dict[str, Any]] | None = None,
        evals: Mapping[int, dict[str, Any]] | None = None,
        metrics: RunMetrics | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.meta = meta
        self.rounds: dict[int, dict[str, Any]] = dict(rounds or {})
        self.evals: dict[int, dict[str, Any]] = dict(evals or {})
        (run_dir / "rounds").mkdir(parents=True, exist_ok=True)
        self.meta["failures_by_site"] = self.failures_by_site()
        self._write_meta()
        self.metrics = metrics or RunMetrics(
            meta.get("run_id", "unknown"), meta.get("run_config", {}).get("num-server-rounds")
        )
        self.metrics.started(
            meta.get("sites", {}), meta.get("stats_failures", {}), meta.get("started"),
            excluded=meta.get("excluded_sites", {}),
        )

    def _write_meta(self) -> None:
        atomic.write_json(self.run_dir / "run.json", self.meta)
        write_summary(self.run_dir)

    def update_meta(self, **values: Any) -> None:
        self.meta.update(values)
        self._write_meta()

    def round_entry(
        self,
        server_round: int,
        reports: Mapping[str, SiteReport],
        failures: list[Failure],
        **extra: Any,
    ) -> dict[str, Any]:
        """A round's report (not written yet: see :meth:`store_round`)."""
        weights = {s: float(r.num_examples) for s, r in reports.items()}
        losses = {s: r.train_loss for s, r in reports.items()}
        entry = {
            "round": server_round,
            "sites": {s: r.to_json() for s, r in reports.items()},
            "train_loss": weighted_mean(losses, weights),
            "train_loss_mean": sum(losses.values()) / len(losses) if losses else None,
            "samples": sum(r.samples for r in reports.values()),
            "steps": sum(r.steps for r in reports.values()),
            "uplink_bytes": sum(r.payload_bytes + r.control_bytes for r in reports.values()),
            "failures": [f.to_json() for f in failures],
            "failure_counts": failure_counts(failures),
            "eval": self.evals.get(server_round),
            **extra,
        }
        return entry

    def store_round(
        self, entry: dict[str, Any], reports: Mapping[str, SiteReport], failures: list[Failure]
    ) -> None:
        """Write a round's report (``reports`` and ``failures`` as :meth:`round_entry` got
        them) and the run's running count of failures by site."""
        self.rounds[entry["round"]] = entry
        self._write_round(entry["round"])
        self.metrics.round_recorded(entry, reports, failures)
        self.update_meta(failures_by_site=self.failures_by_site())  # rewrites the summary too

    def failures_by_site(self) -> dict[str, dict[str, int]]:
        """Every round's failures so far, counted by site and kind."""
        return _count_by_site(
            (f["site"], f["kind"]) for e in self.rounds.values() for f in e.get("failures", [])
        )

    def record_eval(
        self,
        after_round: int,
        reports: Mapping[str, SiteReport],
        failures: list[Failure],
        trajectories: Mapping[str, Trajectory] | None = None,
        trajectory_notes: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """Held-out MSE of the global model after ``after_round`` rounds, per site + weighted,
        and the per-joint plots of the trajectories the sites sent with it."""
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
            # held-out frames a site could not read and left out (names: round notes / logs)
            "skipped": {s: r.skipped_eval_samples for s, r in measured.items()
                        if r.skipped_eval_samples},
            "failures": [f.to_json() for f in failures if f.site not in measured],
            "trajectories": plots.trajectory_plots(self.run_dir, after_round, trajectories or {}),
            "trajectory_notes": dict(trajectory_notes or {}),
        }
        personal = {s: r.personal_action_mse for s, r in measured.items()
                    if r.personal_action_mse >= 0}
        if personal:  # the final model, fine-tuned by each site on its own data
            entry["personalized"] = {
                "action_mse": personal,
                "action_mse_weighted": weighted_mean(personal, weights),
                "steps": {s: measured[s].personal_steps for s in personal},
                "seconds": {s: measured[s].personal_seconds for s in personal},
            }
        self.evals[after_round] = entry
        if after_round in self.rounds:
            self.rounds[after_round]["eval"] = entry
            self._write_round(after_round)
        elif after_round == 0:
            self.update_meta(initial_eval=entry)
        self._write_history()
        write_summary(self.run_dir)
        self.metrics.eval_recorded(entry, measured)
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
            # per plotted model: each site's per-joint plot, or why there is none
            "trajectories": {
                str(r): {
                    "plots": {s: t["plot"] for s, t in self.evals[r]["trajectories"].items()},
                    "notes": self.evals[r]["trajectory_notes"],
                }
                for r in rounds
                if self.evals[r]["trajectories"] or self.evals[r]["trajectory_notes"]
            },
            # the final model fine-tuned by each site on its own data (personalize-steps)
            "personalized": next((
                {"after_round": r, "per_site": self.evals[r]["personalized"]["action_mse"],
                 "weighted": self.evals[r]["personalized"]["action_mse_weighted"],
                 "steps": self.evals[r]["personalized"]["steps"]}
                for r in reversed(rounds) if "personalized" in self.evals[r]), None),
            # sites that did not evaluate a model, and why (round 0's live nowhere else)
            "failures": {str(r): self.evals[r]["failures"] for r in rounds
                         if self.evals[r]["failures"]},
        }

    def _write_history(self) -> None:
        history = self.history()
        atomic.write_json(self.run_dir / "eval_history.json", history)
        plots.mse_chart(history, self.run_dir / "eval_mse.png")

    def table(self) -> str:
        return format_history(self.history(), load_references(self.run_dir))

    def failures(self) -> list[dict[str, Any]]:
        """Every failure of the run so far, each with the round (or ``eval N``) it hit."""
        out = [{"round": r, **f} for r, e in sorted(self.rounds.items()) for f in e["failures"]]
        out += [{"round": f"eval {r}", **f} for r, e in sorted(self.evals.items())
                for f in e["failures"]]
        return out


def failure_counts(failures: list[Failure]) -> dict[str, dict[str, int]]:
    """{site: {kind: count}} of one round's failures."""
    return _count_by_site((f.site, f.kind) for f in failures)


def _count_by_site(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {}
    for site, kind in pairs:
        counts.setdefault(site, Counter())[kind] += 1
    return {site: dict(sorted(c.items())) for site, c in sorted(counts.items())}


def format_history(
    history: Mapping[str, Any], references: Mapping[str, Any] | None = None
) -> str:
    """Per-site eval action MSE per round as a console table (from ``eval_history.json``),
    then the personalized models and any references (:func:`~superlink.summary.comparison_rows`)."""
    sites = list(history["per_site"])
    head = ["after round", *sites, "weighted"]
    rows = [head]
    for i, r in enumerate(history["rounds"]):
        cells = [history["per_site"][s][i] for s in sites] + [history["weighted"][i]]
        rows.append([str(r), *("-" if v is None else f"{v:.2f}" for v in cells)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    for label, per_site, weighted in comparison_rows(history, references):
        cells = [per_site.get(s) for s in sites] + [weighted]
        rows.append([label, *("-" if v is None else f"{v:.2f}" for v in cells)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
