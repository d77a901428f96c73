"""Run-config keys as a whole run uses them.

zk0's unchanged ServerApp drives zk0's unchanged ClientApp in one process
(:mod:`harness.inprocess_grid`) on real LeRobot data with the real (tiny) SmolVLA; only the
transport is left out, and the e2e tests cover it. Two runs share one configuration that turns
many keys away from their defaults at once, so each key's effect and the run's reproducibility
are checked on the same runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord
from safetensors.numpy import load_file

from common import codec
from common.protocol import CODEC, CONFIG, RoundInstructions
from common.settings import RunConfig
from harness.inprocess_grid import FIRST_NODE_ID, run_inprocess
from superlink.strategy import make_strategy

SITES = [f"site-{i}" for i in range(4)]
ROUNDS = 3
RUN = {
    "policy": "smolvla-tiny", "num-server-rounds": ROUNDS, "local-steps": 2, "batch-size": 4,
    "eval-samples": 4, "min-sites": 4, "seed": 5,
    "fraction-train": 0.5, "eval-every": 2, "keep-checkpoints": 1, "optimizer-state": "reset",
    "wire-dtype": "bfloat16", "strategy": "fedavgm", "server-momentum": 0.5, "server-lr": 1.0,
    "proximal-mu": 0.01,
}


class Recorder:
    """zk0's ClientApp, noting what each message asked of which site."""

    def __init__(self):
        from supernode.client_app import app

        self.app = app
        self.seen: list[dict] = []

    def __call__(self, msg, context):
        from common.packing import unpack

        content = unpack(msg.content)  # the instruction as the ServerApp built it
        entry = {"type": msg.metadata.message_type, "site": context.node_config["site-name"]}
        if CONFIG in content.config_records and "server-round" in content.config_records[CONFIG]:
            instructions = RoundInstructions.from_record(content.config_records[CONFIG])
            entry |= {"round": instructions.server_round, "mu": instructions.proximal_mu}
        if CODEC in content.config_records:
            payload = codec.from_content(content)
            entry |= {"wire": payload.meta["wire-dtype"],
                      "dtypes": {str(codec.wire_view(a).dtype) for a in payload.arrays.values()}}
        self.seen.append(entry)
        return self.app(msg, context)


def _nodes(demo_root: Path, state: Path) -> list[dict]:
    return [{"site-name": s, "dataset-root": str(demo_root / s), "torch-threads": 1,
             "state-dir": str(state / s)} for s in SITES]


@pytest.fixture(scope="module")
def twin_runs(demo_root, tmp_path_factory):
    """Two runs of the same configuration (same seed), each with its own run id and folders."""
    out = []
    for run_id in (41, 42):
        work = tmp_path_factory.mktemp(f"run{run_id}")
        config = RunConfig.with_overrides({**RUN, "output-dir": str(work / "runs")}).to_flwr()
        recorder = Recorder()
        run_dir = run_inprocess(config, _nodes(demo_root, work / "state"), run_id,
                                client_app=recorder)
        out.append((run_dir, recorder.seen, work / "state"))
    return out


def _round(run_dir: Path, r: int) -> dict:
    return json.loads((run_dir / "rounds" / f"round_{r:03d}.json").read_text())


def test_fraction_train_asks_the_seeded_half_of_the_sites(twin_runs):
    sites = {FIRST_NODE_ID + i: name for i, name in enumerate(SITES)}

    class Connected:
        def get_node_ids(self):
            return list(sites)

    run = RunConfig.with_overrides(RUN)
    strategy = make_strategy(run, ArrayRecord(), sites)  # the selection step the ServerApp runs
    for run_dir, seen, _ in twin_runs:
        for r in range(1, ROUNDS + 1):
            expected = {sites[n] for n in strategy.select_nodes(Connected(), r, run.fraction_train)}
            assert len(expected) == 2
            assert {e["site"] for e in seen if e["type"] == "train" and e["round"] == r} == expected
            entry = _round(run_dir, r)
            assert set(entry["sites"]) == expected and entry["failures"] == []
    first = [set(_round(twin_runs[0][0], r)["sites"]) for r in range(1, ROUNDS + 1)]
    assert len({tuple(sorted(s)) for s in first}) > 1, "every round asked the same sites"


def test_eval_every_evaluates_every_second_model_and_the_last(twin_runs):
    run_dir, seen, _ = twin_runs[0]
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert history["rounds"] == [0, 2, 3]
    assert _round(run_dir, 1)["eval"] is None and _round(run_dir, 2)["eval"] is not None
    # the sites evaluated the received model in rounds 1 and 3 only (round 2 trained only)
    for r, asked in ((1, True), (2, False), (3, True)):
        mse = [s["eval_action_mse"] for s in _round(run_dir, r)["sites"].values()]
        assert all((m > 0) if asked else (m == -1.0) for m in mse), (r, mse)
    # the final model is evaluated by every site, sampled or not
    assert {e["site"] for e in seen if e["type"] == "evaluate"} == set(SITES)
    assert set(history["per_site"]) == set(SITES)


def test_keep_checkpoints_keeps_only_the_newest(twin_runs):
    run_dir = twin_runs[0][0]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == [f"{ROUNDS:06d}", "last"]


def test_optimizer_state_reset_keeps_nothing_on_the_site(twin_runs):
    state = twin_runs[0][2]
    assert list(state.rglob("optimizer*.pt")) == []


def test_proximal_mu_reaches_every_site_by_message(twin_runs):
    run_dir, seen, _ = twin_runs[0]
    trains = [e for e in seen if e["type"] == "train"]
    assert trains and all(e["mu"] == pytest.approx(0.01) for e in trains)
    for r in range(1, ROUNDS + 1):
        for site in _round(run_dir, r)["sites"].values():
            assert site["proximal"] > 0  # the term was added, from the second step on


def test_bfloat16_travels_both_ways(twin_runs):
    run_dir, seen, _ = twin_runs[0]
    down = [e for e in seen if "wire" in e]
    assert down and all(e["wire"] == "bfloat16" and e["dtypes"] == {"uint16"} for e in down)
    meta = json.loads((run_dir / "run.json").read_text())
    for r in range(1, ROUNDS + 1):
        for site in _round(run_dir, r)["sites"].values():  # 2 bytes per trainable parameter
            assert 2 * meta["parameters"]["trainable"] <= site["payload_bytes"]
            assert site["payload_bytes"] < 2.1 * meta["parameters"]["trainable"]


def test_same_config_same_seed_same_numbers(twin_runs):
    (a, _, _), (b, _, _) = twin_runs
    ha = json.loads((a / "eval_history.json").read_text())
    hb = json.loads((b / "eval_history.json").read_text())
    assert ha == hb
    for r in range(1, ROUNDS + 1):
        ra, rb = _round(a, r), _round(b, r)
        assert {s: v["train_loss"] for s, v in ra["sites"].items()} == {
            s: v["train_loss"] for s, v in rb["sites"].items()}
    wa = load_file(a / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    wb = load_file(b / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_round_timeout_closes_the_round_without_the_slow_site(demo_root, tmp_path):
    config = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 1, "local-steps": 2, "batch-size": 4,
        "eval-samples": 4, "min-sites": 3, "round-timeout": 2.0,
        "output-dir": str(tmp_path / "runs")}).to_flwr()
    nodes = _nodes(demo_root, tmp_path / "state")[:3]
    late = {("site-2", "train"): 3600.0, ("site-2", "evaluate"): 3600.0}
    run_dir = run_inprocess(config, nodes, 43, late=late)
    entry = _round(run_dir, 1)
    assert set(entry["sites"]) == {"site-0", "site-1"} and entry["aggregated"] is True
    [failure] = entry["failures"]
    assert failure["site"] == "site-2" and failure["kind"] == "timeout"
    assert "round-timeout=2.0" in failure["reason"]
    final = json.loads((run_dir / "run.json").read_text())["final_eval"]
    assert set(final["action_mse"]) == {"site-0", "site-1"}
    assert [(f["site"], f["kind"]) for f in final["failures"]] == [("site-2", "timeout")]
