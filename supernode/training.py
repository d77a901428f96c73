"""The local training loop a site runs each round: LeRobot's policy loss + drift corrections.

Flower's FedProx strategy only broadcasts ``proximal-mu``; the term itself,
``(mu / 2) * ||w - w_global||^2`` over the parameters this site trains, is added here, either
as its gradient inside the optimizer (classic FedProx) or as a decoupled step after it
(``fedprox-decoupled``: AdamW rescales an L2 gradient per coordinate, the defect that made
decoupled weight decay necessary). SCAFFOLD's control-variate correction ``c - c_i`` is applied
the same two ways (:class:`DriftCorrection`). The learning-rate schedule runs on the
federation's global step ((round - 1) * local steps + step), so every site sees the same lr at
the same point of the run, whatever the round.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    lr_sum: float = 0.0  # sum of the steps' learning rates (SCAFFOLD's K * lr, schedule-aware)


@dataclass(frozen=True)
class DriftCorrection:
    """How a round corrects client drift, beyond the FedProx ``mu`` it is given.

    - ``proximal_step``: "gradient" adds ``mu * (w - w_global)`` to the gradient (classic
      FedProx), "decoupled" applies ``w -= lr * mu * (w - w_global)`` after each step;
    - ``control``: SCAFFOLD's ``c - c_i`` per trainable parameter (in the order of
      :func:`~common.policy_factory.trainable_parameters`), or None;
    - ``control_mode``: "gradient" adds it to the (clipped) gradient before the optimizer,
      as the paper does for SGD; "decoupled" applies ``w -= lr * (c - c_i)`` after each
      optimizer step, so AdamW neither rescales it nor keeps it in its moments.
    """

    proximal_step: Literal["gradient", "decoupled"] = "gradient"
    control: list[torch.Tensor] | None = None
    control_mode: Literal["decoupled", "gradient"] = "decoupled"

    def __post_init__(self) -> None:
        if self.proximal_step not in ("gradient", "decoupled"):
            raise ValueError(f"proximal-step {self.proximal_step!r}: expected gradient|decoupled")
        if self.control_mode not in ("gradient", "decoupled"):
            raise ValueError(
                f"scaffold-correction {self.control_mode!r}: expected decoupled|gradient"
            )


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
        diffs, value = _proximal_distance(params, anchors, mu)
        _add_to_grads(params, diffs, mu)
    return value


def _proximal_distance(
    params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float
) -> tuple[list[torch.Tensor], float]:
    """``w - w_global`` per parameter and the FedProx term's value (call under no_grad)."""
    diffs = torch._foreach_sub([p.detach() for p in params], anchors)
    return diffs, 0.5 * mu * float(sum(n.square() for n in torch._foreach_norm(diffs)))


def _add_to_grads(params: list[torch.Tensor], terms: list[torch.Tensor], scale: float) -> None:
    """``grad += scale * term`` per parameter, in place (a missing grad becomes the term)."""
    for p, t in zip(params, terms, strict=True):
        if p.grad is None:
            p.grad = scale * t
        else:
            p.grad.add_(t, alpha=scale)


def decoupled_proximal_step(
    params: list[torch.Tensor], anchors: list[torch.Tensor], lr: float, mu: float
) -> float:
    """``w -= lr * mu * (w - w_global)`` in place, after the optimizer's step.

    The pull toward the global weights as decoupled weight decay pulls toward zero: the same
    fraction ``lr * mu`` of every coordinate's distance, whatever AdamW's per-coordinate
    scaling. Returns the FedProx term's value ``(mu / 2) * ||w - w_global||^2`` before the pull.
    """
    if mu == 0.0:
        return 0.0
    if lr * mu >= 1.0:
        raise ValueError(
            f"decoupled proximal step: lr * mu = {lr * mu:g} >= 1 overshoots the global "
            "weights; lower proximal-mu"
        )
    with torch.no_grad():
        diffs, value = _proximal_distance(params, anchors, mu)
        torch._foreach_add_([p.detach() for p in params], diffs, alpha=-lr * mu)
    return value


def apply_control_step(params: list[torch.Tensor], control: list[torch.Tensor], lr: float) -> None:
    """SCAFFOLD's correction outside the optimizer: ``w -= lr * (c - c_i)`` in place."""
    with torch.no_grad():
        torch._foreach_add_([p.detach() for p in params], control, alpha=-lr)


def add_control_gradient(params: list[torch.Tensor], control: list[torch.Tensor]) -> None:
    """SCAFFOLD's correction as the paper writes it: ``grad += c - c_i`` before the step."""
    with torch.no_grad():
        _add_to_grads(params, control, 1.0)


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
    """The optimizer named by ``local-optimizer`` over the trainable parameters, at the run's
    peak lr, with the site's moments from ``optimizer_state`` when that file exists.

    "adamw" is the policy preset's own optimizer; "sgd"/"sgdm" are plain SGD without/with
    momentum 0.9 (and the preset's weight decay), the local steps SCAFFOLD's analysis assumes.
    """
    params = list(trainable_parameters(bundle.policy).values())
    preset = bundle.config.get_optimizer_preset()
    peak = learning_rate(run, bundle.config)
    if run.local_optimizer == "adamw":
        preset.lr = peak
        optimizer = preset.build(params)
    else:
        momentum = 0.9 if run.local_optimizer == "sgdm" else 0.0
        decay = float(getattr(preset, "weight_decay", 0.0) or 0.0)
        optimizer = torch.optim.SGD(params, lr=peak, momentum=momentum, weight_decay=decay)
    if optimizer_state is not None and optimizer_state.is_file():
        try:
            optimizer.load_state_dict(torch.load(optimizer_state, map_location=params[0].device))
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"{optimizer_state}: saved optimizer state does not fit local-optimizer "
                f"{run.local_optimizer!r} ({type(err).__name__}: {err}); remove the file"
            ) from None
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
    drift: DriftCorrection | None = None,
) -> TrainResult:
    """Run ``run.local_steps`` optimizer steps from the global weights already in the policy.

    With ``optimizer_state``, the site's optimizer moments carry over from its previous round
    (read before from ``optimizer_start``, or from ``optimizer_state`` itself; written after to
    ``optimizer_state``, atomically): a fresh Adam makes its first steps ~lr-sized sign steps
    in every coordinate, which a 20-step round cannot amortize. ``optimizer``: one
    :func:`build_optimizer` made earlier and kept in memory (a site worker's), holding what
    the start file holds, so the file need not be read again.

    Samples the loader could not read (a guarded loader, :mod:`supernode.sample_guard`) are
    left out of their batch and counted in ``tally``; a batch with none left is no step. Past
    ``max-bad-sample-share`` of the round's planned samples ``tally`` raises ``BadDataError``.
    ``drift``: the round's drift correction beyond the FedProx gradient (:class:`DriftCorrection`).
    """
    drift = drift or DriftCorrection()
    policy, cfg = bundle.policy, bundle.config
    params = list(trainable_parameters(policy).values())
    anchors = [p.detach().clone() for p in params]
    preset = cfg.get_optimizer_preset()
    peak = learning_rate(run, cfg)
    if optimizer is None:
        moments_from = (optimizer_start or optimizer_state) if optimizer_state else None
        optimizer = build_optimizer(bundle, run, moments_from)
    clip = float(getattr(preset, "grad_clip_norm", 0.0) or 0.0)
    control = drift.control
    if control is not None:
        control = [c.to(p.device, p.dtype) for c, p in zip(control, params, strict=True)]
    decoupled_prox = drift.proximal_step == "decoupled"

    if tally is None:
        planned = run.local_steps * (loader.batch_size or 1)
        tally = SkipTally("training", planned, run.max_bad_sample_share, "the training data")

    policy.train()
    losses, proxes = [], []
    lr_sum = 0.0
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
        lr = lr_at(run, peak, first_step + step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step += 1
        batch = bundle.preprocessor(raw)
        loss, _ = policy.forward(batch)
        loss.backward()
        prox = 0.0 if decoupled_prox else add_proximal_gradient(params, anchors, proximal_mu)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if control is not None and drift.control_mode == "gradient":
            add_control_gradient(params, control)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if decoupled_prox:
            prox = decoupled_proximal_step(params, anchors, lr, proximal_mu)
        if control is not None and drift.control_mode == "decoupled":
            apply_control_step(params, control, lr)
        lr_sum += lr
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
        lr_sum=lr_sum,
    )
