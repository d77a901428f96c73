"""Benchmark: a real-size round over a slow, far link, against the wire's own floor.

One lab, in a network namespace behind a shaped link (:mod:`bench.shaped_link`: 100 Mbit/s,
40 ms round trip by default), runs ``zk0 supernode`` exactly as a lab does and dials the
coordinator's TLS entry (nginx in front of the SuperLink) across it. The policy is the real
SmolVLA architecture (``smolvla-random``: ~100 M trainable parameters travel, fp16 both ways,
~200 MB each way); one local step and no evaluation after round 1 keep the CPU's share small.

The floor is what the link itself allows: the bytes of a round each way at the link's rate,
plus a round trip each way. Measured against it, per round: the time outside the site's
training and evaluation (goal: at most 1.25x the floor), and the message path alone (the
ServerApp's send to the reply pulled), stage by stage (:mod:`bench.round_breakdown`). The
same round on an unshaped link (loopback) is the reference for what is not the wire.

Also reported: how many objects (5 MiB array chunks) crossed each way, and what each cost on
this link beyond its bytes. Needs root (namespaces, TUN, tc) and nginx.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import BenchContext
from bench.cluster_runs import REPO, demo_nodes
from bench.results import Metric, Section
from bench.round_breakdown import STAGES, breakdown, mean_stages
from bench.shaped_link import LinkSpec, ShapedLink

ROUNDS = 3  # round 1 evaluates the initial model (and the site builds its policy)
FLOOR_GOAL = 1.25
CHUNK_BYTES = 5 * 2**20  # Flower's FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
RUN = {"num-server-rounds": ROUNDS, "local-steps": 1, "batch-size": 1, "eval-samples": 1,
       "eval-batch-size": 1, "eval-every": ROUNDS, "trajectory-every": 0,
       "round-timeout": 3000.0, "min-sites": 1}


def _site_launcher(cluster, node, key: Path, work: Path, link: ShapedLink | None):
    """``zk0 supernode`` for the lab: inside the namespace when there is a link."""
    from deploy.cluster.local_cluster import free_port
    from deploy.flower.env import child_env
    from deploy.flower.processes import ManagedProcess

    args = [
        sys.executable, "-m", "deploy.cli", "supernode",
        "--superlink", cluster.site_address, "--ca-cert", str(cluster.certs.ca_cert),
        "--coordinator-pub", str(cluster.certs.coordinator_pub),
        "--site-key", str(key), "--site-name", node.site_name,
        "--dataset-root", node.dataset_root, "--work-dir", str(work / "site"),
        "--metrics-listen", "off", "--expect", "none", "--runtime-port", str(free_port()),
    ]  # fmt: skip
    cmd = link.inside(args) if link is not None else args
    env = child_env(work / "home", {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    return ManagedProcess(f"lab-{node.site_name}", cmd, work / "lab.log", env=env,
                          cwd=work).start()


def one_lab_round(work: Path, node, policy: str, link: ShapedLink | None) -> dict[str, Any]:
    """A federation of one lab (through ``link``, or on loopback); its round reports, stage
    breakdown and byte counts."""
    import json

    from deploy.cluster.local_cluster import LocalCluster

    cluster = LocalCluster(REPO, [node], work / "cluster", echo_run=False, proxy=True,
                           external_sites=True, startup_timeout=120,
                           entry_host=link.host if link is not None else None)
    with cluster:
        lab = _site_launcher(cluster, node, cluster.certs.site_keys[node.site_name][0], work,
                             link)
        try:
            cluster.wait_online([cluster.node_ids[node.site_name]], 600)
            result = cluster.run({**RUN, "policy": policy, "output-dir": str(work / "runs")},
                                 timeout=5400)
        finally:
            lab.stop(30)
    if not result.ok:
        raise RuntimeError(f"wire run ended {result.status}: {result.output[-3000:]}\n"
                           f"lab: {lab.log_tail()}")
    run_dir = work / "runs" / f"run-{result.run_id}"
    rounds = [json.loads(p.read_text()) for p in sorted((run_dir / "rounds").glob("*.json"))]
    logs = {node.site_name: (work / "site" / "logs" / "supernode.log",
                             work / "site" / "logs" / "worker.log")}
    return {"rounds": rounds, "breakdown": breakdown(run_dir, logs)}


def _path_seconds(row: dict[str, float]) -> float:
    """ServerApp send to reply pulled, without the site's handler (train, evaluate, decode,
    encode, residue): what the message path cost."""
    keys = ("send", "to_supernode", "executor_start", "to_supernode_reply", "to_superlink",
            "pull")
    return sum(row[k] for k in keys)


def run(ctx: BenchContext) -> list[Section]:
    if os.geteuid() != 0:
        raise SystemExit("bench wire needs root (a network namespace, TUN devices, tc)")
    spec = LinkSpec()
    work = Path(tempfile.mkdtemp(prefix="zk0-wire-"))
    [node] = demo_nodes(work / "data", 1)
    loopback = one_lab_round(work / "loopback", node, ctx.policy, None)
    with ShapedLink(spec) as link:
        shaped = one_lab_round(work / "shaped", node, ctx.policy, link)

    def summary(res: dict[str, Any]) -> dict[str, float]:
        rows = res["breakdown"]
        means = mean_stages(rows)
        measured = [r for r in res["rounds"] if r["round"] == rows[0]["round"]] if rows else []
        entry = measured[0] if measured else res["rounds"][-1]
        report = next(iter(entry["sites"].values()))
        down = entry["downlink_bytes_per_site"]
        up = entry["uplink_bytes"]
        site_work = report["train_seconds"] + report.get("eval_seconds", 0.0)
        return {**means, "down": down, "up": up, "site_work": site_work,
                "outside": means["period"] - site_work,
                "path": statistics.mean(_path_seconds(r) for r in rows)}

    near, far = summary(loopback), summary(shaped)
    floor = spec.floor_seconds(far["down"], far["up"])
    chunks = math.ceil(far["down"] / CHUNK_BYTES) + math.ceil(far["up"] / CHUNK_BYTES)
    section = Section(
        "wire",
        f"A real-size round over a shaped link ({ctx.policy}, one lab through the TLS entry, "
        f"{spec.rate_mbit:g} Mbit/s, {spec.rtt_ms:g} ms RTT, local-steps 1)",
        details={"link": vars(spec), "loopback": loopback, "shaped": shaped,
                 "floor_seconds": floor, "chunks_per_round": chunks},
    )
    section.add(
        Metric("bytes to the lab per round", far["down"], "bytes"),
        Metric("bytes from the lab per round", far["up"], "bytes"),
        Metric("wire floor: both ways at the link's rate + 2 round trips", floor, "s"),
        Metric("round outside the site's training and evaluation, shaped link", far["outside"],
               "s", far["outside"] / floor, "wire floor", goal=FLOOR_GOAL),
        Metric("message path alone (send to reply pulled, no handler), shaped link",
               far["path"], "s", far["path"] / floor, "wire floor"),
        Metric("round outside the site's training and evaluation, loopback (reference)",
               near["outside"], "s"),
        Metric(f"5 MiB chunks crossing the link per round ({chunks}): cost beyond their bytes",
               far["path"] - near["path"] - floor, "s", (far["path"] - near["path"]) / floor,
               "wire floor", note="shaped path - loopback path - floor; per chunk: "
               f"{(far['path'] - near['path'] - floor) / max(chunks, 1) * 1000:.0f} ms"),
    )
    for key, label in STAGES:
        section.add(Metric(f"breakdown, shaped link: {label}", far[key], "s",
                           far[key] / far["period"], "share of the round"))
    section.add(Metric("breakdown, shaped link: round period", far["period"], "s"))
    return [section]
