"""Every update is checked before aggregation, under every strategy: finite values and the
norm rule (a round short of ``min-replies`` moving no state: tests/test_weights_from_evidence.py);
a reply to another round's message is never aggregated; and a strategy's state survives a
save/load to disk bit for bit (what a resumed run continues from).

Strategy-level, no policy: the same helpers as tests/test_strategy.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message
from test_strategy import EXAMPLES, REFERENCES, SITES, Nodes, _global, _local, _reply, _sent, _zk0

from common import codec
from superlink import server_state
from superlink.strategy import TRAIN, update_checks

NAMES = list(SITES.values())  # s0, s1, s2


def _round(strategy, server_round, base, *, bad=None, wire="float32", only=None):
    """Configure a round and answer it: every site sends its deterministic update, except
    ``bad`` (site -> local weights to send instead); ``only`` limits who answers."""
    messages = _sent(strategy.configure_train(
        server_round, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(),
        Nodes(SITES)))
    for msg in messages:  # a grid's ids are unique across rounds
        msg.metadata.__dict__["_message_id"] = f"r{server_round}-{msg.metadata.message_id}"
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        if only is not None and SITES[node] not in only:
            continue
        local = (bad or {}).get(SITES[node], _local(base, node, server_round))
        replies.append(_reply(msg, codec.encode(local, wire, base=base), EXAMPLES[node]))
    return messages, replies


def _with_nonfinite(base, value):
    local = _local(base, 202, 1)
    local["a.weight"][0, 0] = value
    return local


@pytest.mark.parametrize("name", list(REFERENCES))
def test_nan_update_with_a_valid_digest_is_dropped_under_every_strategy(name):
    strategy = _zk0(REFERENCES[name][0])
    base = _global()
    _, replies = _round(strategy, 1, base, bad={"s1": _with_nonfinite(base, np.nan)})
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
    judged = strategy.replies(TRAIN, 1)
    assert sorted(judged.reports) == ["s0", "s2"]
    [failure] = judged.failures
    assert (failure.site, failure.kind) == ("s1", "nonfinite")
    assert "'a.weight'" in failure.reason and "1 of 32 values" in failure.reason
    assert judged.measured.keys() == {"s0", "s1", "s2"}  # its report still counts as eval


@pytest.mark.parametrize("wire", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_nonfinite_values_are_found_in_every_wire_dtype(wire, value):
    base = _global()
    payload = codec.encode(_with_nonfinite(base, value), wire, base=base)
    codec.verify(payload)  # the digest is valid: only the value check can catch it
    scan = update_checks.scan(payload)
    assert scan.nonfinite and scan.norm == math.inf
    clean = update_checks.scan(codec.encode(_local(base, 202, 1), wire, base=base))
    assert clean.nonfinite == "" and 0 < clean.norm < 1


def test_a_float16_overflow_is_not_finite():
    """An update too large for float16 turns into Inf on the wire: refused, not averaged."""
    base = _global()
    local = _local(base, 101, 1)
    local["b.bias" if "b.bias" in local else "a.bias"][0] = 1e6
    assert update_checks.scan(codec.encode(local, "float16", base=base)).nonfinite


def test_norm_is_the_l2_norm_of_the_update():
    base = _global()
    local = _local(base, 101, 1)
    expected = math.sqrt(sum(float(np.sum((local[k] - base[k]) ** 2)) for k in base))
    scan = update_checks.scan(codec.encode(local, "float32", base=base))
    assert scan.norm == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_an_update_far_larger_than_the_others_is_dropped_under_every_strategy(name):
    strategy = _zk0({**REFERENCES[name][0], "max-update-norm-ratio": 10.0})
    base = _global()
    huge = {k: base[k] + 50 * (v - base[k]) for k, v in _local(base, 303, 1).items()}
    _, replies = _round(strategy, 1, base, bad={"s2": huge})
    arrays, _ = strategy.aggregate_train(1, replies)
    judged = strategy.replies(TRAIN, 1)
    assert arrays is not None and sorted(judged.reports) == ["s0", "s1"]
    [failure] = judged.failures
    assert (failure.site, failure.kind) == ("s2", "norm")
    assert "max-update-norm-ratio=10" in failure.reason and "over 3 updates" in failure.reason


def test_norm_rule_works_from_two_updates_and_can_be_turned_off():
    base = _global()
    huge = {k: base[k] + 50 * (v - base[k]) for k, v in _local(base, 303, 1).items()}
    two = _zk0({"strategy": "fedavg"})
    _, replies = _round(two, 1, base, bad={"s2": huge}, only={"s0", "s2"})
    two.aggregate_train(1, replies)
    judged = two.replies(TRAIN, 1)
    assert sorted(judged.reports) == ["s0"]  # against the other update, not their median
    [failure] = judged.failures
    assert (failure.site, failure.kind) == ("s2", "norm") and "1 other update" in failure.reason
    off = _zk0({"strategy": "fedavg", "max-update-norm-ratio": 0.0})
    _, replies = _round(off, 1, base, bad={"s2": huge})
    off.aggregate_train(1, replies)
    assert off.replies(TRAIN, 1).failures == []
    assert update_checks.norm_outliers({"a": 0.0, "b": 0.0, "c": 5.0}, 10.0) == {}
    assert update_checks.norm_outliers({"a": 5.0}, 10.0) == {}  # nothing to compare with


def test_ratio_at_or_below_one_is_refused_by_the_run_config():
    from common.settings import RunConfig, SettingsError

    with pytest.raises(SettingsError, match=r"max-update-norm-ratio 1\.0 would drop healthy"):
        RunConfig.with_overrides({"max-update-norm-ratio": 1.0})
    with pytest.raises(SettingsError, match=r"min-replies 3 exceeds the 2 site\(s\) a round"):
        RunConfig.with_overrides({"min-replies": 3, "min-sites": 2})
    with pytest.raises(SettingsError, match=r"exceeds the 2 site\(s\).*fraction-train 0.5"):
        RunConfig.with_overrides({"min-replies": 3, "min-sites": 4, "fraction-train": 0.5})


def test_a_reply_to_another_rounds_message_is_stale():
    strategy = _zk0({"strategy": "fedavg"})
    base = _global()
    sent, old = _round(strategy, 1, base)
    stale = dict(zip((m.metadata.dst_node_id for m in sent), old, strict=True))[303]  # s2's
    _, replies = _round(strategy, 2, base, only={"s0", "s1"})
    arrays, _ = strategy.aggregate_train(2, [*replies, stale])
    judged = strategy.replies(TRAIN, 2)
    assert sorted(judged.reports) == ["s0", "s1"]
    [failure] = judged.failures
    assert (failure.site, failure.kind) == ("s2", "stale")
    # the mean is the one of the two current replies alone
    ref = _zk0({"strategy": "fedavg"})
    _round(ref, 1, base)
    _, alone = _round(ref, 2, base, only={"s0", "s1"})
    expected, _ = ref.aggregate_train(2, alone)
    for k in base:
        np.testing.assert_array_equal(arrays[k].numpy(), expected[k].numpy())


def test_an_expired_message_counts_as_a_timeout():
    strategy = _zk0({"strategy": "fedavg", "round-timeout": 90.0})
    messages, _ = _round(strategy, 1, _global())
    expired = Message(Error(code=3, reason="Message expired"), reply_to=messages[0])
    strategy.aggregate_train(1, [expired])
    [failure] = strategy.replies(TRAIN, 1).failures
    assert failure.kind == "timeout" and "round-timeout=90.0s" in failure.reason


@pytest.mark.parametrize("name", list(REFERENCES))
def test_strategy_state_survives_disk_bit_for_bit(name, tmp_path):
    """Two rounds, state to disk and back into a fresh strategy: rounds 3 and 4 give exactly
    what the uninterrupted strategy gives (FedAvgM's momentum, FedAdam's m_t/v_t, ...)."""
    overrides = REFERENCES[name][0]
    a = _zk0(overrides)
    weights = _global()
    for r in (1, 2):
        _, replies = _round(a, r, weights)
        weights = {k: v.numpy() for k, v in a.aggregate_train(r, replies)[0].items()}
    arrays, layout = a.export_state()
    if name == "fedavgm momentum":
        assert "momentum_vector" in layout and "current_arrays" in layout
    if name == "fedadam":
        assert {"m_t", "v_t"} <= set(layout)
    path = tmp_path / server_state.STATE_FILE
    server_state.write(path, server_state.ServerState(
        2, "x", weights, arrays, layout, {"action": {"mean": np.zeros(6, np.float32)}}))
    loaded = server_state.read(path)
    assert list(loaded.weights) == list(weights)
    b = _zk0(overrides)
    b.restore_state(loaded.strategy, loaded.layout)
    wa, wb = weights, loaded.weights
    for r in (3, 4):
        _, ra = _round(a, r, wa)
        _, rb = _round(b, r, wb)
        wa = {k: v.numpy() for k, v in a.aggregate_train(r, ra)[0].items()}
        wb = {k: v.numpy() for k, v in b.aggregate_train(r, rb)[0].items()}
        for k in wa:
            assert wa[k].dtype == wb[k].dtype
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"{name} round {r} {k}")
