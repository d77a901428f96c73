"""The references, trained with the sites' own training and evaluation code, with curves.

Each trains one policy with :func:`supernode.training.train_round` (the sites' AdamW preset,
lr and cosine schedule over the whole budget) in chunks of ``eval_every_steps`` and scores it
after every chunk, exactly as a site scores the global model (same frames, same noise):

- ``alone``: each site on its own training episodes with its own normalization stats, for the
  study's steps per site; scored on its own held-out episodes every chunk and on every site's
  at the end (``others``: how a site's own model does on the other sites' data);
- ``pooled, same clock``: the pooled training episodes of all sites with the exact global stats
  the federation computes, the same steps with the sites' summed batch;
- ``pooled, all the time``: the pooled data, sites x the steps at the sites' batch.

Curves are keyed by *steps per site*: for ``pooled, all the time`` that is its steps divided
by the number of sites (the same samples seen as the others at that point).
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.quality.variants import Study, node_configs, reference_config
from common import features as feat


def open_sites(study: Study, seed: int):
    from supernode.local_site import Site

    run = reference_config(study, seed, study.steps_per_site, study.eval_every_steps,
                           study.batch_size)
    return [Site.open(node, run.to_flwr()) for node in node_configs(study)]


def pooled_stats(sites) -> dict[str, Any]:
    """Exact normalization stats over these sites' training episodes (what stage 0 computes)."""
    from common.norm_stats import global_stats, merge_all

    # The cameras as the federation finds them (superlink.federated_stats does the same).
    cams = feat.camera_keys(sites[0].spec)
    return global_stats(merge_all(site.moments() for site in sites), cams)


def evaluate(bundle, sites, run) -> dict[str, float]:
    """Held-out MSE on each site, exactly as a site's ClientApp evaluates the global model."""
    from supernode.evaluation import evaluate_action_mse

    return {
        site.node.site_name: evaluate_action_mse(
            bundle, site.eval_dataset(), run.eval_samples, run.eval_batch_size, run.seed
        ).action_mse
        for site in sites
    }


def train_curve(study: Study, seed: int, train_sites, eval_sites, stats, steps: int,
                chunk: int, batch_size: int, per_site_divisor: int = 1):
    """Train one policy on the pooled training episodes of ``train_sites`` for ``steps`` steps
    of ``batch_size`` (one optimizer, one cosine schedule), scoring it on ``eval_sites`` after
    every ``chunk`` steps. Returns (LoadedPolicy, curve: {steps per site: {site: MSE}})."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from supernode.training import build_optimizer, train_round

    run = reference_config(study, seed, steps, chunk, batch_size)
    bundle = train_sites[0].policy(train_sites[0].spec, stats, None)
    pooled = ConcatDataset([site.train_loader(1).dataset for site in train_sites])
    loader = DataLoader(pooled, batch_size=batch_size, shuffle=True,
                        drop_last=len(pooled) >= batch_size,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = build_optimizer(bundle, run)
    curve = {0: evaluate(bundle, eval_sites, run)}
    for part in range(1, run.num_server_rounds + 1):
        train_round(bundle, loader, run, server_round=part, proximal_mu=0.0, optimizer=optimizer)
        curve[part * chunk // per_site_divisor] = evaluate(bundle, eval_sites, run)
    return bundle, curve


def _result(curve: dict[int, dict[str, float]], **more: Any) -> dict[str, Any]:
    last = max(curve)
    return {"per_site": curve[last], "untrained": curve[0],
            "curve": {str(k): v for k, v in sorted(curve.items())}, **more}


def pooled(study: Study, seed: int, same_clock: bool) -> dict[str, Any]:
    """``pooled, same clock`` (the sites' summed batch) or ``pooled, all the time``."""
    sites = open_sites(study, seed)
    stats = pooled_stats(sites)
    n = len(sites)
    if same_clock:
        _, curve = train_curve(study, seed, sites, sites, stats, study.steps_per_site,
                               study.eval_every_steps, study.batch_size * n)
    else:
        _, curve = train_curve(study, seed, sites, sites, stats, study.steps_per_site * n,
                               study.eval_every_steps * n, study.batch_size, per_site_divisor=n)
    return _result(curve)


def alone(study: Study, seed: int) -> dict[str, Any]:
    """Each site trains alone with its own stats; its curve on its own held-out episodes, and
    its final model scored on every site's."""
    run = reference_config(study, seed, study.steps_per_site, study.eval_every_steps,
                           study.batch_size)
    sites = open_sites(study, seed)
    matrix: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[int, float]] = {}
    for site in sites:
        name = site.node.site_name
        bundle, curve = train_curve(study, seed, [site], [site], pooled_stats([site]),
                                    study.steps_per_site, study.eval_every_steps,
                                    study.batch_size)
        curves[name] = {k: v[name] for k, v in curve.items()}
        matrix[name] = evaluate(bundle, sites, run)
    names = list(matrix)
    steps = sorted(next(iter(curves.values())))
    own = {s: matrix[s][s] for s in names}
    # Column = the held-out data of site s, scored by the other sites' own models.
    others = {s: statistics.fmean(matrix[m][s] for m in names if m != s) for s in names
              } if len(names) > 1 else {}
    return _result({k: {s: curves[s][k] for s in names} for k in steps},
                   per_site=own, others=others, matrix=matrix)


def run_reference(kind: str, study: Study, seed: int) -> dict[str, Any]:
    if kind == "alone":
        return alone(study, seed)
    if kind in ("pooled-same-clock", "pooled-all"):
        return pooled(study, seed, same_clock=kind == "pooled-same-clock")
    raise ValueError(f"unknown reference {kind!r}")

