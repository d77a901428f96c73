"""SCAFFOLD's site side (Karimireddy et al. 2020): the site's control variate ``c_i``.

A train message of the ``scaffold`` strategy carries the server's control variate ``c`` next to
the global weights. For one round the site:

1. takes as its base the ``c_i`` the server last *counted* (see below), zeros at first;
2. trains with the correction ``c - c_i`` (:class:`~supernode.training.DriftCorrection`);
3. computes the paper's option II, ``c_i+ = c_i - c + (x - y_i) / sum(lr)`` (``K * lr`` in the
   paper, here the sum of the round's scheduled learning rates): with the correction applied
   ``c_i+`` is the site's mean step direction over the round, in the optimizer's own units
   (gradients for SGD, AdamW's normalized steps for AdamW), costing no extra pass over data;
4. sends ``c_i+ - c_i`` with the update, in ``wire-dtype`` through the same codec (digests,
   layout, checked by the server like the update).

``c_i`` lives on the site's disk next to its optimizer moments (``<state>/run-<id>/``, folder
0700, files 0600, written atomically). The delta a site sends in round ``r`` is kept *pending*
until a later message says the server counted round ``r`` for this site (``control-round``);
only then does it become the site's base. A reply the server rejected or never got is thus
forgotten on both sides, instead of leaving ``c`` and the sites' ``c_i`` disagreeing for the
rest of the run. The pending ``c_i+`` is stored as the server decodes it (base + the delta's
wire value), so the two sides agree to float32 rounding whatever the wire dtype.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import atomic, codec
from common.logs import get_logger
from common.protocol import CONTROL, CONTROL_CODEC

log = get_logger("zk0.supernode")

COMMITTED_FILE = "control.npz"
PENDING_FILE = "control-pending.npz"
_ROUND = "__round__"


@dataclass(frozen=True)
class ControlVariate:
    """A site's ``c_i`` and the round it was computed in (0: the initial zeros)."""

    round: int
    arrays: dict[str, np.ndarray]


def zeros_like(arrays: Mapping[str, np.ndarray]) -> ControlVariate:
    return ControlVariate(0, {k: np.zeros_like(v, dtype=np.float32) for k, v in arrays.items()})


def option_two(
    base: Mapping[str, np.ndarray],
    server: Mapping[str, np.ndarray],
    global_weights: Mapping[str, np.ndarray],
    local_weights: Mapping[str, object],
    lr_sum: float,
) -> dict[str, np.ndarray]:
    """SCAFFOLD's option II: ``c_i+ = c_i - c + (x - y_i) / lr_sum`` per parameter, float32."""
    if lr_sum <= 0.0:
        raise ValueError(f"SCAFFOLD control variate: the round's lr sum is {lr_sum}, need > 0")
    out = {}
    for name, c_i in base.items():
        y = local_weights[name]
        y = y.detach().to("cpu", torch.float32).numpy() if isinstance(y, torch.Tensor) else y
        x = np.asarray(global_weights[name], dtype=np.float32)
        out[name] = (c_i - server[name] + (x - np.asarray(y, np.float32)) / lr_sum).astype(
            np.float32
        )
    return out


class ControlStore:
    """The site's committed and pending control variates in its state folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.committed = self.folder / COMMITTED_FILE
        self.pending = self.folder / PENDING_FILE

    def _write(self, path: Path, value: ControlVariate) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **{_ROUND: np.int64(value.round)}, **value.arrays)
        atomic.write_bytes(path, buffer.getvalue(), mode=0o600)

    @staticmethod
    def _read(path: Path) -> ControlVariate | None:
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != _ROUND}
            return ControlVariate(int(data[_ROUND]), arrays)

    def base(self, counted_round: int, like: Mapping[str, np.ndarray]) -> ControlVariate:
        """The ``c_i`` the server counted in ``counted_round`` (0: none, so zeros).

        A pending ``c_i`` from that round is committed first; any other pending one was never
        counted and is dropped. Without the counted one on disk (state lost), zeros: the
        reply then says base round 0 and the server starts ``c`` over.
        """
        pending = self._read(self.pending)
        if pending is not None:
            if counted_round > 0 and pending.round == counted_round:
                self._write(self.committed, pending)
            self.pending.unlink()
        if counted_round == 0:
            return zeros_like(like)
        committed = self._read(self.committed)
        if committed is None or committed.round != counted_round:
            log.warning("control_variate_missing", folder=str(self.folder),
                        wanted_round=counted_round,
                        found_round=None if committed is None else committed.round)
            return zeros_like(like)
        layout = {k: v.shape for k, v in committed.arrays.items()}
        if layout != {k: v.shape for k, v in like.items()}:
            raise ValueError(
                f"{self.committed}: control variate layout differs from the model's; remove the "
                "file to start this site's control variate over"
            )
        return committed

    def stage(self, value: ControlVariate) -> None:
        self._write(self.pending, value)


@dataclass
class ControlRound:
    """One round of SCAFFOLD at a site: the server's ``c``, the site's base ``c_i``."""

    store: ControlStore
    server: dict[str, np.ndarray]
    base: ControlVariate
    wire_dtype: str

    @classmethod
    def from_message(
        cls, content, counted_round: int, folder: Path
    ) -> ControlRound | None:
        """The round's control variates, or None if the message carries none (not SCAFFOLD)."""
        if CONTROL not in content.array_records:
            return None
        payload = codec.from_content(content, CONTROL, CONTROL_CODEC)
        server = codec.decode(payload)  # verifies every digest first
        store = ControlStore(folder)
        return cls(store, server, store.base(counted_round, server),
                   str(payload.meta["wire-dtype"]))

    def correction(self, names: Sequence[str]) -> list[torch.Tensor]:
        """``c - c_i`` per trainable parameter, in ``names`` order."""
        missing = sorted(set(names) - set(self.server))
        if missing or len(names) != len(self.server):
            raise ValueError(
                f"control variate names differ from the trainable parameters: missing "
                f"{missing[:3]} ({len(self.server)} control arrays, {len(names)} parameters)"
            )
        return [torch.from_numpy(self.server[n] - self.base.arrays[n]) for n in names]

    def finish(
        self,
        server_round: int,
        global_weights: Mapping[str, np.ndarray],
        local_weights: Mapping[str, object],
        lr_sum: float,
    ) -> codec.Payload:
        """Compute ``c_i+``, keep it pending as the server will decode it; the delta to send."""
        new = option_two(self.base.arrays, self.server, global_weights, local_weights, lr_sum)
        delta = codec.encode(new, self.wire_dtype, base=self.base.arrays)
        as_received = codec.decode(delta, base=self.base.arrays)
        self.store.stage(ControlVariate(server_round, as_received))
        return delta
