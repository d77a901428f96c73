"""The two non-federated baselines, trained with the sites' own training and evaluation code.

- centralized: one policy on the pooled training episodes of every site, with the exact global
  normalization stats the federation computes; the upper bound federation aims at.
- local: each site alone, with its own stats, scored on its own held-out episodes and on the
  other sites'.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.quality.variants import VARIANTS, Study, node_configs, run_config
from common import features as feat


def _sites(study: Study, run):
    from supernode.local_site import Site

    return [Site.open(node, run.to_flwr()) for node in node_configs(study)]


def _stats(sites) -> dict[str, Any]:
    """Exact normalization stats over these sites' training episodes (what stage 0 computes)."""
    from common.norm_stats import global_stats, merge_all

    # The cameras as the federation finds them (superlink.federated_stats does the same).
    cams = feat.camera_keys(sites[0].spec)
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


def centralized(study: Study, seed: int) -> dict[str, Any]:
    """One policy on every site's pooled training episodes for the study's total steps, scored
    on each site's held-out episodes (and the untrained model, for reference)."""
    run = run_config(study, VARIANTS["fedavg"], seed)
    sites = _sites(study, run)
    stats = _stats(sites)
    untrained = _evaluate(sites[0].policy(sites[0].spec, stats, None), sites, run)
    bundle, result = _train_alone(study, seed, sites, study.total_steps, stats)
    return {"per_site": _evaluate(bundle, sites, run), "untrained": untrained,
            "steps": result.steps, "train_loss_last": result.loss_last}


def local(study: Study, seed: int) -> dict[str, Any]:
    """Each site trains alone with its own stats, then is scored on every site's held-out data."""
    run = run_config(study, VARIANTS["fedavg"], seed)
    sites = _sites(study, run)
    steps = study.rounds * study.local_steps
    matrix: dict[str, dict[str, float]] = {}
    for site in sites:
        bundle, _ = _train_alone(study, seed, [site], steps, _stats([site]))
        matrix[site.node.site_name] = _evaluate(bundle, sites, run)
    names = list(matrix)
    own = {s: matrix[s][s] for s in names}
    # Column = the held-out data of site s, scored by the other sites' local models.
    others = {s: statistics.fmean(matrix[m][s] for m in names if m != s) for s in names
              } if len(names) > 1 else {}
    return {"per_site": own, "others": others, "matrix": matrix, "steps": steps}

