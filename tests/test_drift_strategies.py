"""Drift correction (SCAFFOLD, FedExP, decoupled FedProx): each update rule against a case
computed by hand, the control variates' checks and bookkeeping on both sides, and a real
in-process SCAFFOLD run whose server ``c`` must equal the mean of the sites' ``c_i`` on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from common import codec
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    CONTROL,
    CONTROL_CODEC,
    METRICS,
    SiteReport,
)
from common.settings import RunConfig, SettingsError
from harness.inprocess_grid import server_context
from superlink import server_state
from superlink.checkpoints import checkpoint_dir
from superlink.strategy import TRAIN, make_strategy
from superlink.strategy.fedexp import fedexp_step
from supernode.control_variates import ControlRound, ControlStore, ControlVariate, option_two
from supernode.training import (
    DriftCorrection,
    add_control_gradient,
    apply_control_step,
    decoupled_proximal_step,
    lr_at,
)

SITES = {101: "s0", 202: "s1", 303: "s2", 404: "s3"}
ZERO = {"w": np.zeros(4, np.float32)}


class Nodes:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def _strategy(overrides, wire="float32"):
    run = RunConfig.with_overrides({"wire-dtype": wire, "min-sites": 1, **overrides})
    server_context({}, run_id=3)  # Message() needs a ServerApp's task identity
    return make_strategy(run, ArrayRecord(), SITES)


def _configure(strategy, weights, server_round=1):
    messages = strategy.configure_train(
        server_round, ArrayRecord({k: Array(v) for k, v in weights.items()}), ConfigRecord(),
        Nodes(SITES))
    for i, msg in enumerate(messages):  # ids, as a grid gives them when it pushes
        msg.metadata.__dict__["_message_id"] = f"m{server_round}-{i}"
    return {SITES[m.metadata.dst_node_id]: m for m in messages}


def _reply(msg, update, examples=10, control=None, base_round=0, wire="float32"):
    """A site's train reply: ``update`` (and SCAFFOLD's ``control`` delta) as plain arrays."""
    content = RecordDict()
    payload = codec.encode(update, wire, base=ZERO)
    content[ARRAYS], content[CODEC] = payload.arrays, payload.meta
    report = SiteReport(num_examples=examples, train_loss=1.0, control_base_round=base_round)
    content[METRICS] = report.to_record()
    if control is not None:
        delta = codec.encode(control, wire, base=ZERO)
        content[CONTROL], content[CONTROL_CODEC] = delta.arrays, delta.meta
    return Message(content, reply_to=msg)


def _vec(*values):
    return {"w": np.asarray(values, np.float32)}


# -- FedExP ---------------------------------------------------------------------------------


def test_fedexp_step_by_hand():
    # 4 orthogonal unit updates, equal weights: sum w_i |d_i|^2 = 1, |mean|^2 = 4 * 0.25^2
    assert fedexp_step(1.0, 0.25, 0.0) == pytest.approx(2.0)  # M / 2
    assert fedexp_step(1.0, 0.25, 1e-3) == pytest.approx(1.0 / (2 * 0.251))
    assert fedexp_step(1.0, 1.0, 0.0) == 1.0  # identical updates: 1/2 before the max
    assert fedexp_step(0.0, 0.0, 0.0) == 1.0  # nothing moved: no division by zero


def test_fedexp_moves_the_global_by_the_extrapolated_mean():
    strategy = _strategy({"strategy": "fedexp", "fedexp-epsilon": 1e-3})
    messages = _configure(strategy, ZERO)
    replies = [_reply(messages[s], {"w": np.eye(4, dtype=np.float32)[i]})
               for i, s in enumerate(sorted(messages))]
    arrays, _ = strategy.aggregate_train(1, replies)
    eta = 1.0 / (2 * (0.25 + 1e-3))
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 0.25 * eta), rtol=1e-6)
    assert strategy.round_summary(1) == {"server_step": pytest.approx(eta)}
    assert strategy.downlink_bytes == codec.encode(ZERO, "float32").nbytes  # nothing extra


# -- decoupled proximal step and control corrections ----------------------------------------


def test_decoupled_proximal_step_by_hand():
    w = torch.tensor([1.0, -2.0])
    anchor = torch.tensor([0.5, 0.0])
    value = decoupled_proximal_step([w], [anchor], lr=0.1, mu=2.0)
    # w -= 0.1 * 2 * (w - anchor) = w - 0.2 * [0.5, -2.0]
    torch.testing.assert_close(w, torch.tensor([0.9, -1.6]))
    assert value == pytest.approx(0.5 * 2.0 * (0.25 + 4.0))  # the term before the pull
    assert decoupled_proximal_step([w], [anchor], lr=0.1, mu=0.0) == 0.0
    with pytest.raises(ValueError, match="lr \\* mu = 1 >= 1"):
        decoupled_proximal_step([w], [anchor], lr=0.5, mu=2.0)


def test_control_corrections_by_hand():
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    correction = [torch.tensor([0.5, -1.0])]
    apply_control_step([w], correction, lr=0.1)  # w -= lr * (c - c_i)
    torch.testing.assert_close(w.detach(), torch.tensor([0.95, 1.1]))
    w.grad = torch.tensor([1.0, 2.0])
    add_control_gradient([w], correction)  # grad += c - c_i
    torch.testing.assert_close(w.grad, torch.tensor([1.5, 1.0]))
    with pytest.raises(ValueError, match="proximal-step 'sideways'"):
        DriftCorrection(proximal_step="sideways")  # type: ignore[arg-type]


def test_option_two_control_variate_by_hand():
    # c_i+ = c_i - c + (x - y_i) / sum(lr)
    new = option_two(base=_vec(1.0, 1.0), server=_vec(0.5, 0.0), global_weights=_vec(1.0, 2.0),
                     local_weights={"w": torch.tensor([0.5, 2.5])}, lr_sum=0.5)
    np.testing.assert_allclose(new["w"], [1.0 - 0.5 + 1.0, 1.0 - 0.0 - 1.0])
    with pytest.raises(ValueError, match="lr sum"):
        option_two(_vec(0.0), _vec(0.0), _vec(0.0), _vec(0.0), 0.0)


# -- SCAFFOLD, server side ------------------------------------------------------------------


def test_scaffold_control_variate_update_by_hand(tmp_path: Path):
    strategy = _strategy({"strategy": "scaffold", "server-lr": 1.0, "max-weight-ratio": 0.0})
    messages = _configure(strategy, ZERO, 1)
    model = codec.encode(ZERO, "float32").nbytes
    assert strategy.downlink_bytes == 2 * model  # the weights and c
    for msg in messages.values():
        assert int(msg.content[CONFIG]["control-round"]) == 0
        np.testing.assert_array_equal(
            codec.decode(codec.from_content(msg.content, CONTROL, CONTROL_CODEC))["w"], 0.0)
    # Round 1: s0 and s1 answer (s2, s3 silent). c += (1/N) sum delta, N = 4 sites.
    arrays, _ = strategy.aggregate_train(1, [
        _reply(messages["s0"], _vec(1, 0, 0, 0), 30, control=_vec(0.4, 0.8, 0, 0)),
        _reply(messages["s1"], _vec(0, 1, 0, 0), 10, control=_vec(-0.4, 0.4, 0, 0)),
    ])
    np.testing.assert_allclose(arrays["w"].numpy(), [0.75, 0.25, 0, 0])  # example-weighted
    np.testing.assert_allclose(strategy.control["w"], [0.0, 0.3, 0.0, 0.0], atol=1e-7)
    assert strategy.control_rounds == {"s0": 1, "s1": 1}
    # Round 2: each site is told which of its deltas counts; s0 builds on round 1's.
    messages = _configure(strategy, {"w": arrays["w"].numpy()}, 2)
    assert {s: int(m.content[CONFIG]["control-round"]) for s, m in messages.items()} == {
        "s0": 1, "s1": 1, "s2": 0, "s3": 0}
    assert messages["s0"].content[CONFIG] is not messages["s2"].content[CONFIG]
    strategy.aggregate_train(2, [
        _reply(messages["s0"], _vec(0, 0, 0, 0), control=_vec(0.4, 0, 0, 0), base_round=1),
        _reply(messages["s2"], _vec(0, 0, 0, 0), control=_vec(0, 0, 0.8, 0), base_round=0),
    ])
    np.testing.assert_allclose(strategy.control["w"], [0.1, 0.3, 0.2, 0.0], atol=1e-7)
    # The state round-trips through a checkpoint's server state into a fresh strategy.
    arrays, layout = strategy.export_state()
    path = tmp_path / server_state.STATE_FILE
    server_state.write(path, server_state.ServerState(2, "scaffold", {}, arrays, layout, {}))
    saved = server_state.read(path)
    restored = _strategy({"strategy": "scaffold"})
    restored.restore_state(saved.strategy, saved.layout)
    np.testing.assert_array_equal(restored.control["w"], strategy.control["w"])
    assert restored.control_rounds == {"s0": 2, "s1": 1, "s2": 2}
    # Round 3: s1 lost its state (base 0, the server counted round 1): c starts over from
    # the deltas with base 0.
    messages = _configure(strategy, ZERO, 3)
    strategy.aggregate_train(3, [
        _reply(messages["s1"], _vec(0, 0, 0, 0), control=_vec(1, 1, 1, 1), base_round=0),
        _reply(messages["s0"], _vec(0, 0, 0, 0), control=_vec(9, 9, 9, 9), base_round=2),
    ])
    np.testing.assert_allclose(strategy.control["w"], [0.25] * 4)
    assert strategy.control_rounds == {"s1": 3} and strategy.round_summary(3)["control_reset"]


def test_scaffold_control_delta_passes_the_update_checks():
    strategy = _strategy({"strategy": "scaffold"}, wire="float16")
    messages = _configure(strategy, ZERO)
    good = _vec(0.1, 0, 0, 0)
    tampered = _reply(messages["s1"], good, control=good, wire="float16")
    array = tampered.content[CONTROL]["w"]
    data = bytearray(array.data)
    data[-1] ^= 0xFF
    tampered.content[CONTROL]["w"] = Array(dtype=array.dtype, shape=array.shape,
                                           stype=array.stype, data=bytes(data))
    weights = _reply(messages["s2"], good, wire="float16")
    weights.content[CONTROL] = codec.encode(good, "float16").arrays  # weights, not an update
    weights.content[CONTROL_CODEC] = codec.encode(good, "float16").meta
    strategy.aggregate_train(1, [
        _reply(messages["s0"], good, control=good, wire="float16"),
        tampered,
        weights,
        _reply(messages["s3"], good, control=None, wire="float16"),
    ])
    judged = strategy.replies(TRAIN, 1)
    assert set(judged.reports) == {"s0"}
    reasons = {f.site: (f.kind, f.reason) for f in judged.failures}
    assert reasons["s1"][0] == "integrity" and "SHA-256" in reasons["s1"][1]
    assert reasons["s2"][0] == "integrity" and "update" in reasons["s2"][1]
    assert reasons["s3"][0] == "malformed" and "control" in reasons["s3"][1]
    assert judged.uplink_bytes["s0"] == 2 * codec.encode(good, "float16").nbytes
    assert strategy.control_rounds == {"s0": 1}


# -- SCAFFOLD, site side --------------------------------------------------------------------


def test_site_adopts_only_the_control_variate_the_server_counted(tmp_path: Path):
    store = ControlStore(tmp_path / "run-7")
    like = _vec(0, 0)
    assert store.base(0, like).round == 0
    store.stage(ControlVariate(1, _vec(1, 2)))
    assert stat.S_IMODE(store.pending.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    base = store.base(1, like)  # the server counted round 1: it becomes the base
    assert base.round == 1 and base.arrays["w"].tolist() == [1, 2]
    assert not store.pending.exists() and store.committed.is_file()
    store.stage(ControlVariate(2, _vec(5, 5)))  # round 2's reply never arrived
    assert store.base(1, like).arrays["w"].tolist() == [1, 2]
    assert not store.pending.exists()
    assert store.base(0, like).arrays["w"].tolist() == [0, 0]  # the server started over
    assert store.base(4, like).round == 0  # a round it does not have: zeros (server resets)


def test_site_keeps_the_delta_as_the_server_decodes_it(tmp_path: Path):
    server = _vec(0.3, -0.2, 0.1)
    control = codec.encode(server, "float16")
    content = RecordDict({CONTROL: control.arrays, CONTROL_CODEC: control.meta})
    rnd = ControlRound.from_message(content, 0, tmp_path)
    assert rnd is not None and rnd.base.round == 0
    [corr] = rnd.correction(["w"])
    np.testing.assert_allclose(corr.numpy(), [0.3, -0.2, 0.1], atol=1e-3)  # c - 0
    delta = rnd.finish(1, _vec(1, 1, 1), {"w": torch.tensor([0.9, 1.0, 1.3])}, lr_sum=0.1)
    expected = option_two(rnd.base.arrays, rnd.server, _vec(1, 1, 1),
                          {"w": torch.tensor([0.9, 1.0, 1.3])}, 0.1)
    pending = ControlStore(tmp_path)._read(ControlStore(tmp_path).pending)
    assert pending is not None and pending.round == 1
    as_decoded = codec.decode(delta, base=rnd.base.arrays)["w"]
    np.testing.assert_array_equal(pending.arrays["w"], as_decoded)
    np.testing.assert_allclose(pending.arrays["w"], expected["w"], rtol=1e-3)
    assert ControlRound.from_message(RecordDict(), 0, tmp_path) is None  # not SCAFFOLD


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expect"), [
    ({"local-optimizer": "sgd"}, "local-optimizer 'sgd' needs an explicit lr"),
    ({"local-optimizer": "lbfgs"}, "key 'local-optimizer'"),
    ({"strategy": "fedprox-decoupled"}, "'fedprox-decoupled' needs proximal-mu > 0"),
    ({"scaffold-correction": "both"}, "key 'scaffold-correction'"),
    ({"fedexp-epsilon": -1.0}, "key 'fedexp-epsilon'"),
])
def test_drift_settings_are_checked_by_key(overrides, expect):
    with pytest.raises(SettingsError, match=expect):
        RunConfig.with_overrides(overrides)
    for name in ("scaffold", "fedexp"):
        assert RunConfig.with_overrides({"strategy": name}).strategy == name


# -- real training --------------------------------------------------------------------------


def _one_round(demo_root, tiny_run, mode: str | None):
    """One SGD round of the tiny policy on real data, with a fixed random ``c - c_i`` applied
    the ``mode`` way (None: no correction); the trained weights and the result."""
    from common.norm_stats import global_stats
    from common.policy_factory import trainable_parameters, trainable_state
    from supernode.local_site import Site
    from supernode.training import train_round

    run = tiny_run.model_copy(update={"local_optimizer": "sgd", "lr": 0.05})
    site = Site.open({"site-name": "s0", "dataset-root": str(demo_root / "site-0"),
                      "torch-threads": 1}, run.to_flwr())
    bundle = site.policy(site.spec, global_stats(site.moments(), []), None)
    params = trainable_parameters(bundle.policy)
    drift = None
    if mode is not None:
        rng = torch.Generator().manual_seed(3)
        drift = DriftCorrection(control=[torch.randn(p.shape, generator=rng) * 0.01
                                         for p in params.values()], control_mode=mode)
    site.seed_round(1)
    result = train_round(bundle, site.train_loader(1), run, 1, 0.0, None, drift=drift)
    return trainable_state(bundle.policy), result, run


def test_sgd_gradient_and_decoupled_corrections_agree(demo_root, tiny_run):
    """With plain SGD, ``grad += c - c_i`` and ``w -= lr (c - c_i)`` after the step are the same
    update (the preset's 1e-10 weight decay aside): the two SCAFFOLD modes must agree there."""
    threads = torch.get_num_threads()
    try:
        plain, result, run = _one_round(demo_root, tiny_run, None)
        grad, _, _ = _one_round(demo_root, tiny_run, "gradient")
        dec, _, _ = _one_round(demo_root, tiny_run, "decoupled")
    finally:
        torch.set_num_threads(threads)
    assert result.lr_sum == pytest.approx(sum(lr_at(run, 0.05, s) for s in range(run.local_steps)))
    assert max(float((grad[n] - plain[n]).abs().max()) for n in plain) > 1e-4  # it acted
    for n in plain:
        torch.testing.assert_close(grad[n], dec[n], rtol=1e-4, atol=1e-6)


def test_scaffold_in_process_server_c_is_the_mean_of_the_sites_c_i(demo_root, tmp_path):
    """A real 2-round SCAFFOLD run: the checkpointed ``c`` equals the mean of the sites' last
    (pending) ``c_i`` on their disks, and the uplink carries the update and the delta."""
    from harness.inprocess_grid import run_inprocess

    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}"),
              "torch-threads": 1, "state-dir": str(tmp_path / f"state-{i}")} for i in range(2)]
    run = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 2, "local-steps": 2, "batch-size": 4,
        "eval-samples": 4, "min-sites": 2, "eval-every": 2, "strategy": "scaffold",
        "wire-dtype": "float16", "output-dir": str(tmp_path / "runs"),
    }).to_flwr()
    threads = torch.get_num_threads()
    try:
        run_dir = Path(run_inprocess(run, nodes, run_id=31))
    finally:
        torch.set_num_threads(threads)
    state = server_state.read(checkpoint_dir(run_dir, 2) / server_state.STATE_FILE).strategy
    rounds = {k: int(v.item()) for k, v in state.items() if k.startswith("control_rounds/")}
    assert rounds == {"control_rounds/site-0": 2, "control_rounds/site-1": 2}
    sites = [ControlStore(tmp_path / f"state-{i}" / "run-31") for i in range(2)]
    pending = [s._read(s.pending) for s in sites]
    assert all(p is not None and p.round == 2 for p in pending)
    for key, c in state.items():
        if key.startswith("control/"):
            name = key.removeprefix("control/")
            mean = (pending[0].arrays[name] + pending[1].arrays[name]) / 2  # type: ignore[union-attr]
            np.testing.assert_allclose(c, mean, rtol=1e-5, atol=1e-6, err_msg=name)
    entry = json.loads((run_dir / "rounds" / "round_002.json").read_text())
    for report in entry["sites"].values():
        assert report["control_bytes"] == report["payload_bytes"] > 0
        assert report["control_base_round"] == 1
    assert entry["uplink_bytes"] == 2 * sum(r["payload_bytes"] for r in entry["sites"].values())
    assert entry["downlink_bytes"] == 2 * entry["downlink_bytes_per_site"]  # 2 sites
