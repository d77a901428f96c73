"""Real-size SmolVLA local training on a GPU: what a lab's SuperNode spends per round.

Runs zk0's own training loop (``supernode.training.train_round``: LeRobot's SmolVLA loss + the
FedProx term) and evaluation (``supernode.evaluation``) on the real SmolVLA architecture
(SmolVLM2-500M backbone, random weights, built offline), with synthetic SO-100-shaped batches
(2 cameras 480x640, 6-D state/action, 50-step chunks). Measures steps/s, peak GPU memory, the
cost of the proximal term, evaluation time, and the GPU<->CPU copy of what travels.

    python -m bench.gpu_train --out results/gpu.json

Needs a CUDA GPU; nothing in the test suite calls it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from common.policy_factory import build_policy, load_trainable, trainable_state
from common.settings import RunConfig

CAMERAS = ("observation.images.top", "observation.images.wrist")
TASKS = ["pick the red cube and place it in the bowl", "stack the green block on the blue block"]


def features(height: int, width: int) -> dict:
    names = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos",
             "wrist_roll.pos", "gripper.pos"]
    out = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": names},
        "action": {"dtype": "float32", "shape": [6], "names": names},
    }
    for cam in CAMERAS:
        out[cam] = {"dtype": "video", "shape": [height, width, 3],
                    "names": ["height", "width", "channels"]}
    return out


class SyntheticLoader:
    """Batches shaped like LeRobotDataset's (uint8-range images as float in [0, 1])."""

    def __init__(self, batch_size: int, chunk: int, height: int, width: int, seed: int = 0):
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(seed)
        b = batch_size
        self.batch = {
            **{cam: torch.rand(b, 3, height, width, generator=g) for cam in CAMERAS},
            "observation.state": torch.randn(b, 6, generator=g) * 30,
            "action": torch.randn(b, chunk, 6, generator=g) * 30,
            "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool),
            "task": [TASKS[i % len(TASKS)] for i in range(b)],
        }

    def __iter__(self):
        while True:
            yield {k: (v.clone() if isinstance(v, torch.Tensor) else list(v))
                   for k, v in self.batch.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    batch_size: int, steps: int, mu: float, height: int, width: int,
    policy: str = "smolvla-random", device: str = "cuda",
) -> dict:
    from supernode.training import train_round

    run = RunConfig.with_overrides({"policy": policy, "local-steps": steps,
                                    "batch-size": batch_size, "proximal-mu": mu,
                                    "num-server-rounds": 1, "lr-scheduler": "constant"})
    rng = np.random.default_rng(0)
    stats = {  # what the federated stats stage would produce (no Flower needed here)
        k: {"mean": rng.normal(0, 10, 6), "std": rng.uniform(5, 30, 6),
            "min": np.full(6, -100.0), "max": np.full(6, 100.0)}
        for k in ("action", "observation.state")
    }
    t0 = time.perf_counter()
    bundle = build_policy(run, features(height, width), stats, device)
    build_s = time.perf_counter() - t0
    chunk = bundle.config.chunk_size
    loader = SyntheticLoader(batch_size, chunk, height, width)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    warm = train_round(bundle, loader, run.model_copy(update={"local_steps": 2}), 1, mu)
    _sync(device)
    t0 = time.perf_counter()
    result = train_round(bundle, loader, run, 1, mu)
    _sync(device)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = trainable_state(bundle.policy)  # GPU -> CPU copy of what travels
    load_trainable(bundle.policy, state)  # and back
    copy_s = time.perf_counter() - t0

    bundle.policy.eval()
    batch = bundle.preprocessor(next(iter(loader)))
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        bundle.policy.predict_action_chunk(batch)
    _sync(device)
    infer_s = time.perf_counter() - t0
    out = {
        "batch_size": batch_size, "steps": steps, "proximal_mu": mu,
        "image": [height, width],
        "build_seconds": round(build_s, 2),
        "steps_per_second": round(steps / train_s, 3),
        "seconds_per_step": round(train_s / steps, 4),
        "samples_per_second": round(steps * batch_size / train_s, 2),
        "loss_first": round(warm.loss_mean, 4), "loss_last": round(result.loss_last, 4),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.startswith("cuda") else None,
        "trainable_roundtrip_seconds": round(copy_s, 3),
        "trainable_parameters": sum(v.numel() for v in state.values()),
        "predict_chunk_seconds": round(infer_s, 3),
    }
    del bundle
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_train.json"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--policy", default="smolvla-random")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --device cpu --policy smolvla-tiny for a dry run)")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor()
    results = {
        "device": name, "torch": torch.__version__,
        "python": platform.python_version(), "runs": [],
    }
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        for mu in (0.0, 1e-3):
            r = measure(bs, args.steps, mu, args.height, args.width, args.policy, args.device)
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
