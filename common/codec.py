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

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common.constant import SType
from pydantic import Field

from common.records import RecordModel, wire_view

WireDtype = Literal["float32", "float16", "bfloat16"]
Encoding = Literal["weights", "update"]
_WIRE_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
# hashlib releases the GIL on large buffers: hashing arrays in threads uses every core.
_HASH_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="zk0-digest")


class PayloadIntegrityError(ValueError):
    """A payload's bytes do not match the digest its sender computed."""


_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class CodecMeta(RecordModel):
    """The codec's record next to a payload's arrays (what :func:`encode` writes): the
    payload's dtype on the wire, what it holds, and the SHA-256 of each array."""

    wire_dtype: WireDtype
    encoding: Encoding
    digests: list[_Sha256] = Field(max_length=100_000)
    digest: _Sha256


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


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Casts of a few-MB tensor are memory-bound: one thread is as fast, and an OpenMP team
    stalls whenever a busy machine deschedules one of its threads. Leaves the cores to the
    digest threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _torch(x: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``x``'s memory (read-only payload views included: never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable"
        return torch.from_numpy(x)


def _to_wire(x: np.ndarray, wire_dtype: WireDtype) -> np.ndarray:
    # torch's casts are vectorized (F16C/AVX-512); numpy's float16 casts are ~10x slower.
    if wire_dtype == "bfloat16":  # round-to-nearest-even, done by torch; keep the bits
        return _torch(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if wire_dtype == "float16":
        return _torch(x).to(torch.float16).numpy()
    return x


def _wire_tensor(x: np.ndarray, wire_dtype: str) -> torch.Tensor:
    if wire_dtype == "bfloat16":
        return _torch(x.view(np.int16)).view(torch.bfloat16)
    return _torch(x)


def wire_tensor(array: Array, wire_dtype: str) -> torch.Tensor:
    """An array's values as a (read-only, zero-copy) tensor of its wire dtype."""
    return _wire_tensor(wire_view(array), wire_dtype)


def to_array(x: np.ndarray) -> Array:
    """``Array(x)`` in one copy: Flower's ``np.save`` into a BytesIO copies the data 3-4 times."""
    x = np.ascontiguousarray(x)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(x))
    data = b"".join((header.getvalue(), x.reshape(-1).view(np.uint8)))
    return Array(dtype=str(x.dtype), shape=tuple(x.shape), stype=SType.NUMPY, data=data)


def _wire_dtype(payload: Payload) -> str:
    """The payload's declared wire dtype, or :class:`PayloadIntegrityError`."""
    wire_dtype = payload.meta.get("wire-dtype")
    if not isinstance(wire_dtype, str) or wire_dtype not in _WIRE_NUMPY:
        raise PayloadIntegrityError(
            f"unknown wire dtype {wire_dtype!r}: expected one of {sorted(_WIRE_NUMPY)}"
        )
    return wire_dtype


def checked_view(name: str, array: Array, wire_dtype: str) -> np.ndarray:
    """:func:`wire_view` of one parameter whose bytes must be a ``wire_dtype`` .npy array;
    anything else is a :class:`PayloadIntegrityError` naming the parameter."""
    try:
        view = wire_view(array)
    except Exception as err:  # numpy's header parser raises ValueError, SyntaxError, ...
        raise PayloadIntegrityError(
            f"parameter {name!r}: not a valid .npy array ({type(err).__name__}: {err})"
        ) from None
    want = np.dtype(_WIRE_NUMPY[wire_dtype])
    if view.dtype != want:
        raise PayloadIntegrityError(
            f"parameter {name!r}: dtype {view.dtype}, wire dtype {wire_dtype} needs {want}"
        )
    return view


def _array_digest(name: str, array: Array) -> str:
    h = hashlib.sha256(name.encode())
    h.update(array.data)
    return h.hexdigest()


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
    pending = []
    with _one_torch_thread():
        for name, value in state.items():
            x = _as_numpy(value)
            if base is not None:
                x = (_torch(x) - _torch(_as_numpy(base[name]))).numpy()
            arrays[name] = array = to_array(_to_wire(x, wire_dtype))
            # hash this array while the next one is converted
            pending.append(_HASH_POOL.submit(_array_digest, name, array))
    digests = [f.result() for f in pending]
    meta = ConfigRecord(
        {
            "wire-dtype": wire_dtype,
            "encoding": "update" if base is not None else "weights",
            "digests": digests,
            "digest": _combined(digests),
        }
    )
    return Payload(arrays, meta)


def _verified(payload: Payload) -> Iterator[tuple[str, Array]]:
    """Each (name, array) once its digest matches, raising at the first that does not.

    Every digest is computed in the pool from the start, so the caller's work on array i
    (decoding) overlaps the hashing of the arrays after it; nothing unchecked is yielded.
    """
    expected = payload.meta.get("digests", [])
    if not isinstance(expected, list) or not all(isinstance(d, str) for d in expected):
        raise PayloadIntegrityError("payload metadata 'digests' is not a list of strings")
    names = list(payload.arrays.keys())
    if len(expected) != len(names):
        raise PayloadIntegrityError(
            f"payload lists {len(expected)} digests for {len(names)} arrays"
        )
    pending = [_HASH_POOL.submit(_array_digest, n, a) for n, a in payload.arrays.items()]
    try:
        for (name, array), want, future in zip(
            payload.arrays.items(), expected, pending, strict=True
        ):
            got = future.result()
            if want != got:
                raise PayloadIntegrityError(
                    f"parameter {name!r}: SHA-256 {got[:16]}... does not match the sender's "
                    f"{want[:16]}...; payload corrupted or altered in transit"
                )
            yield name, array
    finally:
        for future in pending:
            future.cancel()


def verify(payload: Payload) -> None:
    """Raise :class:`PayloadIntegrityError` unless every array matches its sender's digest."""
    for _ in _verified(payload):
        pass


def decode(
    payload: Payload, *, base: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Return float32 weights (adding ``base`` back for an update payload), each array
    verified before it is decoded and nothing returned unless all of them are.

    Whatever the bytes, the result is a :class:`PayloadIntegrityError` or arrays of exactly
    the shapes their headers declare (for an update: exactly ``base``'s names and shapes).
    """
    wire_dtype = _wire_dtype(payload)
    encoding = payload.meta.get("encoding")
    if encoding not in ("weights", "update"):
        raise PayloadIntegrityError(f"unknown encoding {encoding!r}: expected weights or update")
    is_update = encoding == "update"
    if is_update and base is None:
        raise ValueError("an update payload needs the base weights it was computed against")
    if is_update and set(payload.arrays.keys()) != set(base):
        raise PayloadIntegrityError("update parameter names differ from the base weights'")
    out: dict[str, np.ndarray] = {}
    with _one_torch_thread():
        for name, array in _verified(payload):
            view = checked_view(name, array, wire_dtype)
            x = _wire_tensor(view, wire_dtype).to(torch.float32, copy=True)
            if is_update:
                ref = np.asarray(base[name], dtype=np.float32)
                if tuple(ref.shape) != tuple(x.shape):
                    raise PayloadIntegrityError(
                        f"parameter {name!r}: update shape {tuple(x.shape)}, base "
                        f"{tuple(ref.shape)}"
                    )
                x.add_(_torch(ref))
            out[name] = x.numpy()
    return out


def accumulate(into: Mapping[str, np.ndarray], payload: Payload, factor: float) -> None:
    """``into[name] += factor * array`` in float32, in place, for every array of ``payload``.

    The server's weighted mean of updates, straight from the (verified) half-precision wire
    bytes: no float32 copy of any site's model, one read of each reply.
    """
    if set(payload.arrays.keys()) != set(into):
        raise ValueError("payload parameter names differ from the global model's")
    wire_dtype = str(payload.meta["wire-dtype"])
    with _one_torch_thread():
        for name, array in payload.arrays.items():
            x = _wire_tensor(wire_view(array), wire_dtype)
            acc = torch.from_numpy(into[name])
            if x.shape != acc.shape:
                raise ValueError(f"parameter {name}: shape {tuple(x.shape)} != {tuple(acc.shape)}")
            acc.add_(x.to(torch.float32), alpha=factor)


def squared_norm(payload: Payload) -> float:
    """``sum ||array||^2`` over the payload's wire values (as float32), e.g. an update's size."""
    wire_dtype = str(payload.meta["wire-dtype"])
    total = 0.0
    with _one_torch_thread():
        for array in payload.arrays.values():
            x = _wire_tensor(wire_view(array), wire_dtype).to(torch.float32)
            total += float(torch.linalg.vector_norm(x)) ** 2
    return total


def check_layout(payload: Payload, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`PayloadIntegrityError` unless the payload holds exactly the parameters of
    ``shapes`` (names and shapes) in its declared wire dtype; reads headers only."""
    wire_dtype = _wire_dtype(payload)
    names = set(payload.arrays.keys())
    if names != set(shapes):
        missing, extra = sorted(set(shapes) - names), sorted(names - set(shapes))
        raise PayloadIntegrityError(
            f"parameter names differ from the model's: missing {missing[:3]}, unexpected "
            f"{extra[:3]} ({len(missing)} missing, {len(extra)} unexpected)"
        )
    for name, array in payload.arrays.items():
        view = checked_view(name, array, wire_dtype)
        if tuple(view.shape) != tuple(shapes[name]):
            raise PayloadIntegrityError(
                f"parameter {name!r}: shape {tuple(view.shape)}, the model's is "
                f"{tuple(shapes[name])}"
            )


def from_content(content, arrays_key: str = "arrays", meta_key: str = "codec") -> Payload:
    """The payload inside a message's RecordDict, with a clear error when it is missing."""
    if arrays_key not in content.array_records or meta_key not in content.config_records:
        raise PayloadIntegrityError(
            f"message carries no '{arrays_key}' ArrayRecord with '{meta_key}' codec metadata"
        )
    return Payload(content.array_records[arrays_key], content.config_records[meta_key])
