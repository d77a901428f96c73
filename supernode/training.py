"""The local training loop a site runs each round: LeRobot's policy loss + the FedProx term.

Flower's FedProx strategy only broadcasts ``proximal-mu``; the term itself,
``(mu / 2) * ||w - w_global||^2`` over the parameters this site trains, is added here. The
learning-rate schedule runs on the federation's global step ((round - 1) * local steps + step),
so every site sees the same lr at the same point of the run, whatever the round.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common import atomic
from common.policy_factory import LoadedPolicy, learning_rate, trainable_parameters
from common.settings import RunConfig
from supernode.sample_guard import SKIPPED, SkipTally, batch_size_of


@dataclass(frozen=True)
class TrainResult:
    steps: int
    samples: int
    loss_mean: float  # policy loss (without the proximal term), mean over the round's steps
    loss_last: float
    proximal_mean: float
    seconds: float
    skipped: int = 0  # samples left out: unreadable (see supernode.sample_guard)
    skipped_summary: str = ""


def proximal_term(
    params: Mapping[str, torch.Tensor], global_params: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """``(mu / 2) * sum ||w - w_global||^2`` (FedProx, Li et al. 2018, eq. 2), by autograd.

    The definition; the training loop uses :func:`add_proximal_gradient`, which the tests hold
    to this.
    """
    device = next(iter(params.values())).device
    total = torch.zeros((), device=device)
    if mu == 0.0:
        return total
    for name, w in params.items():
        total = total + torch.sum((w - global_params[name]) ** 2)
    return 0.5 * mu * total


def add_proximal_gradient(
    params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float
) -> float:
    """Add the FedProx term's gradient ``mu * (w - w_global)`` to each ``.grad`` in place.

    Same gradient as back-propagating :func:`proximal_term`, without building its autograd
    graph over every trainable tensor (on an H200 that graph cost 20 % of a batch-8 SmolVLA
    step). Returns the term's value for logging.
    """
    if mu == 0.0:
        return 0.0
    with torch.no_grad():
        diffs = torch._foreach_sub([p.detach() for p in params], anchors)
        value = 0.5 * mu * float(sum(n.square() for n in torch._foreach_norm(diffs)))
        for p, d in zip(params, diffs, strict=True):
            if p.grad is None:
                p.grad = mu * d
            else:
                p.grad.add_(d, alpha=mu)
    return value


def lr_at(run: RunConfig, peak: float, global_step: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak over the whole federated run."""
    if run.warmup_steps and global_step < run.warmup_steps:
        return peak * (global_step + 1) / run.warmup_steps
    if run.lr_scheduler == "constant":
        return peak
    span = max(run.total_steps - run.warmup_steps, 1)
    progress = min(max(global_step - run.warmup_steps, 0) / span, 1.0)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _batches(loader: DataLoader) -> Iterator[dict]:
    while True:  # a small dataset is cycled: a round is a number of steps, not of epochs
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data loader yields no batch: no training frames")


def build_optimizer(
    bundle: LoadedPolicy, run: RunConfig, optimizer_state: Path | None = None
) -> torch.optim.Optimizer:
    """The policy preset's optimizer over the trainable parameters, at the run's peak lr, with
    the site's moments from ``optimizer_state`` when that file exists."""
    params = list(trainable_parameters(bundle.policy).values())
    preset = bundle.config.get_optimizer_preset()
    preset.lr = learning_rate(run, bundle.config)
    optimizer = preset.build(params)
    if optimizer_state is not None and optimizer_state.is_file():
        optimizer.load_state_dict(torch.load(optimizer_state, map_location=params[0].device))
    return optimizer


def train_round(
    bundle: LoadedPolicy,
    loader: DataLoader,
    run: RunConfig,
    server_round: int,
    proximal_mu: float,
    optimizer_state: Path | None = None,
    optimizer_start: Path | None = None,
    tally: SkipTally | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """Run ``run.local_steps`` optimizer steps from the global weights already in the policy.

    With ``optimizer_state``, the site's AdamW moments carry over from its previous round
    (read before from ``optimizer_start``, or from ``optimizer_state`` itself; written after to
    ``optimizer_state``, atomically): a fresh Adam makes its first steps ~lr-sized sign steps
    in every coordinate, which a 20-step round cannot amortize. ``optimizer``: one
    :func:`build_optimizer` made earlier and kept in memory (a site worker's), holding what
    the start file holds, so the file need not be read again.

    Samples the loader could not read (a guarded loader, :mod:`supernode.sample_guard`) are
    left out of their batch and counted in ``tally``; a batch with none left is no step. Past
    ``max-bad-sample-share`` of the round's planned samples ``tally`` raises ``BadDataError``.
    """
    policy, cfg = bundle.policy, bundle.config
    params = list(trainable_parameters(policy).values())
    anchors = [p.detach().clone() for p in params]
    preset = cfg.get_optimizer_preset()
    peak = learning_rate(run, cfg)
    if optimizer is None:
        moments_from = (optimizer_start or optimizer_state) if optimizer_state else None
        optimizer = build_optimizer(bundle, run, moments_from)
    clip = float(getattr(preset, "grad_clip_norm", 0.0) or 0.0)

    if tally is None:
        planned = run.local_steps * (loader.batch_size or 1)
        tally = SkipTally("training", planned, run.max_bad_sample_share, "the training data")

    policy.train()
    losses, proxes = [], []
    samples = 0
    start = time.perf_counter()
    batches = _batches(loader)
    first_step = (server_round - 1) * run.local_steps
    step = 0
    while step < run.local_steps:
        raw = next(batches)
        tally.add(raw.pop(SKIPPED, []) if isinstance(raw, dict) else [])
        size = batch_size_of(raw)
        if not size:
            continue  # every sample of this batch was unreadable: no step
        samples += size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(run, peak, first_step + step)
        step += 1
        batch = bundle.preprocessor(raw)
        loss, _ = policy.forward(batch)
        loss.backward()
        prox = add_proximal_gradient(params, anchors, proximal_mu)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        proxes.append(prox)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(
            f"training loss became non-finite in round {server_round} (lr {peak:g}); "
            "lower lr in the run config"
        )
    if optimizer_state is not None:
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        atomic.write_bytes(optimizer_state, buffer.getvalue(), mode=0o600)
    return TrainResult(
        steps=run.local_steps,
        samples=samples,
        loss_mean=sum(losses) / len(losses),
        loss_last=losses[-1],
        proximal_mean=sum(proxes) / len(proxes),
        seconds=time.perf_counter() - start,
        skipped=tally.skipped,
        skipped_summary=tally.summary(),
    )
