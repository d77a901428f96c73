"""Item 3: what federation costs on top of the training itself, through the real TLS cluster.

A federated round (SuperLink + 4 authenticated SuperNodes on 127.0.0.1, process isolation) at
the tiny preset's default steps per round, against the same optimizer steps run directly with
LeRobot's own factory and loss on the same data, in the same benchmark run on the same machine.
Overhead per round = round wall time - the direct time of all sites' steps. A second federation
with 2 local steps per round gives the fixed per-round cost, comparable with zk0's upstream
(140 s for a 2-step round); a third, with one site, gives that cost without 4 sites sharing
2 cores, as for a lab on its own machine.

Where the fixed cost goes: Flower 1.42 starts a new ``flwr-clientapp`` process for every message
(process isolation; its warm executors are Kubernetes-only and not for ClientApps), so every
round each site pays Python imports (flwr, torch, lerobot and HF ``datasets``: ~7 CPU-seconds on
these cores, profiled with py-spy), the policy build, and the polling of SuperNode (3 s),
SuperExec (1 s) and ServerApp (2 s). ``details`` splits each round into the time inside the
ClientApp's handler and the rest.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import BenchContext
from bench.cluster_runs import demo_nodes, run_federation
from bench.results import Metric, Section
from common.settings import NodeConfig, RunConfig

POLICY = "smolvla-tiny"
UPSTREAM_ROUND_SECONDS = 140.0  # zk0's upstream: a 2-step round
ROUNDS = 3  # round 1 also evaluates the initial model; rounds 2..3 only train


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


def run(ctx: BenchContext) -> list[Section]:
    base = RunConfig.with_overrides({"policy": POLICY})
    steps = base.local_steps
    work = Path(tempfile.mkdtemp(prefix="zk0-overhead-"))
    nodes = demo_nodes(work / "data", ctx.sites)
    overrides = {"policy": POLICY, "num-server-rounds": ROUNDS, "eval-every": ROUNDS}

    torch.set_num_threads(os.cpu_count() or 1)
    direct = [lerobot_steps(n, base, steps) for n in nodes]
    full = run_federation(work / "default", nodes, {**overrides, "local-steps": steps})
    short = run_federation(work / "short", nodes, {**overrides, "local-steps": 2})
    alone = run_federation(work / "alone", nodes[:1], {**overrides, "local-steps": 2})

    round_s = statistics.mean(r["seconds"] for r in _training_rounds(full))
    compute_s = sum(direct)
    overhead_s = round_s - compute_s
    short_s = statistics.mean(r["seconds"] for r in _training_rounds(short))
    alone_s = statistics.mean(r["seconds"] for r in _training_rounds(alone))
    in_round = [s for r in _training_rounds(full) for s in r["sites"].values()]
    handler = [max(s["setup_seconds"] + s["train_seconds"] for s in r["sites"].values())
               for r in _training_rounds(short)]
    section = Section(
        "overhead",
        f"Federation overhead ({POLICY}, {ctx.sites} sites on one machine, "
        f"{steps} local steps x batch {base.batch_size} per site per round)",
        details={
            "direct_lerobot_seconds_per_site": direct,
            "round_seconds": [r["seconds"] for r in full["rounds"]],
            "short_round_seconds": [r["seconds"] for r in short["rounds"]],
            "cluster_start_seconds": full["cluster_start_seconds"],
            "site_setup_seconds_mean": statistics.mean(s["setup_seconds"] for s in in_round),
            "site_train_seconds_mean": statistics.mean(s["train_seconds"] for s in in_round),
            "alone_round_seconds": [r["seconds"] for r in alone["rounds"]],
            # 2-step rounds: the slowest site's handler (setup + train) vs the whole round;
            # the rest is process start, imports, polling and transport.
            "short_round_handler_seconds": handler,
            "cores": os.cpu_count(),
        },
    )
    section.add(
        Metric("same steps run directly with lerobot (all sites, sequential)", compute_s, "s"),
        Metric("federated round on the TLS cluster", round_s, "s",
               round_s / compute_s, "direct lerobot"),
        Metric("overhead per round", overhead_s, "s", overhead_s / round_s, "share of a round",
               goal=0.10),
        Metric(f"2-step round (fixed per-round cost), {ctx.sites} sites", short_s, "s",
               short_s / UPSTREAM_ROUND_SECONDS, "upstream 2-step round (140 s)", goal=0.10),
        Metric("2-step round, one site alone (a lab on its own machine)", alone_s, "s",
               alone_s / UPSTREAM_ROUND_SECONDS, "upstream 2-step round (140 s)", goal=0.10),
    )
    return [section]
