"""Held-out evaluation: action MSE of the predicted action chunk, in the robot's real units.

A site evaluates on whole episodes it never trains on. The frames, and the flow-matching noise
SmolVLA starts its denoising from, are fixed by the run's seed, so the number for round 3 and
the number for round 7 differ only because the model did.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch

from common.policy_factory import LoadedPolicy
from supernode.sample_guard import SkipTally, guarded, split_problems


@dataclass(frozen=True)
class EvalResult:
    action_mse: float  # mean over valid (frame, chunk step, action dim), real units squared
    samples: int  # frames evaluated
    seconds: float
    skipped: int = 0  # held-out frames left out: unreadable (see supernode.sample_guard)
    skipped_summary: str = ""


def eval_indices(num_frames: int, samples: int, seed: int) -> list[int]:
    """The same frames every round: a seeded sample without replacement (all if fewer)."""
    if num_frames <= samples:
        return list(range(num_frames))
    rng = np.random.default_rng([seed, 0xE7A1])
    return sorted(int(i) for i in rng.choice(num_frames, size=samples, replace=False))


def _collate(items: list[dict]) -> dict:
    batch: dict = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


@torch.no_grad()
def evaluate_action_mse(
    bundle: LoadedPolicy,
    dataset,
    samples: int,
    batch_size: int,
    seed: int,
    tally: SkipTally | None = None,
) -> EvalResult:
    """Predict the action chunk for fixed held-out frames and compare with recorded actions.

    A frame that cannot be read is left out and counted in ``tally`` (the same frames every
    round, so rounds stay comparable); past ``tally``'s share it raises ``BadDataError``.
    Without ``tally`` any unreadable frame does.
    """
    policy, cfg = bundle.policy, bundle.config
    policy.eval()
    start = time.perf_counter()
    dataset = guarded(dataset)
    indices = eval_indices(len(dataset), samples, seed)
    if tally is None:
        tally = SkipTally("evaluation", len(indices), 0.0, "the held-out data")
    tally.planned = len(indices)
    takes_noise = "noise" in inspect.signature(policy.predict_action_chunk).parameters
    generator = torch.Generator().manual_seed(seed)
    sq_err, count, evaluated = 0.0, 0, 0
    for lo in range(0, len(indices), batch_size):
        items, problems = split_problems(dataset[i] for i in indices[lo : lo + batch_size])
        tally.add(problems)
        if not items:
            continue
        evaluated += len(items)
        raw = _collate(items)
        target = raw["action"].to(torch.float32)  # (B, T, D) real units
        pad = raw.get("action_is_pad")
        valid = ~pad if pad is not None else torch.ones(target.shape[:2], dtype=torch.bool)
        batch = bundle.preprocessor({k: v for k, v in raw.items()})
        policy.reset()
        if takes_noise:
            shape = (len(target), cfg.chunk_size, cfg.max_action_dim)
            noise = torch.randn(shape, generator=generator).to(cfg.device)
            chunk = policy.predict_action_chunk(batch, noise=noise)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed + lo)
                chunk = policy.predict_action_chunk(batch)
        pred = bundle.postprocessor(chunk).to(torch.float32).cpu()
        steps = min(pred.shape[1], target.shape[1])
        diff = (pred[:, :steps] - target[:, :steps]) ** 2
        mask = valid[:, :steps].unsqueeze(-1).expand_as(diff)
        sq_err += float(diff[mask].sum())
        count += int(mask.sum())
    return EvalResult(
        action_mse=sq_err / max(count, 1),
        samples=evaluated,
        seconds=time.perf_counter() - start,
        skipped=tally.skipped,
        skipped_summary=tally.summary(),
    )
