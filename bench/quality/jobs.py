"""Running one job (a variant with a seed), and many of them: in-process or in fresh processes.

A job's result is kept in ``<out>/jobs/<slug>.json`` with the job's :meth:`Job.key`; asking for
the same job again returns it without running anything, which is what lets a long study be
resumed or extended.

Every result has the final per-site MSE (``per_site``), the untrained model's (``untrained``)
and the curve (``curve``: steps per site -> per-site MSE, every evaluated model). A federated
result also has the bytes the run moved and, with ``personalize-steps``, ``personalized`` (the
final model as each site fine-tuned it, at the study's full steps per site) next to
``per_site`` (the global model it started from).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import bench.quality.baselines as baselines
from bench.quality.variants import Engine, Study, Variant, node_configs, run_config


@dataclass(frozen=True)
class Job:
    """One variant with one seed: the unit that runs in a worker and is cached on disk."""

    study: Study
    variant: Variant
    seed: int
    engine: Engine = "inprocess"

    @property
    def slug(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-." else "_" for c in self.variant.name)
        return f"{self.study.scenario}-{safe}-{self.engine}-s{self.seed}"

    @property
    def result_path(self) -> Path:
        return Path(self.study.out_dir) / "jobs" / f"{self.slug}.json"

    def key(self) -> dict[str, Any]:
        """Everything the result depends on: a cached result is reused only if this matches."""
        return json.loads(json.dumps({"study": {k: v for k, v in asdict(self.study).items()
                                                if k not in ("out_dir", "data_dir")},
                                      "variant": asdict(self.variant), "seed": self.seed,
                                      "engine": self.engine}, default=dict))


def _federated_inprocess(job: Job) -> dict[str, Any]:
    from harness.inprocess_grid import run_inprocess

    runs = Path(job.study.out_dir) / "runs" / job.slug
    run = run_config(job.study, job.variant, job.seed, **{"output-dir": str(runs)})
    run_id = 1 + zlib.crc32(job.slug.encode()) % 10_000_000  # stable across processes
    run_dir = run_inprocess(run.to_flwr(), node_configs(job.study), run_id)
    history = json.loads((Path(run_dir) / "eval_history.json").read_text())
    return from_history(history, str(run_dir), run.local_steps)


def _federated_cluster(job: Job) -> dict[str, Any]:
    from deploy.cluster.cli import run_cluster

    run = run_config(job.study, job.variant, job.seed)
    overrides = {k: v for k, v in run.to_flwr().items() if k != "output-dir"}
    work = Path(job.study.out_dir) / "cluster" / job.slug
    out = run_cluster(work, job.study.sites, overrides, Path(job.study.data_dir),
                      eval_episodes=job.study.eval_episodes,
                      torch_threads=job.study.torch_threads)
    result = from_history(out["history"], out["run_dir"], run.local_steps)
    result["cluster_seconds"] = out["seconds"]
    return result


def from_history(history: Mapping[str, Any], run_dir: str, local_steps: int) -> dict[str, Any]:
    """A federated run's numbers from its ``eval_history.json``: the global model after the
    last round (``per_site``), round 0's (``untrained``), the curve by steps per site, the
    personalized models (if any) and the bytes the run moved."""
    sites = list(history["per_site"])
    curve = {str(r * local_steps): {s: history["per_site"][s][i] for s in sites}
             for i, r in enumerate(history["rounds"])}
    out = {"per_site": {s: values[-1] for s, values in history["per_site"].items()},
           "untrained": {s: values[0] for s, values in history["per_site"].items()},
           "curve": curve, "run_dir": run_dir, "bytes": run_bytes(Path(run_dir))}
    personal = history.get("personalized")
    if personal:
        out["personalized"] = dict(personal["per_site"])
        out["personalize_steps"] = max(personal["steps"].values())
    return out


def run_bytes(run_dir: Path) -> dict[str, int]:
    """Bytes of the training rounds (round reports): downlink to every site, uplink from them.

    The final model's one evaluate broadcast is left out: every variant pays it the same.
    """
    down = up = 0
    for path in sorted((run_dir / "rounds").glob("round_*.json")):
        entry = json.loads(path.read_text())
        down += int(entry.get("downlink_bytes") or 0)
        up += int(entry.get("uplink_bytes") or 0)
    return {"downlink": down, "uplink": up, "total": down + up}


def cached_result(job: Job) -> dict[str, Any] | None:
    """The result this very job (same key) left when it ran, or None."""
    if not job.result_path.is_file():
        return None
    result = json.loads(job.result_path.read_text())
    return result if result.get("key") == job.key() else None


def is_cached(job: Job) -> bool:
    return cached_result(job) is not None


def run_job(job: Job) -> dict[str, Any]:
    """Run one job (reusing its cached result if the same job already ran) and save it.

    The global RNGs are seeded from the job's seed here: a federated site seeds each of its
    rounds itself (``Site.seed_round``), but the references call ``train_round`` directly
    (torch's global RNG draws SmolVLA's flow-matching noise), and Python's picks the order in
    which Flower's strategies sample the sites. Without this, two runs with the same seed differ.
    """
    import random

    import numpy as np
    import torch

    from common import atomic

    if (cached := cached_result(job)) is not None:
        return cached
    threads = torch.get_num_threads()
    random.seed(job.seed)
    np.random.seed(job.seed)
    torch.manual_seed(job.seed)
    start = time.perf_counter()
    try:
        if job.variant.kind != "federated":
            result = baselines.run_reference(job.variant.kind, job.study, job.seed)
        elif job.engine == "cluster":
            result = _federated_cluster(job)
        else:
            result = _federated_inprocess(job)
    finally:
        torch.set_num_threads(threads)  # Site.open sets the node's thread count process-wide
    result |= {"key": job.key(), "variant": job.variant.name, "kind": job.variant.kind,
               "scenario": job.study.scenario, "seed": job.seed, "engine": job.engine,
               "seconds": time.perf_counter() - start}
    atomic.write_json(job.result_path, result)
    return result


def _run_job_logged(job: Job) -> dict[str, Any]:
    """Worker entry point: one line per job on stderr, so a long study can be followed."""
    if not job.result_path.is_file():
        print(f"[quality] start {job.slug}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = run_job(job)
    how = "reused" if time.perf_counter() - start < 0.5 * result["seconds"] else "done"
    print(f"[quality] {how} {job.slug} ({result['seconds']:.0f} s): mean MSE "
          f"{statistics.fmean(result['per_site'].values()):.2f}", file=sys.stderr, flush=True)
    return result


def run_jobs(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    """Run jobs inline (``workers=0``) or in fresh spawned processes, one per job.

    A fresh process per job keeps jobs independent (torch threads, RNG, Flower's task identity,
    logging), as separate runs of a real federation are.
    """
    if workers <= 0:
        return [_run_job_logged(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        return list(pool.map(_run_job_logged, jobs))
