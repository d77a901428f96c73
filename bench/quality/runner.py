"""Running a whole study: data once per scenario, every job (cached), the summaries, the files.

Also the ``python -m bench`` entry (:func:`run`), which reports the stored study.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.quality.jobs import Job, is_cached, run_jobs
from bench.quality.report import JSON_NAME, RESULTS_DIR, write
from bench.quality.summary import (
    DRIFT_GOAL,
    SAME_CLOCK,
    cluster_check,
    goals,
    plateau,
    summarize,
)
from bench.quality.variants import (
    DEFAULT_VARIANTS,
    SCENARIO_PRESETS,
    Engine,
    Study,
    Variant,
    describe,
    reference_config,
)
from bench.results import machine_info
from common import atomic

SCHEMA = 2  # quality.json's layout: per scenario, references and curves


def ensure_data(data_dir: Path, spec) -> list[Path]:
    """Generate the demo sites once per study; regenerate only if the spec changed."""
    from demo_data import make_demo_datasets

    marker = data_dir / "demo_spec.json"
    wanted = asdict(spec)
    roots = [data_dir / f"site-{i}" for i in range(spec.num_sites)]
    have = json.loads(marker.read_text()) if marker.is_file() else None
    if have == wanted and all((r / "meta" / "info.json").is_file() for r in roots):
        return roots
    roots = make_demo_datasets(data_dir, spec, overwrite=True, progress=_log_data)
    atomic.write_json(marker, wanted)
    return roots


def _log_data(line: str) -> None:
    """One line per demo site written, on stderr like the jobs' lines."""
    print(f"[quality] data {line}", file=sys.stderr, flush=True)


def make_study(out_dir: Path, scenario: str, sites: int, *, steps_per_site: int | None = None,
               demo: Mapping[str, Any] | None = None, **settings: Any) -> Study:
    """The study of one scenario (its preset's data and budget unless given), data written."""
    from demo_data import DemoSpec

    preset = SCENARIO_PRESETS[scenario]
    spec = DemoSpec(**{**preset.demo, **(demo or {}), "num_sites": sites})
    data_dir = out_dir / f"data-{scenario}"
    ensure_data(data_dir, spec)
    return Study(str(out_dir), str(data_dir), scenario, json.dumps(asdict(spec), sort_keys=True),
                 steps_per_site or preset.steps_per_site, sites, **settings)


def run_quality(
    out_dir: Path,
    scenarios: Sequence[str] = tuple(SCENARIO_PRESETS),
    seeds: Sequence[int] = (0, 1, 2),
    sites: int = 4,
    engine: Engine = "inprocess",
    configs: Sequence[Variant] = DEFAULT_VARIANTS,
    *,
    steps_per_site: int | None = None,
    demo: Mapping[str, Any] | None = None,
    eval_every_steps: int = 150,
    eval_samples: int = 64,
    batch_size: int = 8,
    workers: int = 0,
    cluster_variant: str = "",
    explore: Sequence[Variant] = (),
    explore_seeds: Sequence[int] = (0,),
    results_dir: Path | None = None,
    command: str = "bench.quality.run_quality(...)",
    cached_only: bool = False,
) -> dict[str, Any]:
    """Run the study for each scenario; write ``quality.json``/``quality.md`` and the curves'
    PNGs (to ``results_dir`` or ``out_dir``).

    ``engine="cluster"`` runs the federated variants through the real TLS cluster (the
    references have no transport and always run in-process). ``cluster_variant`` additionally
    runs that one federated variant through the cluster with the first seed, next to its
    in-process run. ``explore``: more variants, run only with ``explore_seeds``. Finished jobs
    are reused from ``out_dir/jobs``, so a study can be resumed or extended; ``cached_only``
    runs nothing and reports the finished jobs, naming the ones left out (a study cut short).
    """
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    out_dir = Path(out_dir).resolve()
    studies = [make_study(out_dir, s, sites, steps_per_site=steps_per_site, demo=demo,
                          batch_size=batch_size, eval_samples=eval_samples,
                          eval_every_steps=eval_every_steps) for s in scenarios]
    jobs: list[Job] = []

    def add(study: Study, variants: Sequence[Variant], seed: int) -> None:
        for v in variants:
            job = Job(study, v, seed, engine if v.kind == "federated" else "inprocess")
            if job not in jobs:
                jobs.append(job)

    # Seed 0 first, with the explored variants, then the other seeds: a study cut short still
    # has every variant of every scenario for its first seeds.
    for i, seed in enumerate(seeds):
        for study in studies:
            add(study, configs, seed)
            if i == 0 and explore:
                for explore_seed in explore_seeds:
                    add(study, [*[v for v in configs if v.kind != "federated"], *explore],
                        explore_seed)
    if cluster_variant:
        chosen = next(v for v in [*configs, *explore] if v.name == cluster_variant)
        for study in studies:
            twin = Job(study, chosen, seeds[0], "inprocess")
            jobs += [j for j in (twin, replace(twin, engine="cluster")) if j not in jobs]
    left_out = [j.slug for j in jobs if not is_cached(j)] if cached_only else []
    jobs = [j for j in jobs if j.slug not in left_out]
    # Cluster jobs start their own processes on every core: never next to another job.
    cluster_jobs = [j for j in jobs if j.engine == "cluster" and j.variant.kind == "federated"]
    results = run_jobs([j for j in jobs if j not in cluster_jobs], workers)
    results += run_jobs(cluster_jobs, 0)

    federated = [v.name for v in configs if v.kind == "federated"]
    per_scenario = {}
    for study in studies:
        mine = [r for r in results if r["scenario"] == study.scenario]
        main = summarize([r for r in mine if r["seed"] in seeds], configs, engine)
        defaults = [*federated, *(f"{n} (personalized)" for n in federated)]
        run = reference_config(study, seeds[0], study.steps_per_site, study.eval_every_steps,
                               study.batch_size)
        per_scenario[study.scenario] = {
            "study": {k: v for k, v in asdict(study).items() if k != "out_dir"},
            "demo_spec": study.demo(),
            "summary": main,
            "goals": goals(study.scenario, main, defaults),
            "alone_plateau": plateau(main["curves"]["alone"]) if "alone" in main["curves"]
            else None,
            "explore": summarize([r for r in mine if r["seed"] in explore_seeds],
                                 [*configs, *explore], engine) if explore else None,
            "lr": _peak_lr(run),
            "job_seconds": sum(r["seconds"] for r in mine),
        }
        _give_runs_their_references(mine)
    report = {
        "schema": SCHEMA,
        "command": command,
        "config": {"seeds": list(seeds), "engine": engine, "sites": sites,
                   "batch_size": batch_size, "eval_samples": eval_samples,
                   "eval_every_steps": eval_every_steps, "scenarios": list(scenarios)},
        "machine": machine_info(),
        "variants": [describe(v) for v in configs],
        "explore_variants": [describe(v) for v in explore],
        "scenarios": per_scenario,
        "cluster_check": cluster_check(results),
        "left_out": left_out,
        "results": results,
        "wall_seconds": time.perf_counter() - started,
        # What the study cost if nothing was reused (jobs in parallel overlap in wall time).
        "job_seconds_total": sum(r["seconds"] for r in results),
    }
    write(report, Path(results_dir) if results_dir else out_dir)
    return report


def _peak_lr(run) -> float:
    from common.policy_factory import learning_rate, make_policy_config

    return learning_rate(run, make_policy_config(run))


def _give_runs_their_references(results: Sequence[Mapping[str, Any]]) -> None:
    """Write each federated run folder's ``references.json`` (the same seed's sites alone), so
    its summary page and table show global, personalized and alone side by side."""
    from superlink.summary import REFERENCES, write_summary

    alone = {r["seed"]: r for r in results if r["kind"] == "alone"}
    for r in results:
        folder = Path(r.get("run_dir") or "")
        if r["kind"] != "federated" or r["seed"] not in alone or not folder.is_dir():
            continue
        steps = alone[r["seed"]]["curve"]
        atomic.write_json(folder / REFERENCES, {"alone": {
            "per_site": alone[r["seed"]]["per_site"],
            "source": f"bench.quality: each site alone on its own data, {max(map(int, steps))} "
                      f"steps, seed {r['seed']}",
        }})
        write_summary(folder)


def run(ctx) -> list:
    """``python -m bench`` entry: the stored study as a Section (re-measuring takes hours).

    Without a stored study, a one-seed 2-site miniature runs instead, so the entry always
    reports something measured.
    """
    from bench.results import Metric, Section

    stored = RESULTS_DIR / JSON_NAME
    report = json.loads(stored.read_text()) if stored.is_file() else {}
    if report.get("schema") == SCHEMA:
        note = f"stored {stored.name}"
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="zk0-quality-") as tmp:
            report = run_quality(Path(tmp), scenarios=("shared-tasks",), seeds=(0,), sites=2,
                                 steps_per_site=4, eval_every_steps=2,
                                 demo={"episodes_per_site": 4, "frames_per_episode": 20},
                                 eval_samples=8,
                                 configs=[v for v in DEFAULT_VARIANTS
                                          if "personalize" not in v.name],
                                 results_dir=Path(tmp))
        note = "miniature (2 sites, 4 steps per site)"
    sections = []
    for scenario, data in report["scenarios"].items():
        section = Section(f"quality-{scenario}",
                          f"Learning quality, {scenario}: held-out action MSE vs pooled training "
                          "at the same clock",
                          details={"config": report["config"], "study": data["study"],
                                   "measured": report["machine"]["date"], "source": note})
        for label, row in data["summary"]["rows"].items():
            federated = row.get("kind") == "federated" and row["field"] == "per_site"
            section.add(Metric(label, row["mean"], "MSE", ratio=row.get("ratio_same_clock"),
                               reference=SAME_CLOCK,
                               goal=DRIFT_GOAL if federated else None,
                               note=f"{note}; std over seeds {row['std']:.2f}"))
        sections.append(section)
    return sections
