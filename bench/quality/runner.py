"""Running a whole study: data once, every job (cached), the summary, the report files.

Also the ``python -m bench`` entry (:func:`run`), which reports the stored study.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.quality.jobs import Job, run_jobs
from bench.quality.report import JSON_NAME, RESULTS_DIR, write
from bench.quality.summary import GOAL_RATIO, cluster_check, summarize
from bench.quality.variants import DEFAULT_VARIANTS, VARIANTS, Engine, Study, Variant, run_config
from bench.results import machine_info
from common import atomic


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


def run_quality(
    out_dir: Path,
    seeds: Sequence[int] = (0, 1, 2),
    rounds: int = 10,
    local_steps: int = 20,
    sites: int = 4,
    engine: Engine = "inprocess",
    configs: Sequence[Variant] = DEFAULT_VARIANTS,
    *,
    demo_spec=None,
    eval_samples: int = 64,
    eval_every: int = 0,
    batch_size: int = 8,
    workers: int = 0,
    cluster_variant: str = "",
    explore: Sequence[Variant] = (),
    explore_seeds: Sequence[int] = (0,),
    results_dir: Path | None = None,
    command: str = "bench.quality.run_quality(...)",
) -> dict[str, Any]:
    """Run the study and write ``quality.json``/``quality.md`` (to ``results_dir`` or out_dir).

    ``engine="cluster"`` runs the federated variants through the real TLS cluster (the
    baselines have no transport and always run in-process). ``cluster_variant`` additionally
    runs that one federated variant through the cluster with the first seed, next to its
    in-process run, to show the two engines agree. ``explore``: more variants, run only with
    ``explore_seeds`` (a cheap first look; reported in their own table next to every other
    variant's runs with those seeds). ``eval_every=0``: twice per run. Finished jobs are
    reused from ``out_dir/jobs``, so a study can be resumed or extended.
    """
    from common.policy_factory import learning_rate, make_policy_config
    from demo_data import DemoSpec

    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    out_dir = Path(out_dir).resolve()
    spec = replace(demo_spec or DemoSpec(), num_sites=sites)
    data_dir = out_dir / "data"
    ensure_data(data_dir, spec)
    study = Study(str(out_dir), str(data_dir), rounds, local_steps, sites, batch_size,
                  eval_samples, eval_every or max(1, rounds // 2))
    # Seed-major: a study cut short still has every variant for its first seeds.
    jobs = [Job(study, v, seed, engine if v.kind == "federated" else "inprocess")
            for seed in seeds for v in configs]
    baselines = [v for v in configs if v.kind != "federated"]
    for seed in explore_seeds if explore else ():
        extra = [Job(study, v, seed, engine if v.kind == "federated" else "inprocess")
                 for v in [*baselines, *explore]]
        jobs += [j for j in extra if j not in jobs]
    if cluster_variant:
        chosen = next(v for v in [*configs, *explore] if v.name == cluster_variant)
        twin = Job(study, chosen, seeds[0], "inprocess")
        jobs += [j for j in (twin, replace(twin, engine="cluster")) if j not in jobs]
    # Cluster jobs start their own processes on every core: never next to another job.
    cluster_jobs = [j for j in jobs if j.engine == "cluster" and j.variant.kind == "federated"]
    results = run_jobs([j for j in jobs if j not in cluster_jobs], workers)
    results += run_jobs(cluster_jobs, 0)
    run = run_config(study, VARIANTS["fedavg"], seeds[0])
    report = {
        "schema": 1,
        "command": command,
        "config": {**{k: v for k, v in asdict(study).items() if k not in ("out_dir",)},
                   "seeds": list(seeds), "engine": engine, "total_steps": study.total_steps,
                   "lr": learning_rate(run, make_policy_config(run)), "demo_spec": asdict(spec),
                   "wire_dtype": run.wire_dtype, "lr_scheduler": run.lr_scheduler},
        "machine": machine_info(),
        "variants": [asdict(v) | {"overrides": dict(v.overrides)} for v in configs],
        "summary": summarize([r for r in results if r["seed"] in seeds], configs, engine),
        "explore_variants": [asdict(v) | {"overrides": dict(v.overrides)} for v in explore],
        "explore": summarize([r for r in results if r["seed"] in explore_seeds],
                             [*configs, *explore], engine) if explore else None,
        "cluster_check": cluster_check(results),
        "results": results,
        "wall_seconds": time.perf_counter() - started,
        # What the study cost if nothing was reused (jobs in parallel overlap in wall time).
        "job_seconds_total": sum(r["seconds"] for r in results),
    }
    write(report, Path(results_dir) if results_dir else out_dir)
    return report


def run(ctx) -> list:
    """``python -m bench`` entry: the stored study as a Section (re-measuring takes an hour).

    Without a stored study, a one-seed 2-site miniature runs instead, so the entry always
    reports something measured.
    """
    from bench.results import Metric, Section

    stored = RESULTS_DIR / JSON_NAME
    if stored.is_file():
        report, note = json.loads(stored.read_text()), f"stored {stored.name}"
    else:
        import tempfile

        from demo_data import DemoSpec

        with tempfile.TemporaryDirectory(prefix="zk0-quality-") as tmp:
            report = run_quality(Path(tmp), seeds=(0,), rounds=2, local_steps=5, sites=2,
                                 demo_spec=DemoSpec(episodes_per_site=5, frames_per_episode=30),
                                 eval_samples=16)
        note = "miniature (2 sites, 2x5 steps)"
    section = Section("quality", "Learning quality: held-out action MSE vs centralized",
                      details={"config": report["config"], "measured": report["machine"]["date"],
                               "source": note})
    for label, row in report["summary"]["rows"].items():
        federated = row.get("kind") == "federated"
        section.add(Metric(label, row["mean"], "MSE", ratio=row.get("ratio"),
                           reference="centralized", goal=GOAL_RATIO if federated else None,
                           note=f"{note}; std over seeds {row['std']:.2f}"))
    return [section]

