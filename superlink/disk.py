"""The server's disk: refuse an output folder that cannot hold the run before any work starts.

A run that has trained for hours and then cannot write its first checkpoint has wasted every
site's time. Two checks, each a clear error naming the folder:

1. :func:`check_output_dir`, before any site is contacted: the folder can be created and
   written (a probe file is written and removed; as root, permission bits do not stop writes,
   so only a real write tells), and its free space holds at least :func:`early_estimate` (the
   size of the pretrained checkpoint the policy starts from, when it is on local disk, else
   :data:`MIN_FREE_BYTES` for reports and logs).
2. :func:`check_room_for_checkpoints`, once the policy is built (after stage 0, before any
   training message): the free space holds the next checkpoint (its exact size: every
   parameter and buffer of the policy plus the server state). Less than the whole run will need
   (every round's checkpoint with ``keep-checkpoints = 0``) is a logged warning, since the
   operator may add space or prune while the run goes on.

A write that fails later anyway (another process fills the disk) is handled where it happens:
checkpoints and reports are written atomically, so the last good ones stay intact and the run
ends with the reason (see :mod:`superlink.checkpoints`).
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

from common import atomic
from common.logs import get_logger
from common.settings import RunConfig

log = get_logger("zk0.superlink")

MIN_FREE_BYTES = 64 * 2**20  # reports, logs, plots of a run
#: Server state per trainable parameter (bytes): the float32/float64 weights, plus Flower's
#: optimizer state (FedAvgM: momentum; FedOpt: previous weights, m_t, v_t).
STATE_BYTES_PER_TRAINABLE = {"fedavg": 8, "fedprox": 8, "fedavgm": 24}
OPTIMIZER_STATE_BYTES_PER_TRAINABLE = 32


class OutputDirError(RuntimeError):
    """The output folder cannot hold the run's outputs (not writable, or not enough space)."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_output_dir(folder: Path, need: int) -> None:
    """Create ``folder`` if needed, prove it writable, and check ``need`` bytes are free."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputDirError(
            f"output folder {folder}: {existing} is a file, not a folder; set output-dir "
            "(or resume-from) to a folder"
        )
    probe = folder / f".zk0-write-probe-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(probe, b"\0" * 4096)
    except OSError as err:
        raise OutputDirError(
            f"output folder {folder} is not writable ({type(err).__name__}: "
            f"{err.strerror or err}); set output-dir to a folder this ServerApp can write"
        ) from err
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputDirError(
            f"output folder {folder}: {_gb(free)} free, the run needs at least {_gb(need)} "
            "before it starts (one checkpoint of the policy, reports and logs); free some "
            "space or set output-dir to another disk"
        )


def early_estimate(run: RunConfig) -> int:
    """Bytes the run needs at least, known before any site answered: one float32 checkpoint
    of the pretrained weights it starts from if they are on local disk, plus reports."""
    weights = _local_weights(run)
    if weights is None:
        return MIN_FREE_BYTES
    try:
        return 4 * _safetensors_numel(weights) + MIN_FREE_BYTES
    except (OSError, ValueError, KeyError):
        return weights.stat().st_size + MIN_FREE_BYTES


def _local_weights(run: RunConfig) -> Path | None:
    from common.policy_factory import DEFAULT_PRETRAINED, PRESETS

    if run.policy in PRESETS:
        return None
    path = run.pretrained_path or DEFAULT_PRETRAINED.get(run.policy, "")
    if not path:
        return None
    local = Path(path).expanduser() / "model.safetensors"
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "model.safetensors")
    except Exception:  # not a repo id, no cache: nothing known before the policy is built
        return None
    return Path(cached) if isinstance(cached, str) else None


def _safetensors_numel(path: Path) -> int:
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total


def checkpoint_bytes(policy, trainable: int, strategy: str) -> int:
    """Size of one round's checkpoint: the policy's state dict as saved, plus server state."""
    model = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    per = STATE_BYTES_PER_TRAINABLE.get(strategy, OPTIMIZER_STATE_BYTES_PER_TRAINABLE)
    return model + per * trainable


def check_room_for_checkpoints(
    folder: Path, per_checkpoint: int, rounds_left: int, keep: int
) -> None:
    """Error unless the next checkpoint fits; warning unless the rest of the run fits."""
    free = shutil.disk_usage(folder).free
    need = per_checkpoint + MIN_FREE_BYTES
    if free < need:
        raise OutputDirError(
            f"output folder {folder}: {_gb(free)} free, one checkpoint of this policy needs "
            f"{_gb(per_checkpoint)}; free some space or set output-dir to another disk"
        )
    kept = rounds_left if keep == 0 else min(keep, rounds_left) + 1
    projected = per_checkpoint * kept + MIN_FREE_BYTES
    if free < projected:
        log.warning("disk_may_fill", folder=str(folder), free_gb=round(free / 1e9, 2),
                    needed_gb=round(projected / 1e9, 2), rounds_left=rounds_left,
                    keep_checkpoints=keep,
                    hint="set keep-checkpoints, or free space before the disk fills")
