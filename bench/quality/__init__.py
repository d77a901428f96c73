"""The learning study: is a lab better off in the federation than alone, at the same steps?

Every row trains the same tiny SmolVLA for the same number of optimizer steps per site from
the same initial weights, and is scored the same way: held-out action MSE (real units squared)
of each site's held-out episodes, on the same ``eval_samples`` frames with the same denoising
noise (both fixed by the run seed), after every ``eval_every_steps`` steps (the curves).

- references (:mod:`~bench.quality.baselines`): *alone* (each site on its own data),
  *pooled, same clock* (the pooled data, the sites' summed batch, the same steps: the
  drift-free reference of a federated run) and *pooled, all the time* (sites x the steps);
- federated variants: zk0's unchanged ServerApp loop against its unchanged ClientApp, in one
  process (:mod:`harness.inprocess_grid`) or through the real TLS cluster
  (``engine="cluster"``), so what is measured is what a deployment does; with
  ``personalize-steps`` the sites fine-tune the final model within the same budget.

Two data scenarios (:data:`~bench.quality.variants.SCENARIO_PRESETS`): ``four-tasks`` (a task
per site) and ``shared-tasks`` (one task under each site's own conditions, few episodes each).
Run it (hours on 2 CPU cores; the cost is in the report)::

    HF_HUB_OFFLINE=1 python -m bench.quality --workers 2   # bench/results/quality.{json,md,png}

Every finished job is kept in ``--out``/jobs and reused when the same job is asked for again,
so a study can be resumed or extended: ``--variant 'NAME:key=value,...'`` adds a federated
variant to the main tables (every seed), ``--explore 'NAME:key=value,...'`` one run with
``--explore-seeds`` only, and ``--cluster-check NAME`` reruns one variant through the real
TLS cluster next to its in-process run.

Modules: :mod:`~bench.quality.variants` (Variant, Study, scenarios, the defaults),
:mod:`~bench.quality.jobs` (one job, cached; many in worker processes),
:mod:`~bench.quality.baselines` (the references, with curves),
:mod:`~bench.quality.summary` (rows, ratios, gains, curves, goals),
:mod:`~bench.quality.plots` (the curves' PNG), :mod:`~bench.quality.report` (JSON, Markdown),
:mod:`~bench.quality.runner` (a whole study; the ``python -m bench`` entry),
``__main__`` (the command line).
"""

from bench.quality.jobs import Job, run_job, run_jobs
from bench.quality.report import JSON_NAME, MARKDOWN_NAME, RESULTS_DIR, to_markdown, write
from bench.quality.runner import ensure_data, make_study, run, run_quality
from bench.quality.summary import DRIFT_GOAL, cluster_check, goals, summarize
from bench.quality.variants import (
    DEFAULT_VARIANTS,
    FEDERATED,
    POLICY,
    REFERENCES,
    SCENARIO_PRESETS,
    VARIANTS,
    Study,
    Variant,
    node_configs,
    parse_variant,
    run_config,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "DRIFT_GOAL",
    "FEDERATED",
    "JSON_NAME",
    "MARKDOWN_NAME",
    "POLICY",
    "REFERENCES",
    "RESULTS_DIR",
    "SCENARIO_PRESETS",
    "VARIANTS",
    "Job",
    "Study",
    "Variant",
    "cluster_check",
    "ensure_data",
    "goals",
    "make_study",
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
