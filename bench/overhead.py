"""Benchmark 3: what federation costs on top of the training itself, through the real TLS
cluster, with every second of a round accounted for, for three ways a site can run its
messages side by side in one benchmark run.

A federated round (SuperLink behind its nginx entry, authenticated SuperNodes on 127.0.0.1,
process isolation) of the tiny preset at the default 25 local steps with 4 sites, against the
same optimizer steps run directly with LeRobot's own factory and loss on the same data in the
same benchmark run (overhead per round = round period - the direct time of all sites' steps);
then a one-site federation with 2 local steps: the fixed cost of a round for a lab on its own
machine; then that site's idle CPU (SuperNode + its executor, no run). The three paths:

- ``per-message``: Flower's own path, and zk0 before its site worker: Flower's SuperExec starts
  a new ``flwr-clientapp`` process for every message, which imports torch, LeRobot and HF
  ``datasets``, builds the policy and opens the dataset; SuperExec polling 1 s, ServerApp
  polling 2 s, the SuperNode's fixed 3 s sleep after an empty pull.
- ``relay worker``: zk0's previous design: a long-lived worker keeps all that loaded, the
  per-message ``flwr-clientapp`` relays each message to it over a Unix socket; SuperExec
  polling 0.25 s, ServerApp polling 0.2-1 s; Flower's fixed waits and one array per tensor.
- ``worker executor``: this design: the worker is the site's task executor on the SuperNode's
  runtime API (no process per message, no relay), the SuperNode's waits short or
  event-driven (:mod:`deploy.flower.supernode_waits`), one packed array per message
  (:mod:`common.packing`).

The first two run from the reference commit's own code (:data:`REFERENCE_COMMIT`, the last one
with the relay; ``git archive`` into a temporary folder, same venv, same data); without git
history they are left out and the table says so. For this design the breakdown of the measured
rounds, stage by stage, comes from the processes' timestamps (:mod:`bench.round_breakdown`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import BenchContext
from bench.cluster_runs import REPO, WORKER_KIND, RssSampler, demo_nodes, run_federation
from bench.results import Metric, Section
from bench.round_breakdown import STAGES, breakdown, cluster_logs, mean_stages
from common.settings import NodeConfig, RunConfig

POLICY = "smolvla-tiny"
STEPS = 25  # the default local steps (40 rounds x 25)
ROUNDS = 4  # round 1 also evaluates the initial model and builds the policy; 2..3 measured
ALONE_GOAL_SECONDS = 3.0  # goal: a one-site 2-step round
OVERHEAD_GOAL = 0.15  # goal: overhead share of a 25-step round, 4 sites on 2 cores
IDLE_SECONDS = 45.0
#: The last commit whose site worker was reached through a per-message relay ClientApp.
REFERENCE_COMMIT = "3dbac1279e7c131a463430fde84d043ef0417296"


@dataclass(frozen=True)
class SitePath:
    """One way of running the sites' messages, and where its code comes from."""

    label: str
    reference: bool  # run from REFERENCE_COMMIT's tree
    workers: bool
    superexec_poll: float | None  # None: Flower's default (1 s)
    run_config: dict[str, Any]  # the ServerApp's polling


PATHS = (
    SitePath("per-message", True, False, None,
             {"poll-min-seconds": 2.0, "poll-max-seconds": 2.0}),
    SitePath("relay worker", True, True, 0.25, {}),
    SitePath("worker executor", False, True, None, {}),
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


# -- the reference commit's paths ---------------------------------------------------------------

_REFERENCE_SCRIPT = """
import json, sys
from pathlib import Path
from bench.cluster_runs import RssSampler, run_federation
from common.settings import NodeConfig
a = json.loads(sys.argv[1])
nodes = [NodeConfig(**n) for n in a["nodes"]]
sampler = RssSampler() if a["sample"] else None
out = run_federation(Path(a["work"]), nodes, a["overrides"], sampler, workers=a["workers"],
                     superexec_poll=a["superexec_poll"], idle_seconds=a["idle_seconds"])
out["peaks"] = sampler.peaks if sampler else {}
print("ZK0-RESULT " + json.dumps(out))
"""


def reference_tree(into: Path) -> Path | None:
    """:data:`REFERENCE_COMMIT`'s files under ``into`` (None without that git history)."""
    if shutil.which("git") is None:
        return None
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e",
                            f"{REFERENCE_COMMIT}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        return None
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", REFERENCE_COMMIT],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {REFERENCE_COMMIT} failed")
    return into


def reference_federation(tree: Path, work: Path, nodes: list[NodeConfig], overrides: dict,
                         path: SitePath, *, sample: bool = False,
                         idle_seconds: float = 0.0) -> dict[str, Any]:
    """:func:`run_federation` of the reference tree, in its own process."""
    args = {"work": str(work), "overrides": overrides, "workers": path.workers,
            "superexec_poll": path.superexec_poll, "idle_seconds": idle_seconds,
            "sample": sample,
            "nodes": [{"site_name": n.site_name, "dataset_root": n.dataset_root,
                       "eval_episodes": n.eval_episodes, "torch_threads": n.torch_threads}
                      for n in nodes]}
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT, json.dumps(args)], cwd=tree,
                          env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("ZK0-RESULT "):
            return json.loads(line.removeprefix("ZK0-RESULT "))
    raise RuntimeError(f"reference run ({path.label}) failed, exit {done.returncode}:\n"
                       f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


# -- measuring -----------------------------------------------------------------------------------


def _round_starts(work: Path) -> dict[int, float]:
    """When (Unix time) each round started, from the ServerApp's ``round_started`` events in
    the run's log (``flwr log``, followed by the cluster): the same for every path's code."""
    import datetime as dt
    import re

    starts: dict[int, float] = {}
    for log in (work / "logs").glob("flwr-log-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if " round_started " in line and (m := re.search(r"\bround=(\d+)", line)):
                stamp = dt.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
                starts[int(m.group(1))] = stamp.timestamp()
    return starts


def _period(work: Path) -> float:
    """The mean round period (a round's start to the next one's) of the measured rounds: not
    round 1 (it also evaluates the initial model and builds the policy) and not the last (its
    period would run into the final evaluation)."""
    starts = _round_starts(work)
    periods = [starts[r + 1] - starts[r] for r in range(2, ROUNDS) if {r, r + 1} <= set(starts)]
    if not periods:
        raise RuntimeError(f"no round_started events for rounds 2..{ROUNDS} under {work}")
    return statistics.mean(periods)


def _federations(path: SitePath, work: Path, nodes: list[NodeConfig], overrides: dict,
                 tree: Path | None) -> dict[str, Any]:
    common = {**overrides, **path.run_config}
    full_cfg = {**common, "local-steps": STEPS}
    alone_cfg = {**common, "local-steps": 2}
    label = path.label.replace(" ", "-")
    if path.reference:
        assert tree is not None
        full = reference_federation(tree, work / f"{label}-full", nodes, full_cfg, path,
                                    sample=True)
        alone = reference_federation(tree, work / f"{label}-alone", nodes[:1], alone_cfg, path,
                                     idle_seconds=IDLE_SECONDS)
        return {"full": full, "alone": alone, "peaks": full.pop("peaks")}
    sampler = RssSampler()
    kw: dict[str, Any] = {"workers": path.workers}
    full = run_federation(work / f"{label}-full", nodes, full_cfg, sampler, **kw)
    alone = run_federation(work / f"{label}-alone", nodes[:1], alone_cfg,
                           idle_seconds=IDLE_SECONDS, **kw)
    names = [n.site_name for n in nodes]
    return {
        "full": full, "alone": alone, "peaks": sampler.peaks,
        "breakdown_full": breakdown(Path(full["run_dir"]),
                                    cluster_logs(work / f"{label}-full" / "logs", names)),
        "breakdown_alone": breakdown(Path(alone["run_dir"]),
                                     cluster_logs(work / f"{label}-alone" / "logs", names[:1])),
    }


def _breakdown_metrics(section: Section, what: str, rows: list[dict]) -> None:
    """One metric per stage: its mean seconds and share of the round period."""
    means = mean_stages(rows)
    if not means:
        section.add(Metric(f"breakdown, {what}: no complete round", 0.0, "s"))
        return
    period = means["period"]
    for key, label in STAGES:
        note = "what no timestamp covers" if key == "residue" else ""
        section.add(Metric(f"breakdown, {what}: {label}", means[key], "s", means[key] / period,
                           "share of the round", note=note))
    section.add(Metric(f"breakdown, {what}: round period (sum of the stages)", period, "s"))


def run(ctx: BenchContext) -> list[Section]:
    base = RunConfig.with_overrides({"policy": POLICY, "local-steps": STEPS})
    work = Path(tempfile.mkdtemp(prefix="zk0-overhead-"))
    nodes = demo_nodes(work / "data", ctx.sites)
    overrides = {"policy": POLICY, "num-server-rounds": ROUNDS, "eval-every": ROUNDS}
    tree = reference_tree(work / "reference")
    paths = [p for p in PATHS if tree is not None or not p.reference]

    torch.set_num_threads(os.cpu_count() or 1)
    load = [os.getloadavg()]
    direct = [lerobot_steps(n, base, STEPS) for n in nodes]
    compute_s = sum(direct)
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        t0 = time.perf_counter()
        out[path.label] = _federations(path, work, nodes, overrides, tree)
        out[path.label]["bench_seconds"] = time.perf_counter() - t0
        load.append(os.getloadavg())

    section = Section(
        "overhead",
        f"Federation overhead ({POLICY}, {ctx.sites} sites on one machine, {STEPS} local "
        f"steps x batch {base.batch_size} per site per round): per-message ClientApps, the "
        "relay worker and the worker as the site's executor",
        details={"direct_lerobot_seconds_per_site": direct, "cores": os.cpu_count(),
                 "load_average_before_and_after_each_path": load,
                 "reference_commit": REFERENCE_COMMIT if tree is not None else None,
                 "paths": {p.label: {"reference_commit": p.reference, "workers": p.workers,
                                     "superexec_poll": p.superexec_poll,
                                     "run_config": p.run_config} for p in paths}},
    )
    section.add(Metric("same steps run directly with lerobot (all sites, sequential)",
                       compute_s, "s"))
    if tree is None:
        section.add(Metric("per-message and relay worker rows: not run", 0.0, "",
                           note=f"no git history with {REFERENCE_COMMIT[:12]}"))
    idle_reference = None
    for path in paths:
        res = out[path.label]
        full, alone = res["full"], res["alone"]
        label = path.label.replace(" ", "-")
        round_s, alone_s = _period(work / f"{label}-full"), _period(work / f"{label}-alone")
        overhead_s = round_s - compute_s
        idle = 100 * (alone["idle_cpu"] or 0.0)
        if path.label == "relay worker":
            idle_reference = idle
        section.details[path.label] = {
            "round_seconds": [r["seconds"] for r in full["rounds"]],
            "alone_round_seconds": [r["seconds"] for r in alone["rounds"]],
            "measured_period_full": round_s, "measured_period_alone": alone_s,
            "cluster_start_seconds": full["cluster_start_seconds"],
            "peak_rss_bytes": res["peaks"], "idle_cpu_share_of_a_core": alone["idle_cpu"],
            "bench_seconds": res["bench_seconds"],
            "breakdown_full": res.get("breakdown_full"),
            "breakdown_alone": res.get("breakdown_alone"),
        }
        p = path.label
        section.add(
            Metric(f"{p}: federated round, {ctx.sites} sites x {STEPS} steps", round_s, "s",
                   round_s / compute_s, "direct lerobot"),
            Metric(f"{p}: overhead per round", overhead_s, "s", overhead_s / round_s,
                   "share of a round", goal=OVERHEAD_GOAL),
            Metric(f"{p}: 2-step round, one site alone (a lab on its own machine)", alone_s,
                   "s", alone_s / ALONE_GOAL_SECONDS, f"goal ({ALONE_GOAL_SECONDS:g} s)",
                   goal=1.0),
        )
        idle_metric = Metric(f"{p}: idle site CPU (SuperNode + executor, {IDLE_SECONDS:.0f} s)",
                             idle, "% of a core")
        if not path.reference and idle_reference:
            idle_metric = Metric(idle_metric.name, idle, "% of a core", idle / idle_reference,
                                 "relay worker's idle CPU", goal=1.0)
        section.add(idle_metric)
        for kind in (WORKER_KIND, "flwr-clientapp"):
            if kind in res["peaks"]:
                section.add(Metric(f"{p}: {kind} peak RSS", res["peaks"][kind], "bytes"))
    new = out.get("worker executor", {})
    if "breakdown_alone" in new:
        _breakdown_metrics(section, "one site alone, 2 steps", new["breakdown_alone"])
        _breakdown_metrics(section, f"{ctx.sites} sites x {STEPS} steps, the last site",
                           new["breakdown_full"])
    shutil.rmtree(work, ignore_errors=True)
    return [section]
