"""Learning quality on the heterogeneous demo sites, federated against the baselines.

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

Modules: :mod:`~bench.quality.variants` (Variant, Study, the defaults),
:mod:`~bench.quality.jobs` (one job, cached; many in worker processes),
:mod:`~bench.quality.baselines` (centralized and local-only training),
:mod:`~bench.quality.summary` (rows, ratios), :mod:`~bench.quality.report` (JSON, Markdown),
:mod:`~bench.quality.runner` (a whole study; the ``python -m bench`` entry),
``__main__`` (the command line).
"""

from bench.quality.jobs import Job, run_job, run_jobs
from bench.quality.report import JSON_NAME, MARKDOWN_NAME, RESULTS_DIR, to_markdown, write
from bench.quality.runner import ensure_data, run, run_quality
from bench.quality.summary import GOAL_RATIO, cluster_check, summarize
from bench.quality.variants import (
    DEFAULT_VARIANTS,
    POLICY,
    VARIANTS,
    Study,
    Variant,
    node_configs,
    parse_variant,
    run_config,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "GOAL_RATIO",
    "JSON_NAME",
    "MARKDOWN_NAME",
    "POLICY",
    "RESULTS_DIR",
    "VARIANTS",
    "Job",
    "Study",
    "Variant",
    "cluster_check",
    "ensure_data",
    "node_configs",
    "parse_variant",
    "run",
    "run_config",
    "run_job",
    "run_jobs",
    "run_quality",
    "summarize",
    "to_markdown",
    "write",
]
