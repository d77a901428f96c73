"""Fuzzing the inputs a federation takes from outside: run config, node config, ``-c`` overrides,
Flower's config syntax, and the parameter codec's payloads.

Each property holds for arbitrary input (``hypothesis``): either the input is refused with the
module's own error (:class:`SettingsError`, :class:`PayloadIntegrityError`) or it is accepted
and means exactly what it says (it round-trips; a decoded payload has the declared shapes).
Never an unhandled exception, never garbage accepted in part. Bounded (``max_examples``, no
per-example deadline on a shared CI box) so the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec
from common.settings import (
    NodeConfig,
    RunConfig,
    SettingsError,
    flwr_config_pairs,
    flwr_config_value,
    parse_overrides,
)

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

DEFAULTS = RunConfig.defaults_from_pyproject()
RUN_KEYS = sorted(DEFAULTS)
NODE_KEYS = [f.replace("_", "-") for f in NodeConfig.model_fields]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=5), scalars, max_size=2))
keys = st.one_of(st.sampled_from(RUN_KEYS + NODE_KEYS), st.text(max_size=12))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


# -- run config and node config ------------------------------------------------------------


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_run_config_parse_refuses_or_round_trips(overrides):
    try:
        run = RunConfig.parse({**DEFAULTS, **overrides}, "run config")
    except SettingsError as err:
        assert str(err).startswith("run config") or "run config:" in str(err)
        return
    out = run.to_flwr()
    assert set(out) == set(RUN_KEYS)  # no unknown key slipped in
    for key, value in overrides.items():  # accepted means: exactly this value
        assert _same(out[key], value) or (isinstance(value, int) and out[key] == value)
        if isinstance(value, float):
            assert math.isfinite(value)
    assert RunConfig.parse(out, "run config") == run
    assert parse_overrides_round_trip(out) == run


def _typed(default: Any) -> st.SearchStrategy:
    """Values of a key's own type, edge cases included (inf, nan, huge, negative, empty)."""
    if isinstance(default, bool):
        return st.one_of(st.booleans(), st.integers(-1, 2))
    if isinstance(default, int):
        return st.one_of(st.integers(), st.floats(), st.booleans())
    if isinstance(default, float):
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers())
    return st.one_of(st.text(max_size=12), st.sampled_from(["", "fedprox", "float16", "keep"]))


@FUZZ
@given(st.sampled_from(RUN_KEYS).flatmap(lambda k: st.tuples(st.just(k), _typed(DEFAULTS[k]))))
def test_each_run_config_key_refuses_or_keeps_a_typed_value(case):
    key, value = case
    try:
        run = RunConfig.parse({**DEFAULTS, key: value}, "run config")
    except SettingsError as err:
        assert f"key '{key}'" in str(err) or "server-lr" in str(err), str(err)
        return
    got = run.to_flwr()[key]
    assert got == value and (not isinstance(value, float) or math.isfinite(value))
    assert parse_overrides_round_trip(run.to_flwr()) == run


def parse_overrides_round_trip(values: dict[str, Any]) -> RunConfig:
    """What ``flwr run -c`` would carry: Flower's syntax written, read back by ``-c`` (a
    value Flower's syntax cannot carry is refused by name, then the parsed config stands)."""
    try:
        pairs = flwr_config_pairs(values, "run config")
    except SettingsError as err:
        assert "run config: key '" in str(err)
        return RunConfig.parse(values, "run config")
    return RunConfig.parse(parse_overrides(pairs), "run config")


@FUZZ
@given(st.dictionaries(keys, values, max_size=6), st.text(max_size=20))
def test_node_config_parse_refuses_or_round_trips(values_, site):
    try:
        node = NodeConfig.parse({"site-name": site, **values_}, "node config")
    except SettingsError as err:
        assert "node config" in str(err)
        return
    assert node.site_name and node.site_name == values_.get("site-name", site)
    assert node.dataset_root or node.dataset_repo_id
    from flwr.common.config import parse_config_args

    assert NodeConfig.parse(parse_config_args([node.to_flwr_arg()]), "node config") == node


# Text that looks like config: digits, words, quotes, '=', '#', brackets, newlines.
config_text = st.text(alphabet=st.sampled_from(list("ab1.-_ =\"'#[]{}\n\te+")), max_size=16)


@FUZZ
@given(st.sampled_from(["lr", "local-steps", "policy", "x.y"]), config_text)
def test_parse_overrides_refuses_or_means_what_it_says(key, raw):
    """A value is one TOML value, or one bare word, or refused: never read in part."""
    import tomllib

    from flwr.common.config import parse_config_args

    item = f"{key}={raw}"
    try:
        value = parse_overrides([item])[key]
    except SettingsError as err:
        assert repr(item) in str(err)
        return
    text = raw.strip()
    try:
        whole = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        whole = None
    as_toml = whole == {"v": value} and "\n" not in text
    assert as_toml or (value == text and text and not any(c in text for c in " \t\n\"'#=")), (
        item, value)
    try:
        flower = parse_config_args([item])
    except Exception:  # Flower refuses it; zk0 took it as one bare word
        return
    if as_toml and not isinstance(value, dict | list):
        assert _same(flower[key], value)


@FUZZ
@given(st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=40)))
def test_flwr_config_value_round_trips_through_flowers_parser(value):
    from flwr.common.config import parse_config_args

    try:
        text = flwr_config_value(value, "k", "run config")
    except SettingsError as err:
        assert "run config: key 'k'" in str(err)
        return
    assert _same(parse_config_args([f"k={text}"])["k"], value)


# -- the parameter codec -------------------------------------------------------------------

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
states = st.dictionaries(
    st.text("abcdefgh.", min_size=1, max_size=8), shapes, min_size=1, max_size=3
)
meta_values = st.one_of(
    st.text(max_size=12), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans(),
    st.lists(st.text(max_size=70), max_size=4), st.lists(st.integers(0, 9), max_size=3),
)


def _encode(layout: dict[str, tuple], wire: str, seed: int, update: bool):
    rng = np.random.default_rng(seed)
    state = {k: rng.normal(size=s).astype(np.float32) for k, s in layout.items()}
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in layout.items()}
    return codec.encode(state, wire, base=base if update else None), base


def _redigest(arrays: ArrayRecord, meta: dict) -> codec.Payload:
    """A payload whose digests match its (mutated) bytes: a consistent sender, or a consistent
    forger. Only the layout checks stand between it and the model."""
    digests = [codec._array_digest(n, a) for n, a in arrays.items()]
    return codec.Payload(arrays, ConfigRecord({**meta, "digests": digests,
                                               "digest": codec._combined(digests)}))


@st.composite
def mutated_payloads(draw):
    layout = draw(states)
    wire = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    update = draw(st.booleans())
    payload, base = _encode(layout, wire, draw(st.integers(0, 2**16)), update)
    arrays = ArrayRecord({k: v for k, v in payload.arrays.items()})
    meta = dict(payload.meta)
    name = draw(st.sampled_from(sorted(layout)))
    kind = draw(st.sampled_from([
        "flip", "truncate", "extend", "garbage", "retype", "reshape", "drop", "extra",
        "meta", "meta-drop",
    ]))
    consistent = draw(st.booleans())  # re-digest after mutating the bytes
    data = arrays[name].data
    if kind == "flip":
        i = draw(st.integers(0, len(data) - 1))
        arrays[name] = Array(dtype=arrays[name].dtype, shape=arrays[name].shape,
                             stype=arrays[name].stype,
                             data=data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
    elif kind in ("truncate", "extend", "garbage"):
        blob = {"truncate": data[: draw(st.integers(0, len(data) - 1))],
                "extend": data + draw(st.binary(min_size=1, max_size=8)),
                "garbage": draw(st.binary(max_size=64))}[kind]
        arrays[name] = Array(dtype="float32", shape=(1,), stype=arrays[name].stype, data=blob)
    elif kind == "retype":
        dtype = draw(st.sampled_from([np.int8, np.float64, np.int32, np.uint16, np.float16]))
        arrays[name] = codec.to_array(np.zeros(layout[name], dtype=dtype))
    elif kind == "reshape":
        arrays[name] = codec.to_array(
            np.zeros(draw(shapes), dtype=codec._WIRE_NUMPY[wire]))
    elif kind == "drop":
        del arrays[name]
    elif kind == "extra":
        arrays["zz.extra"] = codec.to_array(np.zeros((2,), dtype=codec._WIRE_NUMPY[wire]))
    elif kind == "meta":
        meta[draw(st.sampled_from(["wire-dtype", "encoding", "digests", "digest"]))] = draw(
            meta_values)
        consistent = False
    else:
        meta.pop(draw(st.sampled_from(["wire-dtype", "encoding", "digests", "digest"])))
        consistent = False
    mutated = _redigest(arrays, meta) if consistent else codec.Payload(arrays, ConfigRecord(meta))
    return mutated, base, layout


@FUZZ
@given(mutated_payloads())
def test_mutated_payloads_raise_the_codecs_error_or_decode_to_the_declared_shapes(case):
    payload, base, layout = case
    with contextlib.suppress(codec.PayloadIntegrityError):
        codec.verify(payload)
    for given_base in (base, None):
        try:
            out = codec.decode(payload, base=given_base)
        except codec.PayloadIntegrityError:
            continue
        except ValueError as err:  # the caller's mistake, not the payload's
            assert "needs the base weights" in str(err) and given_base is None
            continue
        assert set(out) == set(payload.arrays.keys())
        for name, value in out.items():
            assert value.dtype == np.float32
            declared = codec.wire_view(payload.arrays[name]).shape
            assert value.shape == declared
            if payload.meta.get("encoding") == "update":
                assert value.shape == base[name].shape
    try:
        codec.check_layout(payload, layout)
    except codec.PayloadIntegrityError:
        return
    # the layout checks passed: names, shapes and dtype are the model's, so it aggregates
    acc = {k: np.zeros(s, np.float32) for k, s in layout.items()}
    codec.accumulate(acc, payload, 0.5)
    assert all(acc[k].shape == s for k, s in layout.items())


@FUZZ
@given(st.dictionaries(st.sampled_from(["arrays", "codec", "other"]),
                       st.sampled_from(["array", "config"]), max_size=3))
def test_from_content_names_what_is_missing(records):
    from flwr.app import RecordDict

    content = RecordDict({key: ArrayRecord() if kind == "array" else ConfigRecord()
                          for key, kind in records.items()})
    try:
        payload = codec.from_content(content)
    except codec.PayloadIntegrityError as err:
        assert "'arrays' ArrayRecord with 'codec'" in str(err)
        return
    assert isinstance(payload.arrays, ArrayRecord) and isinstance(payload.meta, ConfigRecord)


def test_fuzz_found_inf_and_partial_overrides_stay_refused():
    """The inputs the fuzzing above first tripped over, kept as plain regressions."""
    with pytest.raises(SettingsError, match="key 'lr'"):
        RunConfig.with_overrides({"lr": math.inf})
    with pytest.raises(SettingsError, match="key 'round-timeout'"):
        RunConfig.with_overrides({"round-timeout": math.nan})
    with pytest.raises(SettingsError, match="neither one TOML value"):
        parse_overrides(["num-server-rounds=1\nlocal-steps=5"])
    payload, _ = _encode({"w": (2,)}, "float16", 0, update=False)
    broken = codec.Payload(payload.arrays, ConfigRecord({**dict(payload.meta), "digests": 3}))
    with pytest.raises(codec.PayloadIntegrityError, match="'digests' is not a list"):
        codec.decode(broken)
