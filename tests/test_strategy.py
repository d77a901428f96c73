"""The server strategies: each is Flower's own step on zk0's checked weighted mean.

Every zk0 strategy is compared, over several rounds, with the unchanged Flower strategy of the
same name fed the same sites' float32 weights: momentum, Adam/Yogi/Adagrad moments and server
steps must carry across rounds exactly as Flower computes them.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr

from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, NORM_STATS, SiteReport
from common.settings import RunConfig
from harness.inprocess_grid import server_context
from superlink.strategy import TRAIN, make_strategy

SHAPES = {"a.weight": (8, 4), "a.bias": (8,), "b.weight": (3, 8)}
SITES = {101: "s0", 202: "s1", 303: "s2"}
EXAMPLES = {101: 100, 202: 300, 303: 50}


class Nodes:
    """The one thing strategies ask a grid while configuring a round: who is connected."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def _global(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}


def _local(base, node, server_round):
    """What site ``node`` trained in ``server_round``: a deterministic move away from ``base``."""
    rng = np.random.default_rng([node, server_round])
    return {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in base.items()}


def _reply(msg: Message, payload: codec.Payload, examples: int) -> Message:
    return Message(RecordDict({
        ARRAYS: payload.arrays, CODEC: payload.meta,
        METRICS: SiteReport(num_examples=examples, train_loss=1.0).to_record(),
    }), reply_to=msg)


def _sent(messages):
    """Give messages ids as a grid does when it pushes them."""
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}-{i}"
    return messages


def _zk0(overrides, wire="float32"):
    # weights as declared (no cap): the sites' example counts differ 6x, and Flower's own
    # strategies, the reference here, weigh by them unbounded
    run = RunConfig.with_overrides({"wire-dtype": wire, "min-sites": 1, "max-weight-ratio": 0.0,
                                    **overrides})
    server_context({}, run_id=3)  # Message() needs a ServerApp's task identity
    return make_strategy(run, ArrayRecord(), SITES)


REFERENCES = {
    "fedavg": ({"strategy": "fedavg"}, lambda: flwr.FedAvg()),
    "fedprox": ({"strategy": "fedprox", "proximal-mu": 0.1},
                lambda: flwr.FedProx(proximal_mu=0.1)),
    "fedavgm no momentum": ({"strategy": "fedavgm", "server-lr": 2.0, "server-momentum": 0.0},
                            lambda: flwr.FedAvgM(server_learning_rate=2.0)),
    "fedavgm momentum": ({"strategy": "fedavgm", "server-lr": 1.5, "server-momentum": 0.9},
                         lambda: flwr.FedAvgM(server_learning_rate=1.5, server_momentum=0.9)),
    "fedadam": ({"strategy": "fedadam", "server-lr": 0.01}, lambda: flwr.FedAdam(eta=0.01)),
    "fedyogi": ({"strategy": "fedyogi", "server-lr": 0.01}, lambda: flwr.FedYogi(eta=0.01)),
    "fedadagrad": ({"strategy": "fedadagrad", "server-lr": 0.01},
                   lambda: flwr.FedAdagrad(eta=0.01)),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_every_strategy_matches_flower_over_several_rounds(name):
    overrides, make_reference = REFERENCES[name]
    zk0 = _zk0(overrides)
    reference = make_reference()
    ours = theirs = _global()
    for server_round in (1, 2, 3):
        messages = _sent(zk0.configure_train(
            server_round, ArrayRecord({k: Array(v) for k, v in ours.items()}), ConfigRecord(),
            Nodes(SITES)))
        assert sorted(m.metadata.dst_node_id for m in messages) == sorted(SITES)
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            update = codec.encode(_local(ours, node, server_round), "float32", base=ours)
            replies.append(_reply(msg, update, EXAMPLES[node]))
        arrays, metrics = zk0.aggregate_train(server_round, replies)
        assert metrics is not None and metrics["train-loss"] == pytest.approx(1.0)

        ref_msgs = list(reference.configure_train(
            server_round, ArrayRecord({k: Array(v) for k, v in theirs.items()}), ConfigRecord(),
            Nodes(SITES)))
        ref_replies = [
            Message(RecordDict({
                "arrays": ArrayRecord({k: Array(v) for k, v in
                                       _local(theirs, m.metadata.dst_node_id,
                                              server_round).items()}),
                "metrics": MetricRecord({"num-examples": EXAMPLES[m.metadata.dst_node_id]}),
            }), reply_to=m)
            for m in _sent(ref_msgs)
        ]
        ref_arrays, _ = reference.aggregate_train(server_round, ref_replies)
        ours = {k: v.numpy() for k, v in arrays.items()}
        theirs = {k: v.numpy() for k, v in ref_arrays.items()}
        for k in SHAPES:
            np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} round {server_round} {k}")
        assert zk0.replies(TRAIN, server_round).failures == []


def test_messages_carry_the_encoded_global_and_the_norm_stats():
    run = RunConfig.with_overrides({"wire-dtype": "float16", "min-sites": 1})
    server_context({}, run_id=3)
    stats = ArrayRecord({"action/mean": Array(np.zeros(6))})
    strategy = make_strategy(run, stats, SITES)
    base = _global()
    [msg, *_] = strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(), Nodes(SITES))
    payload = codec.from_content(msg.content)
    assert payload.meta["wire-dtype"] == "float16" and payload.meta["encoding"] == "weights"
    decoded = codec.decode(payload)
    for k in SHAPES:
        np.testing.assert_allclose(decoded[k], base[k], rtol=1e-3, atol=1e-4)
    assert msg.content[NORM_STATS] is stats
    assert strategy.downlink_bytes == payload.nbytes
    assert {codec.wire_view(a).dtype for a in payload.arrays.values()} == {np.dtype(np.float16)}


def _bad_replies(strategy, base):
    """One good reply (s0) and one bad reply of each kind, from the other nodes."""
    messages = _sent(strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(), Nodes(SITES)))
    by_node = {m.metadata.dst_node_id: m for m in messages}
    good = codec.encode(_local(base, 101, 1), "float32", base=base)
    wrong_shape = {**base, "a.bias": np.zeros(5, np.float32)}
    bad_shape = codec.encode(wrong_shape, "float32", base=wrong_shape)
    weights_not_update = codec.encode(base, "float32")
    return [
        _reply(by_node[101], good, 10),
        _reply(by_node[202], bad_shape, 10),
        _reply(by_node[303], weights_not_update, 10),
    ]


@pytest.mark.parametrize("name", list(REFERENCES))
def test_malformed_replies_are_failures_not_crashes_under_every_strategy(name):
    strategy = _zk0(REFERENCES[name][0])
    base = _global()
    arrays, _ = strategy.aggregate_train(1, _bad_replies(strategy, base))
    assert arrays is not None
    judged = strategy.replies(TRAIN, 1)
    assert set(judged.reports) == {"s0"}
    reasons = {f.site: (f.kind, f.reason) for f in judged.failures}
    assert reasons["s1"][0] == "integrity" and "shape" in reasons["s1"][1]
    assert reasons["s2"][0] == "integrity" and "update" in reasons["s2"][1]


def test_failures_are_named_by_the_node_the_message_went_to():
    """An error from the SuperLink itself (node unavailable) names the site it was meant for,
    and a reply never names itself: identity comes from the route."""
    strategy = _zk0({"strategy": "fedavg"})
    base = _global()
    messages = _sent(strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(), Nodes(SITES)))
    from flwr.app import Error

    lost = next(m for m in messages if m.metadata.dst_node_id == 202)
    unavailable = Message(Error(code=5, reason="node unavailable"), reply_to=lost)
    unavailable.metadata.__dict__["_src_node_id"] = 1  # sent by the SuperLink
    strategy.aggregate_train(1, [unavailable])
    [failure] = strategy.replies(TRAIN, 1).failures
    assert (failure.site, failure.node_id, failure.kind) == ("s1", 202, "error")


def test_wrong_wire_dtype_and_tampered_bytes_are_refused():
    strategy = _zk0({"strategy": "fedavgm"}, wire="float16")
    base = _global()
    messages = _sent(strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in base.items()}), ConfigRecord(), Nodes(SITES)))
    by_node = {m.metadata.dst_node_id: m for m in messages}
    as_fp32 = codec.encode(_local(base, 101, 1), "float32", base=base)
    tampered = codec.encode(_local(base, 202, 1), "float16", base=base)
    name = next(iter(tampered.arrays))
    a = tampered.arrays[name]
    data = bytearray(a.data)
    data[-1] ^= 0xFF
    tampered.arrays[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=bytes(data))
    arrays, _ = strategy.aggregate_train(1, [_reply(by_node[101], as_fp32, 5),
                                             _reply(by_node[202], tampered, 5)])
    assert arrays is None
    reasons = {f.site: f.reason for f in strategy.replies(TRAIN, 1).failures}
    assert "wire dtype" in reasons["s0"] and "SHA-256" in reasons["s1"]


def _asked(grid, sites, fraction, seed, server_round):
    """The sites a zk0 strategy asks in ``server_round`` (its overridable selection step)."""
    run = RunConfig.with_overrides({"seed": seed, "min-sites": 1})
    return make_strategy(run, ArrayRecord(), sites).select_nodes(grid, server_round, fraction)


def test_node_selection_is_seeded_and_ordered_by_site_name():
    sites = {9000 + i: f"site-{i}" for i in range(8)}
    grid = Nodes(reversed(list(sites)))
    picks = {r: _asked(grid, sites, 0.5, seed=7, server_round=r) for r in range(1, 6)}
    assert all(len(p) == 4 for p in picks.values())
    assert picks == {r: _asked(Nodes(sites), sites, 0.5, 7, r) for r in range(1, 6)}
    assert len({tuple(p) for p in picks.values()}) > 1, "every round picked the same sites"
    other_seed = {r: _asked(grid, sites, 0.5, seed=8, server_round=r) for r in range(1, 6)}
    assert other_seed != picks
    assert _asked(grid, sites, 1.0, 7, 1) == sorted(sites, key=sites.get)
    # nodes that did not join at stage 0 are never asked
    assert set(_asked(Nodes([*sites, 1234]), sites, 1.0, 7, 1)) == set(sites)
