"""Peak memory (RSS) of the ServerApp and of a site's ClientApp at the real size.

Runs one real federated round of the real SmolVLA architecture (``smolvla-random``: SmolVLM2-500M
dims, random weights) on the local TLS cluster, with 1 local step at batch 1 (real-size training
is for GPUs; the memory of holding, decoding, aggregating and checkpointing the model is what
this measures), while sampling the RSS of every process of the cluster.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import BenchContext
from bench.cluster_runs import WORKER_KIND, RssSampler, demo_nodes, run_federation
from bench.results import Metric, Section

SITES = 2  # two real-size sites already need ~12 GB on a 24 GB machine


def run(ctx: BenchContext) -> list[Section]:
    work = Path(tempfile.mkdtemp(prefix="zk0-memory-"))
    nodes = demo_nodes(work / "data", SITES, threads=1)
    sampler = RssSampler()
    out = run_federation(
        work / "cluster", nodes,
        {"policy": ctx.policy, "num-server-rounds": 1, "local-steps": 1, "batch-size": 1,
         "eval-samples": 1, "eval-batch-size": 1, "round-timeout": 3000.0},
        sampler=sampler,
    )
    params = out["meta"]["parameters"]
    payload = out["rounds"][0]["downlink_bytes_per_site"]
    section = Section(
        "memory",
        f"Peak RSS per process ({ctx.policy}: {params['total']:,} parameters, "
        f"{params['trainable']:,} trainable; {SITES} sites, 1 round)",
        details={"peaks_bytes": sampler.peaks, "payload_bytes_per_site": payload,
                 "round_seconds": out["rounds"][0]["seconds"]},
    )
    model_fp32 = 4 * params["total"]
    names = {"flwr-serverapp": "ServerApp", "flwr-clientapp": "ClientApp (a site)",
             "flower-superlink": "SuperLink", "flower-supernode": "SuperNode",
             WORKER_KIND: "site worker (a site, training)"}
    for kind, label in names.items():
        if kind in sampler.peaks:
            section.add(Metric(f"peak RSS {label}", sampler.peaks[kind], "bytes",
                               sampler.peaks[kind] / model_fp32, "full model fp32"))
    return [section]
