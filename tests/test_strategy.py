"""The server strategy: zk0's in-place aggregation equals Flower's own, reply checks work."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, SITE, SiteReport
from common.settings import RunConfig
from harness.inprocess_grid import InProcessGrid, server_context
from superlink.strategy import make_strategy

SHAPES = {"a.weight": (8, 4), "a.bias": (8,), "b.weight": (3, 8)}


def _global(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}


def _round(overrides: dict, examples=(100, 300, 50), wire="float32"):
    """One configure/aggregate round of a strategy with 3 sites that each moved the weights."""
    run = RunConfig.with_overrides({"wire-dtype": wire, "min-sites": 1, **overrides})
    strategy = make_strategy(run, ArrayRecord())
    server_context({}, run_id=3)
    grid = InProcessGrid(None, [{"site-name": f"s{i}"} for i in range(3)], {})
    base = _global()
    messages = strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(), grid)
    replies, locals_ = [], []
    for i, (msg, n) in enumerate(zip(messages, examples, strict=True)):
        msg.metadata.__dict__["_message_id"] = f"m{i}"
        local = {k: v + 0.01 * (i + 1) * np.sign(v) for k, v in base.items()}
        locals_.append(local)
        payload = codec.encode(local, wire, base=base)
        replies.append(Message(RecordDict({
            ARRAYS: payload.arrays, CODEC: payload.meta,
            METRICS: SiteReport(num_examples=n, train_loss=1.0).to_record(),
            SITE: ConfigRecord({"site-name": f"s{i}"}),
        }), reply_to=msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    weights = np.asarray(examples, dtype=np.float64) / sum(examples)
    mean = {k: sum(w * loc[k] for w, loc in zip(weights, locals_, strict=True)) for k in base}
    return strategy, base, mean, {k: v.numpy() for k, v in arrays.items()}, replies


def test_fedavg_is_the_weighted_mean():
    _, _, mean, got, _ = _round({"strategy": "fedavg"})
    for k in mean:
        np.testing.assert_allclose(got[k], mean[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("lr", [1.0, 2.0])
def test_fedavgm_without_momentum_steps_lr_times_the_mean_update(lr):
    strategy, base, mean, got, _ = _round(
        {"strategy": "fedavgm", "server-momentum": 0.0, "server-lr": lr})
    for k in mean:
        np.testing.assert_allclose(got[k], base[k] + lr * (mean[k] - base[k]),
                                   rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(strategy.inner.current_arrays["a.bias"].numpy(), got["a.bias"])


def test_fedavgm_with_momentum_goes_through_flower_and_agrees_in_round_one():
    # first round: momentum vector = pseudo-gradient, so the step is lr * mean update again
    _, base, mean, got, _ = _round({"strategy": "fedavgm", "server-momentum": 0.9,
                                    "server-lr": 1.5}, wire="float16")
    for k in mean:
        np.testing.assert_allclose(got[k], base[k] + 1.5 * (mean[k] - base[k]),
                                   rtol=2e-3, atol=1e-5)


def test_reply_with_wrong_shapes_is_a_failure_not_a_crash():
    run = RunConfig.with_overrides({"strategy": "fedavg", "min-sites": 1})
    strategy = make_strategy(run, ArrayRecord())
    server_context({}, run_id=4)
    grid = InProcessGrid(None, [{"site-name": "s0"}, {"site-name": "s1"}], {})
    base = _global()
    messages = strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(), grid)
    replies = []
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"m{i}"
        state = dict(base) if i == 0 else {**base, "a.bias": np.zeros(5, np.float32)}
        ref = base if i == 0 else {**base, "a.bias": np.zeros(5, np.float32)}
        payload = codec.encode(state, "float32", base=ref)
        replies.append(Message(RecordDict({
            ARRAYS: payload.arrays, CODEC: payload.meta,
            METRICS: SiteReport(num_examples=10).to_record(),
            SITE: ConfigRecord({"site-name": f"s{i}"})}), reply_to=msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and set(strategy.last.reports) == {"s0"}
    [failure] = strategy.last.failures
    assert failure.site == "s1" and "shapes differ" in failure.reason
