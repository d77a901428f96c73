"""The parameter codec: what the trainable parameters look like on the wire, both ways.

- Only trainable parameters travel (the frozen backbone is loaded locally at every node).
- Optional half precision: ``float16``, or ``bfloat16`` sent as its raw uint16 bits because
  Flower's ``Array`` refuses bfloat16.
- Server -> site carries weights. Site -> server carries the *update* (local weights minus the
  global weights the site received). The server adds the mean update to its own float32 copy of
  the global model, so half-precision rounding never accumulates from round to round: each
  round's downlink rounding is a one-off perturbation, never written back into the global.
- Every array carries a SHA-256 digest of its exact wire bytes, checked before anything is
  decoded: a corrupted or tampered payload is refused with the parameter's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

WireDtype = Literal["float32", "float16", "bfloat16"]
Encoding = Literal["weights", "update"]
_WIRE_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
# hashlib releases the GIL on large buffers: hashing arrays in threads uses every core.
_HASH_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="zk0-digest")


class PayloadIntegrityError(ValueError):
    """A payload's bytes do not match the digest its sender computed."""


@dataclass(frozen=True)
class Payload:
    """What travels in a message: the arrays and the codec's description of them."""

    arrays: ArrayRecord
    meta: ConfigRecord

    @property
    def nbytes(self) -> int:
        return sum(len(a.data) for a in self.arrays.values())

    @property
    def digest(self) -> str:
        return str(self.meta["digest"])


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


def _to_wire(x: np.ndarray, wire_dtype: WireDtype) -> np.ndarray:
    if wire_dtype == "bfloat16":  # round-to-nearest-even, done by torch; keep the bits
        return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.astype(_WIRE_NUMPY[wire_dtype], copy=False)


def _from_wire(x: np.ndarray, wire_dtype: str) -> np.ndarray:
    if wire_dtype == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(x).view(np.int16))
        return bits.view(torch.bfloat16).to(torch.float32).numpy()
    return x.astype(np.float32, copy=False)


def _array_digest(name: str, array: Array) -> str:
    h = hashlib.sha256(name.encode())
    h.update(array.data)
    return h.hexdigest()


def _digests(arrays: ArrayRecord) -> list[str]:
    return list(_HASH_POOL.map(_array_digest, arrays.keys(), arrays.values()))


def _combined(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def encode(
    state: Mapping[str, object],
    wire_dtype: WireDtype = "float32",
    *,
    base: Mapping[str, np.ndarray] | None = None,
) -> Payload:
    """Encode ``state`` (or ``state - base`` when ``base`` is given: an update) for the wire."""
    if wire_dtype not in _WIRE_NUMPY:
        raise ValueError(f"wire dtype {wire_dtype!r}: expected one of {sorted(_WIRE_NUMPY)}")
    arrays = ArrayRecord()
    for name, value in state.items():
        x = _as_numpy(value)
        if base is not None:
            x = x - base[name]
        arrays[name] = Array(_to_wire(x, wire_dtype))
    digests = _digests(arrays)
    meta = ConfigRecord(
        {
            "wire-dtype": wire_dtype,
            "encoding": "update" if base is not None else "weights",
            "digests": digests,
            "digest": _combined(digests),
        }
    )
    return Payload(arrays, meta)


def verify(payload: Payload) -> None:
    """Raise :class:`PayloadIntegrityError` unless every array matches its sender's digest."""
    expected = list(payload.meta.get("digests", []))
    names = list(payload.arrays.keys())
    if len(expected) != len(names):
        raise PayloadIntegrityError(
            f"payload lists {len(expected)} digests for {len(names)} arrays"
        )
    for name, want, got in zip(names, expected, _digests(payload.arrays), strict=True):
        if want != got:
            raise PayloadIntegrityError(
                f"parameter {name!r}: SHA-256 {got[:16]}... does not match the sender's "
                f"{want[:16]}...; payload corrupted or altered in transit"
            )


def decode(
    payload: Payload, *, base: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Verify, then return float32 weights (adding ``base`` back for an update payload)."""
    verify(payload)
    wire_dtype = str(payload.meta["wire-dtype"])
    is_update = payload.meta.get("encoding") == "update"
    if is_update and base is None:
        raise ValueError("an update payload needs the base weights it was computed against")
    out: dict[str, np.ndarray] = {}
    for name, array in payload.arrays.items():
        x = _from_wire(array.numpy(), wire_dtype)
        out[name] = x + base[name] if is_update else x
    return out


def from_content(content, arrays_key: str = "arrays", meta_key: str = "codec") -> Payload:
    """The payload inside a message's RecordDict, with a clear error when it is missing."""
    if arrays_key not in content.array_records or meta_key not in content.config_records:
        raise PayloadIntegrityError(
            f"message carries no '{arrays_key}' ArrayRecord with '{meta_key}' codec metadata"
        )
    return Payload(content.array_records[arrays_key], content.config_records[meta_key])
