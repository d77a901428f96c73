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


class ChunkPredictor:
    """The policy's action chunks for batches of dataset items, in real units, reproducibly.

    SmolVLA's flow matching starts from noise: it is drawn from one generator seeded with the
    run's seed, in call order, so the same frames get the same noise every round. Policies
    whose ``predict_action_chunk`` takes no noise argument get torch's RNG seeded with
    ``seed + offset`` for each batch.
    """

    def __init__(self, bundle: LoadedPolicy, seed: int) -> None:
        self.bundle = bundle
        self.seed = seed
        self.takes_noise = "noise" in inspect.signature(
            bundle.policy.predict_action_chunk
        ).parameters
        self.generator = torch.Generator().manual_seed(seed)
        bundle.policy.eval()

    @torch.no_grad()
    def __call__(self, raw: dict, offset: int = 0) -> torch.Tensor:
        """``(B, chunk, action dims)`` float32 on the CPU for a collated batch ``raw``."""
        policy, cfg = self.bundle.policy, self.bundle.config
        batch = self.bundle.preprocessor(dict(raw))
        policy.reset()
        if self.takes_noise:
            shape = (len(raw["action"]), cfg.chunk_size, cfg.max_action_dim)
            noise = torch.randn(shape, generator=self.generator).to(cfg.device)
            chunk = policy.predict_action_chunk(batch, noise=noise)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed + offset)
                chunk = policy.predict_action_chunk(batch)
        return self.bundle.postprocessor(chunk).to(torch.float32).cpu()


def collate(items: list[dict]) -> dict:
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
    start = time.perf_counter()
    dataset = guarded(dataset)
    indices = eval_indices(len(dataset), samples, seed)
    if tally is None:
        tally = SkipTally("evaluation", len(indices), 0.0, "the held-out data")
    tally.planned = len(indices)
    predict = ChunkPredictor(bundle, seed)
    sq_err, count, evaluated = 0.0, 0, 0
    for lo in range(0, len(indices), batch_size):
        items, problems = split_problems(dataset[i] for i in indices[lo : lo + batch_size])
        tally.add(problems)
        if not items:
            continue
        evaluated += len(items)
        raw = collate(items)
        target = raw["action"].to(torch.float32)  # (B, T, D) real units
        pad = raw.get("action_is_pad")
        valid = ~pad if pad is not None else torch.ones(target.shape[:2], dtype=torch.bool)
        pred = predict(raw, offset=lo)
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
