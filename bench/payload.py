"""Bytes on the wire per site per round: zk0's codec against the whole model in float32.

The reference is what a plain Flower + LeRobot federation exchanges, e.g. Flower's
``quickstart-lerobot`` example (its ``get_params`` sends every parameter of the policy's state
dict as float32, both ways, every round): for SmolVLA all ~450M parameters. zk0 sends only the
trainable parameters, optionally in half precision: the global weights down, the site's update
(local minus global) up. Everything here counts real wire bytes: the ``Array.data`` lengths
Flower would ship, produced by the very code each side runs (Flower's ``Array`` for the full
state dict, ``common.codec.encode`` for zk0), not parameter counts times 4.
"""

from __future__ import annotations

import gc

import torch
from flwr.app import Array

from bench import BenchContext
from bench.results import Metric, Section
from common import codec

WIRE_DTYPES = ("float32", "float16", "bfloat16")
GOAL = 1 / 8  # of the full float32 model, per direction
FULL_MODEL = "full model fp32 (Flower quickstart-lerobot)"


def full_model_bytes(policy: torch.nn.Module) -> tuple[int, int]:
    """(wire bytes, parameters) of the whole state dict as float32 Flower Arrays.

    Serialized one tensor at a time, as ``ArrayRecord(state_dict)`` would, without holding a
    second 1.8 GB copy of the model.
    """
    total, params = 0, 0
    for tensor in policy.state_dict().values():
        array = Array(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
        total += len(array.data)
        params += tensor.numel()
        del array
    return total, params


def _meta_chars(payload: codec.Payload) -> int:
    """Characters of codec metadata (hex digests, dtype, encoding) riding along: not counted
    in the wire bytes above, and small next to them."""
    return sum(
        sum(len(str(x)) for x in v) if isinstance(v, list) else len(str(v))
        for v in payload.meta.values()
    )


def run(ctx: BenchContext) -> list[Section]:
    policy = ctx.bundle().policy
    full, full_params = full_model_bytes(policy)
    ctx.release_policy()
    gc.collect()
    weights = ctx.trainable()
    # The site encodes torch tensors (trainable_state); the server its numpy copy.
    local = {k: torch.from_numpy(v) for k, v in ctx.site_state(0).items()}
    n_trainable = sum(v.size for v in weights.values())

    section = Section(
        "payload",
        f"Payload per site per round ({ctx.policy}: {full_params:,} parameters, "
        f"{n_trainable:,} trainable)",
        details={
            "policy": ctx.policy,
            "parameters": full_params,
            "trainable_parameters": n_trainable,
            "full_model_fp32_bytes": full,
            "goal_ratio": GOAL,
            "wire": {},
        },
    )
    section.add(
        Metric(
            "full model fp32 (Flower quickstart-lerobot), each direction",
            full,
            "bytes",
            1.0,
            FULL_MODEL,
            note="sent both ways every round by a full-model exchange",
        )
    )
    per_dtype = {}
    for wire in WIRE_DTYPES:
        down = codec.encode(weights, wire)
        up = codec.encode(local, wire, base=weights)
        per_dtype[wire] = (down.nbytes, up.nbytes)
        section.details["wire"][wire] = {
            "downlink_bytes": down.nbytes,
            "uplink_bytes": up.nbytes,
            "downlink_meta_chars": _meta_chars(down),
            "uplink_meta_chars": _meta_chars(up),
            "bytes_per_parameter": down.nbytes / n_trainable,
        }
        half = wire != "float32"
        for label, nbytes in (("downlink, weights", down.nbytes), ("uplink, update", up.nbytes)):
            section.add(
                Metric(
                    f"trainable {wire}: {label}",
                    nbytes,
                    "bytes",
                    nbytes / full,
                    FULL_MODEL,
                    goal=GOAL if half else None,
                )
            )
        del down, up
    down, up = per_dtype[ctx.wire_dtype]
    section.add(
        Metric(
            f"round total, both directions, trainable {ctx.wire_dtype} (run default)",
            down + up,
            "bytes",
            (down + up) / (2 * full),
            "full-model exchange: 2 x full model fp32",
            goal=GOAL,
            note=f"{(2 * full - down - up) / 1e9:.2f} GB saved per site per round",
        )
    )
    return [section]
