"""Benchmark 3: what federation costs on top of the training itself, through the real TLS
cluster, for both ways a site can run its tasks, side by side in one benchmark run.

A federated round (SuperLink + 4 authenticated SuperNodes on 127.0.0.1, process isolation) at
the tiny preset's default steps per round, against the same optimizer steps run directly with
LeRobot's own factory and loss on the same data, in the same benchmark run on the same machine.
Overhead per round = round wall time - the direct time of all sites' steps. A second federation
with 2 local steps per round gives the fixed per-round cost; a third, with one site, gives that
cost without 4 sites sharing 2 cores, as for a lab on its own machine. Each is run for:

- ``per-message``: zk0 before the site worker, and a plain Flower SuperNode: Flower starts a new
  ``flwr-clientapp`` process for every message (its warm executors are Kubernetes-only and not
  for ClientApps), which imports torch, LeRobot and HF ``datasets`` (~7 CPU-seconds on these
  cores), builds the policy and opens the dataset; Flower's SuperExec polling (1 s) and the
  ServerApp's former fixed 2 s polling.
- ``worker``: each site's long-lived worker keeps all that loaded; the ClientApp only relays;
  the site SuperExec polls every 0.25 s and the ServerApp with backoff (0.2 .. 1 s).

Both pay the SuperNode's hard-coded 3 s sleep after an empty pull
(``flwr/supernode/start_client_internal.py``, no flag or variable) and the ``flwr-clientapp``
process start itself (Flower's own imports, ~1.8 CPU-seconds). After the one-site federation
the site's idle CPU (SuperNode + SuperExec + worker, no run) is measured over ``IDLE_SECONDS``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import BenchContext
from bench.cluster_runs import WORKER_KIND, RssSampler, demo_nodes, run_federation
from bench.results import Metric, Section
from common.settings import NodeConfig, RunConfig
from deploy.flower.env import SITE_SUPEREXEC_POLL_SECONDS

POLICY = "smolvla-tiny"
# a 2-step round of zk0's first design (per-message ClientApps, 2 s polling)
REFERENCE_ROUND_SECONDS = 140.0
ALONE_GOAL_SECONDS = 4.0  # goal: a one-site 2-step round
OVERHEAD_GOAL = 0.15  # goal: overhead share of a 50-step round, 4 sites on 2 cores
ROUNDS = 3  # round 1 also evaluates the initial model; rounds 2..3 only train
STEPS = 50  # local steps of the measured round (docs/explanation/benchmarks.md: at 50)
IDLE_SECONDS = 60.0


@dataclass(frozen=True)
class SitePath:
    """One way of running the sites' tasks, with the polling that goes with it."""

    label: str
    workers: bool
    superexec_poll: float | None  # None: Flower's default (1 s)
    run_config: dict[str, Any]  # ServerApp polling


PATHS = (
    SitePath("per-message", False, None, {"poll-min-seconds": 2.0, "poll-max-seconds": 2.0}),
    SitePath("worker", True, SITE_SUPEREXEC_POLL_SECONDS, {}),
)


def lerobot_steps(node: NodeConfig, run: RunConfig, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps with LeRobot alone (its factory, loss, AdamW)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from common.policy_factory import make_policy_config
    from supernode.site_dataset import split_episodes

    cfg = make_policy_config(run, "cpu")
    meta = LeRobotDatasetMetadata(node.repo_id, root=node.dataset_root)
    split = split_episodes(meta.total_episodes, node.eval_episodes, node.split_seed)
    dataset = LeRobotDataset(node.repo_id, root=node.dataset_root, episodes=list(split.train),
                             delta_timestamps=resolve_delta_timestamps(cfg, meta),
                             video_backend="pyav")
    policy = make_policy(cfg, ds_meta=meta)
    pre, _ = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    preset = cfg.get_optimizer_preset()
    optimizer = preset.build(policy.get_optim_params())
    loader = torch.utils.data.DataLoader(dataset, batch_size=run.batch_size, shuffle=True,
                                         drop_last=True)
    batches = iter(loader)
    policy.train()
    start = time.perf_counter()
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss, _ = policy.forward(pre(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), preset.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def _training_rounds(out: dict) -> list[dict]:
    return [r for r in out["rounds"] if r["round"] > 1]  # round 1 also evaluates


def _mean_round(out: dict) -> float:
    return statistics.mean(r["seconds"] for r in _training_rounds(out))


def _federations(path: SitePath, work: Path, nodes: list[NodeConfig], overrides: dict,
                 steps: int) -> dict[str, Any]:
    """The three federations of one path (the RSS of the 50-step one sampled)."""
    common = {**overrides, **path.run_config}
    kw = {"workers": path.workers, "superexec_poll": path.superexec_poll}
    sampler = RssSampler()
    return {
        "full": run_federation(work / f"{path.label}-default", nodes,
                               {**common, "local-steps": steps}, sampler, **kw),
        "short": run_federation(work / f"{path.label}-short", nodes,
                                {**common, "local-steps": 2}, **kw),
        "alone": run_federation(work / f"{path.label}-alone", nodes[:1],
                                {**common, "local-steps": 2}, idle_seconds=IDLE_SECONDS, **kw),
        "peaks": sampler.peaks,
    }


def run(ctx: BenchContext) -> list[Section]:
    steps = STEPS
    base = RunConfig.with_overrides({"policy": POLICY, "local-steps": steps})
    work = Path(tempfile.mkdtemp(prefix="zk0-overhead-"))
    nodes = demo_nodes(work / "data", ctx.sites)
    overrides = {"policy": POLICY, "num-server-rounds": ROUNDS, "eval-every": ROUNDS}

    torch.set_num_threads(os.cpu_count() or 1)
    load = [os.getloadavg()]
    direct = [lerobot_steps(n, base, steps) for n in nodes]
    compute_s = sum(direct)
    out = {}
    for path in PATHS:
        t0 = time.perf_counter()
        out[path.label] = _federations(path, work, nodes, overrides, steps)
        out[path.label]["bench_seconds"] = time.perf_counter() - t0
        load.append(os.getloadavg())

    section = Section(
        "overhead",
        f"Federation overhead ({POLICY}, {ctx.sites} sites on one machine, "
        f"{steps} local steps x batch {base.batch_size} per site per round): per-message "
        "ClientApps vs site workers",
        details={"direct_lerobot_seconds_per_site": direct, "cores": os.cpu_count(),
                 "load_average_before_and_after_each_path": load,
                 "paths": {p.label: {"workers": p.workers, "superexec_poll": p.superexec_poll,
                                     "run_config": p.run_config} for p in PATHS}},
    )
    section.add(Metric("same steps run directly with lerobot (all sites, sequential)",
                       compute_s, "s"))
    for path in PATHS:
        res = out[path.label]
        full, short, alone = res["full"], res["short"], res["alone"]
        round_s, short_s, alone_s = _mean_round(full), _mean_round(short), _mean_round(alone)
        overhead_s = round_s - compute_s
        in_round = [s for r in _training_rounds(full) for s in r["sites"].values()]
        section.details[path.label] = {
            "round_seconds": [r["seconds"] for r in full["rounds"]],
            "short_round_seconds": [r["seconds"] for r in short["rounds"]],
            "alone_round_seconds": [r["seconds"] for r in alone["rounds"]],
            "cluster_start_seconds": full["cluster_start_seconds"],
            "site_setup_seconds_mean": statistics.mean(s["setup_seconds"] for s in in_round),
            "site_train_seconds_mean": statistics.mean(s["train_seconds"] for s in in_round),
            # 2-step rounds: the slowest site's handler (setup + train) vs the whole round;
            # the rest is process start, imports, polling and transport.
            "short_round_handler_seconds": [
                max(s["setup_seconds"] + s["train_seconds"] for s in r["sites"].values())
                for r in _training_rounds(short)],
            "peak_rss_bytes": res["peaks"],
            "idle_cpu_share_of_a_core": alone["idle_cpu"],
            "bench_seconds": res["bench_seconds"],
        }
        p = path.label
        section.add(
            Metric(f"{p}: federated round on the TLS cluster", round_s, "s",
                   round_s / compute_s, "direct lerobot"),
            Metric(f"{p}: overhead per round", overhead_s, "s", overhead_s / round_s,
                   "share of a round", goal=OVERHEAD_GOAL),
            Metric(f"{p}: 2-step round (fixed per-round cost), {ctx.sites} sites", short_s, "s",
                   short_s / REFERENCE_ROUND_SECONDS, "first design's 2-step round (140 s)"),
            Metric(f"{p}: 2-step round, one site alone (a lab on its own machine)", alone_s,
                   "s", alone_s / ALONE_GOAL_SECONDS, "goal (4 s)", goal=1.0),
            Metric(f"{p}: idle site CPU (SuperNode + SuperExec + worker, {IDLE_SECONDS:.0f} s)",
                   100 * (alone["idle_cpu"] or 0.0), "% of a core"),
        )
        if WORKER_KIND in res["peaks"]:
            section.add(Metric(f"{p}: site worker peak RSS (one site)",
                               res["peaks"][WORKER_KIND], "bytes"))
        if "flwr-clientapp" in res["peaks"]:
            section.add(Metric(f"{p}: ClientApp process peak RSS", res["peaks"]["flwr-clientapp"],
                               "bytes"))
    return [section]
