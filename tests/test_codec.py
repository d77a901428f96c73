"""The parameter codec: exact round trips, half precision, update encoding, digest refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array

from common import codec


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "expert.layer.0.weight": rng.normal(0, 0.05, (64, 32)).astype(np.float32),
        "expert.layer.0.bias": rng.normal(0, 0.01, (64,)).astype(np.float32),
        "state_proj.weight": rng.normal(0, 0.2, (16, 6)).astype(np.float32),
    }


def test_float32_round_trip_is_exact():
    state = _state()
    out = codec.decode(codec.encode(state, "float32"))
    assert list(out) == list(state)
    for k in state:
        np.testing.assert_array_equal(out[k], state[k])
        assert out[k].dtype == np.float32


def test_torch_tensors_are_accepted():
    state = {k: torch.from_numpy(v) for k, v in _state().items()}
    out = codec.decode(codec.encode(state, "float32"))
    np.testing.assert_array_equal(out["state_proj.weight"], state["state_proj.weight"].numpy())


@pytest.mark.parametrize(("dtype", "rel_tol", "bytes_per_param"),
                         [("float16", 1e-3, 2), ("bfloat16", 8e-3, 2), ("float32", 0, 4)])
def test_half_precision_halves_bytes_within_rounding(dtype, rel_tol, bytes_per_param):
    state = _state()
    payload = codec.encode(state, dtype)
    n = sum(v.size for v in state.values())
    # np.save adds a ~128-byte header per array
    assert n * bytes_per_param <= payload.nbytes <= n * bytes_per_param + 200 * len(state)
    out = codec.decode(payload)
    for k, v in state.items():
        np.testing.assert_allclose(out[k], v, rtol=rel_tol, atol=1e-6)


def test_bfloat16_travels_as_uint16_bits_matching_torch_rounding():
    state = _state()
    payload = codec.encode(state, "bfloat16")
    assert {a.dtype for a in payload.arrays.values()} == {"uint16"}
    out = codec.decode(payload)
    want = torch.from_numpy(state["state_proj.weight"]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(out["state_proj.weight"], want)


def test_update_encoding_keeps_precision_of_small_changes():
    base = _state(0)
    local = {k: v + np.float32(1e-4) * np.sign(v) for k, v in base.items()}
    payload = codec.encode(local, "float16", base=base)
    assert payload.meta["encoding"] == "update"
    out = codec.decode(payload, base=base)
    for k in base:
        # the 1e-4 change survives: error is fp16 rounding of the *update*, not of the weight
        np.testing.assert_allclose(out[k] - base[k], local[k] - base[k], rtol=2e-3, atol=1e-8)
    with pytest.raises(ValueError, match=r"needs the base weights"):
        codec.decode(payload)


def test_tampered_payload_is_refused_naming_the_parameter():
    payload = codec.encode(_state(), "float16")
    name = "expert.layer.0.bias"
    original = payload.arrays[name]
    data = bytearray(original.data)
    data[-1] ^= 0x01  # one flipped bit in the last value
    payload.arrays[name] = Array(
        dtype=original.dtype, shape=original.shape, stype=original.stype, data=bytes(data)
    )
    with pytest.raises(codec.PayloadIntegrityError, match=name):
        codec.decode(payload)


def test_swapped_arrays_are_refused():
    payload = codec.encode(_state(), "float32")
    a, b = "expert.layer.0.weight", "state_proj.weight"
    payload.arrays[a], payload.arrays[b] = payload.arrays[b], payload.arrays[a]
    with pytest.raises(codec.PayloadIntegrityError):
        codec.verify(payload)


def test_digest_count_mismatch_is_refused():
    payload = codec.encode(_state(), "float32")
    payload.meta["digests"] = list(payload.meta["digests"])[:-1]
    with pytest.raises(codec.PayloadIntegrityError, match=r"digests"):
        codec.verify(payload)


def test_unknown_wire_dtype_is_refused():
    with pytest.raises(ValueError, match=r"wire dtype"):
        codec.encode(_state(), "int8")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_accumulate_equals_weighted_sum_of_decoded_updates(dtype):
    """The server's in-place weighted mean reads the wire bytes directly: same as decoding."""
    base = _state(0)
    sites = [{k: v + 1e-3 * np.float32(i + 1) for k, v in _state(i + 1).items()}
             for i in range(3)]
    payloads = [codec.encode(s, dtype, base=base) for s in sites]
    weights = [0.5, 0.3, 0.2]
    acc = {k: v.copy() for k, v in base.items()}
    for p, w in zip(payloads, weights, strict=True):
        codec.accumulate(acc, p, w)
    want = {k: sum(w * codec.decode(p, base=base)[k] for p, w in zip(payloads, weights,
                                                                    strict=True))
            for k in base}
    for k in base:
        np.testing.assert_allclose(acc[k], want[k], rtol=1e-6, atol=1e-6)


def test_to_array_and_wire_view_match_flower():
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float16)
    ours, flowers = codec.to_array(x), Array(x)
    assert ours.data == flowers.data and ours.dtype == flowers.dtype
    np.testing.assert_array_equal(codec.wire_view(ours), x)
