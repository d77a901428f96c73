"""Outer optimizers (the server's step on the sites' mean update): DiLoCo's Nesterov momentum
checked against PyTorch's own SGD(nesterov=True) and by hand over rounds, its state through a
checkpoint, no state move on a failed round, and the settings that guard it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, SiteReport
from common.settings import RunConfig, SettingsError
from harness.inprocess_grid import server_context
from superlink.strategy import make_strategy
from superlink.strategy.diloco import DiLoCo, nesterov_step

SITES = {101: "s0", 202: "s1"}
ZERO = {"w": np.zeros(3, np.float32)}


class Nodes:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def _strategy(overrides):
    run = RunConfig.with_overrides({"wire-dtype": "float32", "min-sites": 1, **overrides})
    server_context({}, run_id=5)  # Message() needs a ServerApp's task identity
    return make_strategy(run, ArrayRecord(), SITES)


def _round(strategy, weights, updates, server_round):
    """One round: configure with ``weights``, reply ``updates`` (site -> array), aggregate."""
    messages = strategy.configure_train(
        server_round, ArrayRecord({k: Array(v) for k, v in weights.items()}), ConfigRecord(),
        Nodes(SITES))
    replies = []
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"m{server_round}-{i}"
        site = SITES[msg.metadata.dst_node_id]
        if site not in updates:
            continue
        content = RecordDict()
        payload = codec.encode({"w": updates[site]}, "float32", base=ZERO)
        content[ARRAYS], content[CODEC] = payload.arrays, payload.meta
        content[METRICS] = SiteReport(num_examples=10, train_loss=1.0).to_record()
        replies.append(Message(content, reply_to=msg))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return None if arrays is None else arrays["w"].numpy()


def test_nesterov_step_matches_torch_sgd_nesterov():
    """The outer step equals torch.optim.SGD(nesterov=True) fed the pseudo-gradient
    g = -(mean update), over several rounds of changing updates."""
    rng = np.random.default_rng(0)
    lr, mu = 0.7, 0.9
    weights = rng.normal(size=5).astype(np.float32)
    param = torch.nn.Parameter(torch.tensor(weights.copy()))
    sgd = torch.optim.SGD([param], lr=lr, momentum=mu, nesterov=True)
    velocity: dict[str, np.ndarray] = {}
    for _ in range(5):
        mean_update = rng.normal(size=5).astype(np.float32)
        param.grad = torch.tensor(-mean_update)
        sgd.step()
        step = nesterov_step({"w": mean_update}, velocity, mu)
        weights = weights + np.float32(lr) * step["w"]
        np.testing.assert_allclose(weights, param.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_diloco_moves_the_global_by_hand_over_two_rounds():
    strategy = _strategy({"strategy": "diloco", "server-lr": 0.5, "server-momentum": 0.5})
    assert isinstance(strategy, DiLoCo)
    # round 1: mean update d1 = [1, 0, 2]; v = d1; step = d1 + 0.5 v = 1.5 d1; w = 0.5 * 1.5 d1
    w1 = _round(strategy, ZERO, {"s0": np.float32([2, 0, 4]), "s1": np.float32([0, 0, 0])}, 1)
    np.testing.assert_allclose(w1, [0.75, 0.0, 1.5])
    # round 2: d2 = [0, 1, 0]; v = 0.5 d1 + d2; step = d2 + 0.5 v = [0.25, 1.5, 0.5]
    w2 = _round(strategy, {"w": w1}, {"s0": np.float32([0, 1, 0]),
                                      "s1": np.float32([0, 1, 0])}, 2)
    np.testing.assert_allclose(w2, w1 + 0.5 * np.float32([0.25, 1.5, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(strategy.outer_velocity["w"], [0.5, 1.0, 1.0])


def test_diloco_state_survives_a_checkpoint_and_a_failed_round():
    """A resumed run steps exactly as the uninterrupted one; a round without enough replies
    (min-replies 2, one reply) leaves the momentum as it was."""
    settings = {"strategy": "diloco", "server-lr": 0.7, "server-momentum": 0.9,
                "min-replies": 2, "min-sites": 2}
    a = _strategy(settings)
    w = _round(a, ZERO, {"s0": np.float32([1, 2, 3]), "s1": np.float32([3, 2, 1])}, 1)
    before = {k: v.copy() for k, v in a.outer_velocity.items()}
    assert _round(a, {"w": w}, {"s0": np.float32([9, 9, 9])}, 2) is None  # failed round
    np.testing.assert_array_equal(a.outer_velocity["w"], before["w"])
    arrays, layout = a.export_state()
    b = _strategy(settings)
    b.restore_state(arrays, layout)
    updates = {"s0": np.float32([0, 1, 0]), "s1": np.float32([1, 0, 0])}
    np.testing.assert_array_equal(_round(a, {"w": w}, updates, 3), _round(b, {"w": w}, updates, 3))


def test_diloco_without_momentum_is_refused_and_fedadam_takes_tau():
    with pytest.raises(SettingsError, match="server-momentum > 0"):
        RunConfig.with_overrides({"strategy": "diloco", "server-lr": 0.7, "server-momentum": 0.0})
    strategy = _strategy({"strategy": "fedadam", "server-lr": 0.01, "server-tau": 0.05})
    assert strategy.tau == 0.05 and strategy.eta == 0.01
    with pytest.raises(SettingsError, match="server-tau"):
        RunConfig.with_overrides({"server-tau": 0.0})
