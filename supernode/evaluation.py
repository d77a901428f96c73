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


@dataclass(frozen=True)
class EvalResult:
    action_mse: float  # mean over valid (frame, chunk step, action dim), real units squared
    samples: int  # frames evaluated
    seconds: float


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
    bundle: LoadedPolicy, dataset, samples: int, batch_size: int, seed: int
) -> EvalResult:
    """Predict the action chunk for fixed held-out frames and compare with recorded actions."""
    policy, cfg = bundle.policy, bundle.config
    policy.eval()
    start = time.perf_counter()
    indices = eval_indices(len(dataset), samples, seed)
    takes_noise = "noise" in inspect.signature(policy.predict_action_chunk).parameters
    generator = torch.Generator().manual_seed(seed)
    sq_err, count = 0.0, 0
    for lo in range(0, len(indices), batch_size):
        raw = _collate([dataset[i] for i in indices[lo : lo + batch_size]])
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
        samples=len(indices),
        seconds=time.perf_counter() - start,
    )
