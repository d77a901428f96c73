"""Item 4: learning quality on the heterogeneous demo sites, federated against the baselines.

Every variant trains the same tiny SmolVLA for the same total number of optimizer steps
(``rounds x local_steps x sites``) from the same initial weights, and is scored the same way:
held-out action MSE (real units squared) of each site's held-out episodes, on the same
``eval_samples`` frames with the same denoising noise (both fixed by the run seed).

- federated (FedProx with several ``mu``, FedAvg, FedAvgM, FedAdam): zk0's unchanged ServerApp
  loop against its unchanged ClientApp, in one process (:mod:`harness.inprocess_grid`) or through
  the real TLS cluster (``engine="cluster"``), so what is measured is what a deployment does.
- centralized: one policy trained with the sites' own training step
  (:func:`supernode.training.train_round`) on the pooled training episodes, with the exact
  global normalization stats the federation computes; the upper bound federation aims at.
- local: each site alone, with its own stats, for ``rounds x local_steps`` steps; scored on its
  own held-out episodes ("local (own)") and on the other sites' ("local (others)").

Absolute MSEs depend on the data's scale and on how long anything trains, so the report gives
each variant's ratio to centralized training *with the same seed*, then mean and std over
seeds. Run it (about 50 minutes on 2 CPU cores with the defaults)::

    HF_HUB_OFFLINE=1 python -m bench.quality --workers 2   # bench/results/quality.{json,md}

Every finished job is kept in ``--out``/jobs and reused when the same job is asked for again,
so a study can be resumed or extended: ``--variant 'NAME:key=value,...'`` adds a federated
variant to the main table (every seed), ``--explore 'NAME:key=value,...'`` one run with
``--explore-seeds`` only, and ``--cluster-check NAME`` reruns one variant through the real
TLS cluster next to its in-process run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from bench.results import machine_info, machine_line, write_files

RESULTS_DIR = Path(__file__).resolve().parent / "results"
JSON_NAME = "quality.json"
MARKDOWN_NAME = "quality.md"
POLICY = "smolvla-tiny"
GOAL_RATIO = 1.10  # the issue: federated within 10% of centralized
CAMERA_DTYPES = ("image", "video")
Engine = Literal["inprocess", "cluster"]
Kind = Literal["federated", "centralized", "local"]


@dataclass(frozen=True)
class Variant:
    """One way of training: a federated run config, or one of the two non-federated baselines.

    ``overrides`` are run-config keys (kebab-case, as ``flwr run -c``) on top of the study's
    base config; a federated variant may change ``num-server-rounds``/``local-steps`` as long
    as their product stays the same, so that every variant gets the same total steps.
    """

    name: str
    kind: Kind = "federated"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("fedprox mu=1e-2", overrides={"strategy": "fedprox", "proximal-mu": 1e-2},
            description="FedProx, the upstream seed's mu"),
    Variant("fedprox mu=1e-3", overrides={"strategy": "fedprox", "proximal-mu": 1e-3},
            description="FedProx, zk0's first default"),
    Variant("fedprox mu=1e-4", overrides={"strategy": "fedprox", "proximal-mu": 1e-4},
            description="FedProx, weak proximal term"),
    Variant("fedavg", overrides={"strategy": "fedavg", "proximal-mu": 0.0},
            description="FedAvg (mu = 0)"),
    Variant("fedavgm m=0.9 lr=1", overrides={"strategy": "fedavgm", "proximal-mu": 0.0,
                                             "server-momentum": 0.9, "server-lr": 1.0},
            description="FedAvg + server momentum 0.9, server lr 1"),
    Variant("fedavgm m=0 lr=2", overrides={"strategy": "fedavgm", "proximal-mu": 0.0,
                                           "server-momentum": 0.0, "server-lr": 2.0},
            description="FedAvg with a server step of 2x the mean update: zk0's default"),
    # Flower's FedAdam moves each weight by about eta per round (m / sqrt(v) ~ 1), so eta must
    # be of the order of one round's update (~1e-2 here), not zk0's server-lr default of 1.0.
    Variant("fedadam lr=1e-2", overrides={"strategy": "fedadam", "proximal-mu": 0.0,
                                          "server-lr": 1e-2},
            description="FedAvg + server Adam, eta 1e-2"),
    Variant("centralized", kind="centralized",
            description="one policy on the pooled training episodes, same total steps"),
    Variant("local", kind="local",
            description="each site alone on its own data, rounds x local-steps steps"),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in DEFAULT_VARIANTS}


@dataclass(frozen=True)
class Study:
    """What every job of one study shares; part of each job's cache key."""

    out_dir: str
    data_dir: str
    rounds: int = 10
    local_steps: int = 20
    sites: int = 4
    batch_size: int = 8
    eval_samples: int = 64
    eval_every: int = 5
    eval_episodes: int = 2
    torch_threads: int = 1
    policy: str = POLICY

    def base_config(self, seed: int) -> dict[str, Any]:
        """Run-config overrides shared by every variant (eval settings identical for all)."""
        return {
            "policy": self.policy,
            "num-server-rounds": self.rounds,
            "local-steps": self.local_steps,
            "batch-size": self.batch_size,
            "eval-samples": self.eval_samples,
            "eval-every": self.eval_every,
            "min-sites": self.sites,
            "seed": seed,
            "keep-checkpoints": 1,
        }

    @property
    def total_steps(self) -> int:
        """Optimizer steps every variant gets, summed over sites."""
        return self.rounds * self.local_steps * self.sites


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
        return f"{safe}-{self.engine}-s{self.seed}"

    @property
    def result_path(self) -> Path:
        return Path(self.study.out_dir) / "jobs" / f"{self.slug}.json"

    def key(self) -> dict[str, Any]:
        """Everything the result depends on: a cached result is reused only if this matches."""
        return json.loads(json.dumps({"study": {k: v for k, v in asdict(self.study).items()
                                                if k != "out_dir"},
                                      "variant": asdict(self.variant), "seed": self.seed,
                                      "engine": self.engine}, default=dict))


# Data and configs ------------------------------------------------------------------------------
def ensure_data(data_dir: Path, spec) -> list[Path]:
    """Generate the demo sites once per study; regenerate only if the spec changed."""
    from demo_data import make_demo_datasets

    marker = data_dir / "demo_spec.json"
    wanted = asdict(spec)
    roots = [data_dir / f"site-{i}" for i in range(spec.num_sites)]
    have = json.loads(marker.read_text()) if marker.is_file() else None
    if have == wanted and all((r / "meta" / "info.json").is_file() for r in roots):
        return roots
    roots = make_demo_datasets(data_dir, spec, overwrite=True)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return roots


def node_configs(study: Study) -> list[dict[str, Any]]:
    """The sites' node configs, exactly as ``deploy.cluster_cli`` builds them for the cluster."""
    from deploy.cluster_cli import site_configs

    nodes = site_configs(Path(study.data_dir), study.sites, study.eval_episodes,
                         study.torch_threads)
    return [n.to_flwr() for n in nodes]


def run_config(study: Study, variant: Variant, seed: int, **extra: Any):
    """The full, validated RunConfig of a job (pyproject defaults + study + variant)."""
    from common.settings import RunConfig

    run = RunConfig.with_overrides({**study.base_config(seed), **variant.overrides, **extra})
    if run.total_steps * study.sites != study.total_steps:
        raise ValueError(
            f"variant {variant.name!r}: {run.num_server_rounds} rounds x {run.local_steps} steps "
            f"x {study.sites} sites != the study's {study.total_steps} total steps"
        )
    return run


# Jobs ------------------------------------------------------------------------------------------
def _federated_inprocess(job: Job) -> dict[str, Any]:
    from harness.inprocess_grid import run_inprocess

    runs = Path(job.study.out_dir) / "runs" / job.slug
    run = run_config(job.study, job.variant, job.seed, **{"output-dir": str(runs)})
    run_id = 1 + zlib.crc32(job.slug.encode()) % 10_000_000  # stable across processes
    run_dir = run_inprocess(run.to_flwr(), node_configs(job.study), run_id)
    history = json.loads((Path(run_dir) / "eval_history.json").read_text())
    return _from_history(history, str(run_dir))


def _federated_cluster(job: Job) -> dict[str, Any]:
    from deploy.cluster_cli import run_cluster

    run = run_config(job.study, job.variant, job.seed)
    overrides = {k: v for k, v in run.to_flwr().items() if k != "output-dir"}
    work = Path(job.study.out_dir) / "cluster" / job.slug
    out = run_cluster(work, job.study.sites, overrides, Path(job.study.data_dir),
                      eval_episodes=job.study.eval_episodes,
                      torch_threads=job.study.torch_threads)
    result = _from_history(out["history"], out["run_dir"])
    result["cluster_seconds"] = out["seconds"]
    return result


def _from_history(history: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
    """Final per-site MSE (global model after the last round) plus the curve and round 0."""
    per_site = {s: values[-1] for s, values in history["per_site"].items()}
    untrained = {s: values[0] for s, values in history["per_site"].items()}
    return {"per_site": per_site, "untrained": untrained, "curve": dict(history),
            "run_dir": run_dir}


def _sites(study: Study, run):
    from supernode.local_site import Site

    return [Site.open(node, run.to_flwr()) for node in node_configs(study)]


def _stats(sites) -> dict[str, Any]:
    """Exact normalization stats over these sites' training episodes (what stage 0 computes)."""
    from common.norm_stats import global_stats, merge_all

    cams = [k for k, f in sites[0].spec.items() if f["dtype"] in CAMERA_DTYPES]
    return global_stats(merge_all(site.moments() for site in sites), cams)


def _train_alone(
    study: Study, seed: int, train_sites, steps: int, stats
) -> tuple[Any, Any]:
    """Train one policy for ``steps`` on the pooled training episodes of ``train_sites``;
    return (LoadedPolicy, TrainResult).

    The sites' own ``train_round`` with one optimizer and one cosine schedule over all steps:
    the best a single trainer with this data and budget does with zk0's training code.
    """
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from supernode.training import train_round

    run = run_config(study, VARIANTS["fedavg"], seed)
    alone = run.model_copy(update={"num_server_rounds": 1, "local_steps": steps})
    bundle = train_sites[0].policy(train_sites[0].spec, stats, None)
    pooled = ConcatDataset([site.train_loader(1).dataset for site in train_sites])
    loader = DataLoader(pooled, batch_size=run.batch_size, shuffle=True,
                        drop_last=len(pooled) >= run.batch_size,
                        generator=torch.Generator().manual_seed(seed))
    result = train_round(bundle, loader, alone, server_round=1, proximal_mu=0.0)
    return bundle, result


def _evaluate(bundle, sites, run) -> dict[str, float]:
    """Held-out MSE on each site, exactly as a site's ClientApp evaluates the global model."""
    from supernode.evaluation import evaluate_action_mse

    return {
        site.node.site_name: evaluate_action_mse(
            bundle, site.eval_dataset(), run.eval_samples, run.eval_batch_size, run.seed
        ).action_mse
        for site in sites
    }


def _centralized(job: Job) -> dict[str, Any]:
    run = run_config(job.study, VARIANTS["fedavg"], job.seed)
    sites = _sites(job.study, run)
    stats = _stats(sites)
    untrained = _evaluate(sites[0].policy(sites[0].spec, stats, None), sites, run)
    bundle, result = _train_alone(job.study, job.seed, sites, job.study.total_steps, stats)
    return {"per_site": _evaluate(bundle, sites, run), "untrained": untrained,
            "steps": result.steps, "train_loss_last": result.loss_last}


def _local(job: Job) -> dict[str, Any]:
    """Each site trains alone with its own stats, then is scored on every site's held-out data."""
    run = run_config(job.study, VARIANTS["fedavg"], job.seed)
    sites = _sites(job.study, run)
    steps = job.study.rounds * job.study.local_steps
    matrix: dict[str, dict[str, float]] = {}
    for site in sites:
        bundle, _ = _train_alone(job.study, job.seed, [site], steps, _stats([site]))
        matrix[site.node.site_name] = _evaluate(bundle, sites, run)
    names = list(matrix)
    own = {s: matrix[s][s] for s in names}
    # Column = the held-out data of site s, scored by the other sites' local models.
    others = {s: statistics.fmean(matrix[m][s] for m in names if m != s) for s in names
              } if len(names) > 1 else {}
    return {"per_site": own, "others": others, "matrix": matrix, "steps": steps}


def run_job(job: Job) -> dict[str, Any]:
    """Run one job (reusing its cached result if the same job already ran) and save it.

    The global RNGs are seeded from the job's seed here: a federated site seeds each of its
    rounds itself (``Site.seed_round``), but the baselines call ``train_round`` directly
    (torch's global RNG draws SmolVLA's flow-matching noise), and Python's picks the order in
    which Flower's strategies sample the sites. Without this, two runs with the same seed differ.
    """
    import random

    import numpy as np
    import torch

    from common import atomic

    path = job.result_path
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == job.key():
            return cached
    threads = torch.get_num_threads()
    random.seed(job.seed)
    np.random.seed(job.seed)
    torch.manual_seed(job.seed)
    start = time.perf_counter()
    try:
        if job.variant.kind == "centralized":
            result = _centralized(job)
        elif job.variant.kind == "local":
            result = _local(job)
        elif job.engine == "cluster":
            result = _federated_cluster(job)
        else:
            result = _federated_inprocess(job)
    finally:
        torch.set_num_threads(threads)  # Site.open sets the node's thread count process-wide
    result |= {"key": job.key(), "variant": job.variant.name, "kind": job.variant.kind,
               "seed": job.seed, "engine": job.engine, "seconds": time.perf_counter() - start}
    atomic.write_json(path, result)
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


# Summary ---------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[Mapping[str, Any]], variants: Sequence[Variant],
              engine: Engine = "inprocess") -> dict[str, Any]:
    """Per variant: per-site MSE (mean/std over seeds), site mean, ratio to centralized.

    Ratios are taken seed by seed (same data order, same eval frames) before averaging; the
    goals are the issue's: ratio <= 1.10, and a site mean below local-only's on own data.
    """
    by = {(r["variant"], r["seed"]): r for r in results
          if r["engine"] == engine or r["kind"] != "federated"}
    seeds = sorted({r["seed"] for r in results})
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        fields = ({"per_site": "local (own)", "others": "local (others)"} if v.kind == "local"
                  else {"per_site": v.name})
        for field_name, label in fields.items():
            per_seed = {s: by[(v.name, s)][field_name] for s in seeds if (v.name, s) in by}
            if per_seed and all(per_seed.values()):
                rows[label] = _row(v, field_name, per_seed)
    central = next((r for r in rows.values() if r["kind"] == "centralized"), None)
    local = rows.get("local (own)")
    for row in rows.values():
        if central is not None:
            ratios = [row["site_mean_per_seed"][s] / central["site_mean_per_seed"][s]
                      for s in row["seeds"] if s in central["site_mean_per_seed"]]
            row["ratio"], row["ratio_std"] = _mean_std(ratios) if ratios else (None, None)
        if row["kind"] == "federated":
            row["within_goal"] = row.get("ratio") is not None and row["ratio"] <= GOAL_RATIO
            if local is not None:
                row["beats_local"] = row["mean"] < local["mean"]
    return {"rows": rows, "untrained": _untrained(results), "seeds": seeds}


def _row(variant: Variant, field_name: str, per_seed: Mapping[int, Mapping[str, float]]
         ) -> dict[str, Any]:
    """One table row: per-site mean/std over seeds, and the site mean per seed."""
    sites = sorted(next(iter(per_seed.values())))
    means = {s: statistics.fmean(v.values()) for s, v in per_seed.items()}
    stats = {site: _mean_std([v[site] for v in per_seed.values()]) for site in sites}
    mean, std = _mean_std(means.values())
    return {
        "variant": variant.name, "kind": variant.kind, "field": field_name,
        "seeds": sorted(per_seed), "per_seed": per_seed, "site_mean_per_seed": means,
        "per_site": {site: m for site, (m, _) in stats.items()},
        "per_site_std": {site: sd for site, (_, sd) in stats.items()},
        "mean": mean, "std": std,
    }


def _untrained(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The starting model's MSE (mean over seeds). Every run of one seed starts from the same
    model and scores the same frames, so their copies should agree: the spread says how well."""
    by_seed: dict[int, list[Mapping[str, float]]] = {}
    for r in results:
        if r.get("untrained"):
            by_seed.setdefault(r["seed"], []).append(r["untrained"])
    if not by_seed:
        return {}
    sites = sorted(next(iter(by_seed.values()))[0])
    first = {seed: found[0] for seed, found in by_seed.items()}
    spread = max(abs(f[s] - first[seed][s]) / first[seed][s]
                 for seed, found in by_seed.items() for f in found for s in sites)
    per_site = {s: statistics.fmean(first[seed][s] for seed in first) for s in sites}
    return {"per_site": per_site, "mean": statistics.fmean(per_site.values()),
            "max_relative_spread_within_seed": spread}


def cluster_check(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each variant x seed run both in-process and through the cluster, side by side."""
    inproc = {(r["variant"], r["seed"]): r for r in results if r["engine"] == "inprocess"}
    out = []
    for r in results:
        twin = inproc.get((r["variant"], r["seed"]))
        if r["engine"] != "cluster" or twin is None:
            continue
        a, b = statistics.fmean(twin["per_site"].values()), statistics.fmean(r["per_site"].values())
        out.append({
            "variant": r["variant"], "seed": r["seed"],
            "inprocess": twin["per_site"], "cluster": r["per_site"],
            "inprocess_mean": a, "cluster_mean": b, "relative_difference": (b - a) / a,
            "inprocess_seconds": twin["seconds"], "cluster_seconds": r["seconds"],
        })
    return out


# Report ----------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """The study as Markdown: machine, settings, one row per variant, the cluster check."""
    m, c, s = report["machine"], report["config"], report["summary"]
    rows = s["rows"]
    sites = sorted({site for r in rows.values() for site in r["per_site"]})
    lines = [
        "# zk0 learning quality: federated vs centralized vs local-only",
        "",
        machine_line(m),
        "",
        f"Command: `{report['command']}` · wall time {report['wall_seconds'] / 60:.1f} min "
        f"(the jobs, one after another: {report['job_seconds_total'] / 60:.1f} min; finished "
        "jobs are reused)",
        "",
        f"Policy `{c['policy']}` (lr {c['lr']:g}, cosine to 10% over the run), "
        f"{c['sites']} heterogeneous demo sites ({c['demo_spec']['episodes_per_site']} episodes "
        f"x {c['demo_spec']['frames_per_episode']} frames, {c['eval_episodes']} held out), "
        f"{c['rounds']} rounds x {c['local_steps']} local steps x batch {c['batch_size']}; "
        f"every variant {c['total_steps']} optimizer steps in total; seeds {s['seeds']}. "
        f"Held-out action MSE (real units², {c['eval_samples']} fixed frames per site, seed = "
        f"run seed), global model after the last round; mean ± std over seeds. Ratio: site mean "
        f"over centralized's site mean with the same seed. Untrained model: "
        f"{_fmt(s['untrained'].get('mean'))}.",
        "",
    ]
    lines += _table(rows, sites)
    lines += ["", "Variants: " + "; ".join(
        f"**{v['name']}**: {v['description']} {_overrides(v)}".strip()
        for v in report["variants"]) + "."]
    if report.get("explore"):
        e = report["explore"]
        lines += ["", f"## Exploration: more variants, seed(s) {e['seeds']} only", "",
                  "Every variant's runs with these seeds, the explored ones added; the ratio is "
                  "to centralized with the same seed.", ""]
        lines += _table(e["rows"], sites)
        lines += ["", "Explored: " + "; ".join(
            f"**{v['name']}** {_overrides(v)}" for v in report["explore_variants"]) + "."]
    if report.get("cluster_check"):
        lines += ["", "## Same configuration through the real TLS cluster", "",
                  "The same ServerApp and ClientApp code with the same seeds (every round is "
                  "seeded from run seed, round and site), once in one process and once as "
                  "SuperLink + SuperNodes over TLS, each ClientApp in its own process: what is "
                  "left is floating-point nondeterminism (thread counts differ). Times are wall "
                  "times on a shared machine.", "",
                  "| Variant | Seed | In-process site mean | Cluster site mean | Difference | "
                  "Largest per-site difference | In-process time | Cluster time |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k in report["cluster_check"]:
            site, worst = max(((x, k["cluster"][x] / v - 1) for x, v in k["inprocess"].items()),
                              key=lambda t: abs(t[1]))
            lines.append(
                f"| {k['variant']} | {k['seed']} | {_fmt(k['inprocess_mean'], 2)} | "
                f"{_fmt(k['cluster_mean'], 2)} | {100 * k['relative_difference']:+.2f}% | "
                f"{100 * worst:+.1f}% ({site}) | "
                f"{k['inprocess_seconds']:.0f} s | {k['cluster_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def _pm(value: float, std: float, several: bool, fmt: str = "{:,.1f}") -> str:
    """``value ± std`` over seeds, or the value alone for one seed (whose std means nothing)."""
    return fmt.format(value) + (f" ± {fmt.format(std)}" if several else "")


def _table(rows: Mapping[str, Mapping[str, Any]], sites: Sequence[str]) -> list[str]:
    """One Markdown row per variant: per-site and site-mean MSE, ratio, the issue's goals."""
    lines = [
        "| Variant | " + " | ".join(sites) + " | Site mean | Ratio to centralized | "
        f"<= {GOAL_RATIO:g}x centralized | < local (own) |",
        "|---|" + "---:|" * len(sites) + "---:|---:|---|---|",
    ]
    for label, r in rows.items():
        several = len(r["seeds"]) > 1
        cells = [_pm(r["per_site"][x], r["per_site_std"][x], several) for x in sites]
        ratio = ("" if r.get("ratio") is None
                 else _pm(r["ratio"], r["ratio_std"], several, "{:.2f}x"))
        goal = "" if "within_goal" not in r else ("yes" if r["within_goal"] else "NO")
        local = "" if "beats_local" not in r else ("yes" if r["beats_local"] else "NO")
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {_pm(r['mean'], r['std'], several)} | {ratio} | {goal} | {local} |")
    return lines


def _overrides(variant: Mapping[str, Any]) -> str:
    o = variant["overrides"]
    return f"(`{', '.join(f'{k}={v}' for k, v in o.items())}`)" if o else ""


def write(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``quality.json`` (everything, per seed and per round) and ``quality.md`` (the table)."""
    return write_files(report, to_markdown(report), out_dir / JSON_NAME, out_dir / MARKDOWN_NAME)


# Entry points ----------------------------------------------------------------------------------
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


def _parse_variant(text: str) -> Variant:
    """``NAME`` (a default variant) or ``NAME:key=value,key=value`` (a federated one)."""
    from common.settings import parse_overrides

    if ":" not in text:
        if text not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown variant {text!r}; known: {list(VARIANTS)}")
        return VARIANTS[text]
    name, _, spec = text.partition(":")
    return Variant(name, overrides=parse_overrides(spec.split(",")), description="custom")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(".zk0/quality"),
                   help="work folder: data, run folders, per-job results (cached)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR,
                   help="folder for quality.json and quality.md (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=0, help="0: twice per run")
    p.add_argument("--engine", choices=("inprocess", "cluster"), default="inprocess")
    p.add_argument("--variant", action="append", type=_parse_variant, default=[],
                   help="NAME or NAME:key=value,... (repeatable; default: all of "
                        + ", ".join(VARIANTS) + ")")
    p.add_argument("--explore", action="append", type=_parse_variant, default=[],
                   help="NAME:key=value,...: a variant run only with --explore-seeds "
                        "(repeatable)")
    p.add_argument("--explore-seeds", default="0", help="(default: %(default)s)")
    p.add_argument("--cluster-check", default="", metavar="VARIANT",
                   help="also run this variant (first seed) through the real TLS cluster")
    p.add_argument("--workers", type=int, default=1,
                   help="jobs in parallel, each in its own process (0: inline)")
    args = p.parse_args(argv)
    report = run_quality(
        args.out, _ints(args.seeds), args.rounds, args.local_steps,
        args.sites, args.engine, tuple(args.variant) or DEFAULT_VARIANTS,
        eval_every=args.eval_every, workers=args.workers, cluster_variant=args.cluster_check,
        explore=tuple(args.explore), explore_seeds=_ints(args.explore_seeds),
        results_dir=args.results, command="python -m bench.quality " + shlex.join(argv),
    )
    print(to_markdown(report))
    return 0 if all(math.isfinite(r["mean"]) for r in report["summary"]["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
