"""Weight from evidence, not declaration: no site buys the average by what it declares or by
the size of its update, with 2 sites and with 4; robust aggregation is one key away; and no
strategy's state moves in a round that does not aggregate.

Strategy-level, as the server runs it (codec, reply model, checks), without a policy.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr

from common import codec
from common.protocol import ARRAYS, CODEC, CONTROL, CONTROL_CODEC, METRICS, SiteReport
from common.settings import RunConfig, SettingsError, StrategyName
from harness.inprocess_grid import server_context
from superlink.strategy import TRAIN, make_strategy, update_checks

SHAPES = {"a.weight": (6, 4), "a.bias": (6,)}
HONEST_EXAMPLES = 100


class Nodes:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def _sites(n: int) -> dict[int, str]:
    return {1000 + i: f"s{i}" for i in range(n)}


def _strategy(n: int, **overrides):
    run = RunConfig.with_overrides({"wire-dtype": "float32", "min-sites": 1,
                                    "strategy": "fedavg", **overrides})
    server_context({}, run_id=5)  # Message() needs a ServerApp's task identity
    return make_strategy(run, ArrayRecord(), _sites(n))


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}


def _update(site: int, server_round: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([site, server_round])
    return {k: (scale * rng.normal(0, 0.01, s)).astype(np.float32) for k, s in SHAPES.items()}


def _round(strategy, server_round, base, sites, examples=None, scale=None, control=None,
           only=None):
    """Configure a round and answer it: each site its own update, ``examples`` and ``scale``
    per site name overriding the honest defaults; ``control`` (SCAFFOLD): each site's control
    delta as a multiple of its update."""
    messages = strategy.configure_train(
        server_round, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(),
        Nodes(sites))
    replies, updates = [], {}
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"r{server_round}-{i}"
        name = sites[msg.metadata.dst_node_id]
        if only is not None and name not in only:
            continue
        update = _update(msg.metadata.dst_node_id, server_round, (scale or {}).get(name, 1.0))
        updates[name] = update
        zero = {k: np.zeros_like(v) for k, v in update.items()}
        payload = codec.encode(update, "float32", base=zero)
        report = SiteReport(num_examples=(examples or {}).get(name, HONEST_EXAMPLES),
                            train_loss=1.0)
        content = RecordDict({ARRAYS: payload.arrays, CODEC: payload.meta,
                              METRICS: report.to_record()})
        if control is not None:
            factor = np.float32(control.get(name, 3.0))
            delta = codec.encode({k: v * factor for k, v in update.items()}, "float32", base=zero)
            content[CONTROL], content[CONTROL_CODEC] = delta.arrays, delta.meta
        replies.append(Message(content, reply_to=msg))
    return replies, updates


def _moved(arrays: ArrayRecord, base) -> dict[str, np.ndarray]:
    return {k: arrays[k].numpy() - base[k] for k in base}


def _mean(updates: dict[str, dict], weights: dict[str, float]) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    return {k: sum(weights[s] / total * u[k] for s, u in updates.items()) for k in SHAPES}


# -- the weight cap ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_a_site_declaring_1000x_its_frames_gets_at_most_the_capped_share(n, caplog):
    """s0 declares 1000x the frames of the others: it weighs max-weight-ratio (2) x the
    others' median, so its share of the average is 2/3 with 2 sites and 2/5 with 4, not
    1000/1001 and 1000/1003; the mean is exactly the capped one, and the cap is reported."""
    sites, base = _sites(n), _weights()
    liar = {"s0": 1000 * HONEST_EXAMPLES}
    strategy = _strategy(n)
    replies, updates = _round(strategy, 1, base, sites, examples=liar)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.replies(TRAIN, 1).failures == []
    capped = {s: float(HONEST_EXAMPLES) for s in updates} | {"s0": 2.0 * HONEST_EXAMPLES}
    moved = _moved(arrays, base)
    for k, want in _mean(updates, capped).items():
        np.testing.assert_allclose(moved[k], want, rtol=1e-5, atol=1e-8)
    share = strategy.shares(strategy.replies(TRAIN, 1).accepted)["s0"]
    assert share == pytest.approx(2 / (2 + (n - 1)))
    reason = strategy.round_summary(1)["weight_capped"]["s0"]
    assert "weight 100000 capped at 200" in reason and "max-weight-ratio=2" in reason
    # without the cap the declaration would have bought the average
    uncapped = _strategy(n, **{"max-weight-ratio": 0.0})
    replies, _ = _round(uncapped, 1, base, sites, examples=liar)
    uncapped.aggregate_train(1, replies)
    assert uncapped.shares(uncapped.replies(TRAIN, 1).accepted)["s0"] == pytest.approx(
        1000 / (1000 + n - 1))


def test_honest_weights_within_the_cap_are_as_declared():
    weights, reasons = update_checks.capped_weights({"a": 100, "b": 150, "c": 60}, 2.0)
    assert weights == {"a": 100, "b": 150, "c": 60} and reasons == {}
    weights, reasons = update_checks.capped_weights({"a": 100, "b": 500, "c": 60}, 2.0)
    assert weights["b"] == 160 and list(reasons) == ["b"]  # 2 x median(100, 60)
    assert update_checks.capped_weights({"a": 1, "b": 10**6}, 0.0)[0] == {"a": 1, "b": 10**6}
    with pytest.raises(SettingsError, match=r"max-weight-ratio 0\.5"):
        RunConfig.with_overrides({"max-weight-ratio": 0.5})


# -- the norm rule from two updates on --------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_a_50x_update_is_refused_and_the_model_moves_by_the_others(n):
    sites, base = _sites(n), _weights()
    strategy = _strategy(n)
    replies, updates = _round(strategy, 1, base, sites, scale={"s1": 50.0})
    arrays, _ = strategy.aggregate_train(1, replies)
    judged = strategy.replies(TRAIN, 1)
    [failure] = judged.failures
    assert (failure.site, failure.kind) == ("s1", "norm")
    assert ("other update" in failure.reason) == (n == 2)  # 2: the other's; 4: the median
    honest = {s: u for s, u in updates.items() if s != "s1"}
    moved = _moved(arrays, base)
    for k, want in _mean(honest, dict.fromkeys(honest, 1.0)).items():
        np.testing.assert_allclose(moved[k], want, rtol=1e-5, atol=1e-8)


def test_four_sites_one_declaring_1000x_and_one_sending_50x():
    sites, base = _sites(4), _weights()
    strategy = _strategy(4)
    replies, updates = _round(strategy, 1, base, sites, examples={"s0": 1000 * HONEST_EXAMPLES},
                              scale={"s3": 50.0})
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [(f.site, f.kind) for f in strategy.replies(TRAIN, 1).failures] == [("s3", "norm")]
    kept = {s: u for s, u in updates.items() if s != "s3"}
    capped = dict.fromkeys(kept, float(HONEST_EXAMPLES)) | {"s0": 200.0}
    moved = _moved(arrays, base)
    for k, want in _mean(kept, capped).items():
        np.testing.assert_allclose(moved[k], want, rtol=1e-5, atol=1e-8)


def test_a_lone_update_is_held_against_the_norms_of_earlier_rounds():
    """Round 1: two normal updates are accepted (their norms remembered). Round 2: only s1
    answers, 50x: refused against round 1's norms. Round 3: s0 alone, normal: accepted."""
    sites, base = _sites(2), _weights()
    strategy = _strategy(2)
    replies, _ = _round(strategy, 1, base, sites)
    base = {k: v.numpy() for k, v in strategy.aggregate_train(1, replies)[0].items()}
    replies, _ = _round(strategy, 2, base, sites, scale={"s1": 50.0}, only={"s1"})
    assert strategy.aggregate_train(2, replies) == (None, None)
    [failure] = strategy.replies(TRAIN, 2).failures
    assert failure.kind == "norm" and "2 other update(s)" in failure.reason
    replies, _ = _round(strategy, 3, base, sites, only={"s0"})
    assert strategy.aggregate_train(3, replies)[0] is not None
    assert list(strategy.accepted_norms["update"][:, 0]) == [1.0, 1.0, 3.0]  # round 2: none


def test_a_50x_scaffold_control_delta_fails_the_reply():
    """The control-variate delta passes the same norm rule as the update (its own history)."""
    sites, base = _sites(4), _weights()
    strategy = _strategy(4, strategy="scaffold", **{"server-lr": 1.0})
    replies, _ = _round(strategy, 1, base, sites, control={"s2": 150.0})
    strategy.aggregate_train(1, replies)
    [failure] = strategy.replies(TRAIN, 1).failures
    assert (failure.site, failure.kind) == ("s2", "norm")
    assert failure.reason.startswith("control-variate delta norm")
    assert sorted(strategy.control_rounds) == ["s0", "s1", "s3"]


# -- robust aggregation, one key away ---------------------------------------------------------


@pytest.mark.parametrize(("name", "reference"), [
    ("fedmedian", lambda: flwr.FedMedian()),
    ("fedtrimmedavg", lambda: flwr.FedTrimmedAvg(beta=0.2)),
])
def test_robust_strategies_are_flowers_on_the_checked_updates(name, reference):
    """Over 5 sites (so beta = 0.2 trims one from each side), zk0's strategy equals Flower's
    fed the same sites' float32 weights."""
    sites, base = _sites(5), _weights()
    ours = _strategy(5, strategy=name)
    replies, updates = _round(ours, 1, base, sites, scale={"s4": 8.0})
    arrays, _ = ours.aggregate_train(1, replies)
    theirs = reference()
    msgs = list(theirs.configure_train(1, ArrayRecord({k: Array(v) for k, v in base.items()}),
                                       ConfigRecord(), Nodes(sites)))
    ref_replies = []
    for i, msg in enumerate(msgs):
        msg.metadata.__dict__["_message_id"] = f"x{i}"
        update = updates[sites[msg.metadata.dst_node_id]]
        ref_replies.append(Message(RecordDict({
            "arrays": ArrayRecord({k: Array(base[k] + update[k]) for k in SHAPES}),
            "metrics": MetricRecord({"num-examples": HONEST_EXAMPLES}),
        }), reply_to=msg))
    expected, _ = theirs.aggregate_train(1, ref_replies)
    for k in SHAPES:
        np.testing.assert_allclose(arrays[k].numpy(), expected[k].numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_fedmedian_ignores_a_declared_weight_and_an_outlier():
    """The median is unweighted: a 1000x declaration and an 8x update (below the norm rule)
    leave every coordinate within the honest sites' range."""
    sites, base = _sites(4), _weights()
    strategy = _strategy(4, strategy="fedmedian")
    replies, updates = _round(strategy, 1, base, sites, examples={"s0": 1000 * HONEST_EXAMPLES},
                              scale={"s0": 8.0})
    moved = _moved(strategy.aggregate_train(1, replies)[0], base)
    for k in SHAPES:
        honest = np.stack([updates[s][k] for s in ("s1", "s2", "s3")])
        assert np.all(moved[k] >= honest.min(0) - 1e-7) and np.all(moved[k] <= honest.max(0)
                                                                      + 1e-7)


def test_norm_clipping_scales_long_updates_to_the_median():
    sites, base = _sites(3), _weights()
    strategy = _strategy(3, strategy="fedavg-clipped", **{"clip-norm-ratio": 1.0})
    replies, updates = _round(strategy, 1, base, sites, scale={"s2": 5.0})
    moved = _moved(strategy.aggregate_train(1, replies)[0], base)
    norms = {s: float(np.sqrt(sum(np.sum(np.square(v)) for v in u.values())))
             for s, u in updates.items()}
    median = sorted(norms.values())[1]
    factors = {s: min(1.0, median / n) for s, n in norms.items()}
    want = {k: sum(factors[s] * u[k] for s, u in updates.items()) / 3 for k in SHAPES}
    for k in SHAPES:
        np.testing.assert_allclose(moved[k], want[k], rtol=1e-4, atol=1e-8)
    clipped = strategy.round_summary(1)["clipped"]
    assert list(clipped) == ["s2"] and clipped["s2"] == pytest.approx(factors["s2"], rel=1e-4)


# -- state moves only with an accepted aggregate ----------------------------------------------


STRATEGY_OVERRIDES = {
    "fedavgm": {"server-momentum": 0.9, "server-lr": 1.0},
    "fedadam": {"server-lr": 0.01}, "fedyogi": {"server-lr": 0.01},
    "fedadagrad": {"server-lr": 0.01}, "scaffold": {"server-momentum": 0.9, "server-lr": 1.0},
    "fedprox": {"proximal-mu": 0.1}, "fedprox-decoupled": {"proximal-mu": 10.0},
    "diloco": {"server-momentum": 0.9, "server-lr": 0.7},
}


@pytest.mark.parametrize("name", typing.get_args(StrategyName))
def test_a_round_short_of_min_replies_moves_no_state(name):
    """Round 1 aggregates; round 2 has one good update (min-replies 2) plus a NaN one: it
    fails, and every piece of server state (momentum, moments, SCAFFOLD's c and counts, the
    norm history) is bit for bit what round 1 left, under every strategy."""
    sites, base = _sites(3), _weights()
    strategy = _strategy(3, strategy=name, **{"min-replies": 2, "min-sites": 2},
                         **STRATEGY_OVERRIDES.get(name, {}))
    control = {} if name == "scaffold" else None
    replies, _ = _round(strategy, 1, base, sites, control=control)
    base = {k: v.numpy() for k, v in strategy.aggregate_train(1, replies)[0].items()}
    saved, layout = strategy.export_state()
    assert "accepted_norms" in layout
    replies, _ = _round(strategy, 2, base, sites, control=control, only={"s0", "s1"},
                        scale={"s1": float("nan")})
    assert strategy.aggregate_train(2, replies) == (None, None)
    assert [f.kind for f in strategy.replies(TRAIN, 2).failures] == ["nonfinite"]
    now, _ = strategy.export_state()
    assert set(now) == set(saved)
    for key in saved:  # FedOpt re-reads the weights it sends in configure_train
        if not key.startswith("current_arrays/"):
            np.testing.assert_array_equal(now[key], saved[key], err_msg=f"{name}: {key}")
