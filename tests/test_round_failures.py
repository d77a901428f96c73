"""The ServerApp's loop when sites fail: bad updates are dropped and counted per site, a round
short of ``min-replies`` fails without moving the model or writing a checkpoint, the run says
how it ended, waits are bounded, and late replies never reach a later round.

Unchanged ServerApp (``superlink.federation``) over the in-process grid; sites answer stage 0
with zk0's real ClientApp on real datasets and train with :mod:`harness.synthetic_sites`
(deterministic updates, no policy), so each federation takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.settings import RunConfig
from harness.inprocess_grid import InProcessGrid, run_inprocess, server_context
from harness.synthetic_sites import Fault, SyntheticSites
from superlink.run_status import RoundLedger, RunFailed


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    """Poll the in-process grid every 0.2 s (a SuperLink is polled every 2 s)."""
    from superlink import exchange
    from superlink.strategy import node_selection

    monkeypatch.setattr(exchange, "POLL_SECONDS", 0.2)
    monkeypatch.setattr(node_selection, "WAIT_POLL_SECONDS", 0.2)


def _config(tmp_path: Path, **overrides) -> dict:
    return RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 3, "min-sites": 2,
        "output-dir": str(tmp_path / "runs"), **overrides}).to_flwr()


def _nodes(demo_root: Path, n: int) -> list[dict]:
    return [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}")}
            for i in range(n)]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _round(run_dir: Path, r: int) -> dict:
    return _json(run_dir / "rounds" / f"round_{r:03d}.json")


def _kinds(entry: dict) -> dict[str, str]:
    return {f["site"]: f["kind"] for f in entry["failures"]}


class Receipts(SyntheticSites):
    """Synthetic sites that note the digest of the model each train message carried."""

    def __init__(self, faults=None):
        super().__init__(faults)
        self.received: dict[tuple[str, int], str] = {}

    def __call__(self, msg, context):
        from common.protocol import CODEC, CONFIG, RoundInstructions

        if msg.metadata.message_type == "train":
            r = RoundInstructions.from_record(msg.content.config_records[CONFIG]).server_round
            site = context.node_config["site-name"]
            self.received[(site, r)] = str(msg.content.config_records[CODEC]["digest"])
        return super().__call__(msg, context)


@pytest.fixture(scope="module")
def faulty_run(demo_root, tmp_path_factory):
    """4 sites, 3 rounds: site-1 always sends NaN/Inf, site-2 an update 100x the others', and
    sites 2 and 3 fail in round 2, which leaves one usable update (min-replies is 2)."""
    tmp = tmp_path_factory.mktemp("faulty")
    app = Receipts({
        "site-1": Fault(nonfinite=True),
        "site-2": Fault(scale=100.0, fail_rounds=(2,)),
        "site-3": Fault(fail_rounds=(2,)),
    })
    config = _config(tmp, **{"min-sites": 4, "min-replies": 2, "max-failed-rounds": 2})
    run_dir = run_inprocess(config, _nodes(demo_root, 4), 31, client_app=app)
    return run_dir, app


def test_bad_updates_are_dropped_counted_and_the_round_goes_on(faulty_run):
    run_dir, _ = faulty_run
    first = _round(run_dir, 1)
    assert first["status"] == "ok" and sorted(first["sites"]) == ["site-0", "site-3"]
    assert _kinds(first) == {"site-1": "nonfinite", "site-2": "norm"}
    assert first["failure_counts"] == {"site-1": {"nonfinite": 1}, "site-2": {"norm": 1}}
    reasons = {f["site"]: f["reason"] for f in first["failures"]}
    assert "NaN or Inf" in reasons["site-1"] and "median" in reasons["site-2"]
    meta = _json(run_dir / "run.json")
    assert meta["failures_by_site"] == {
        "site-1": {"nonfinite": 3},
        "site-2": {"error": 1, "norm": 2},
        "site-3": {"error": 1},
    }
    # a dropped update's report still counts as a measurement of the model it received
    assert "site-1" in first["eval"]["action_mse"]
    assert "site-1" in meta["initial_eval"]["action_mse"]


def test_a_round_short_of_min_replies_fails_and_moves_nothing(faulty_run):
    run_dir, app = faulty_run
    second = _round(run_dir, 2)
    assert second["status"] == "failed" and second["aggregated"] is False
    assert second["failure_reason"] == "1 usable update(s), min-replies is 2"
    assert second["checkpoint"] is None
    assert _kinds(second) == {"site-1": "nonfinite", "site-2": "error", "site-3": "error"}
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["000001", "000003", "last"]  # no checkpoint pretends round 2 happened
    # round 3 started from the model after round 1: round 2 did not move it
    assert app.received[("site-0", 2)] == app.received[("site-0", 3)]
    assert app.received[("site-0", 1)] != app.received[("site-0", 2)]


def test_the_run_says_it_completed_with_failed_rounds(faulty_run):
    run_dir, _ = faulty_run
    meta = _json(run_dir / "run.json")
    assert meta["status"] == "completed with failed rounds"
    assert meta["failed_rounds"] == [2]
    assert "failed" not in meta
    assert _round(run_dir, 3)["status"] == "ok"


def test_a_run_in_which_every_site_fails_ends_failed_without_checkpoints(demo_root, tmp_path):
    app = SyntheticSites({"site-0": Fault(fail_always=True), "site-1": Fault(fail_always=True)})
    config = _config(tmp_path, **{"max-failed-rounds": 2})
    with pytest.raises(RunFailed, match=r"2 rounds in a row failed \(max-failed-rounds=2\)"):
        run_inprocess(config, _nodes(demo_root, 2), 32, client_app=app)
    run_dir = tmp_path / "runs" / "run-32"
    meta = _json(run_dir / "run.json")
    assert meta["status"].startswith("failed: RunFailed: 2 rounds in a row failed")
    assert meta["failed_rounds"] == [1, 2] and "final_eval" not in meta
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "rounds" / "round_003.json").exists()  # round 3 never started
    assert _kinds(_round(run_dir, 1)) == {"site-0": "error", "site-1": "error"}


def test_a_run_without_a_single_successful_round_is_not_completed():
    ledger = RoundLedger(max_failed_rounds=5)
    ledger.failed(1)
    ledger.failed(2)
    ledger.check("0 usable update(s)")  # 2 < 5: goes on
    with pytest.raises(RunFailed, match=r"no round moved the global model: rounds \[1, 2\]"):
        ledger.final_status()
    ledger.succeeded()
    assert ledger.final_status() == "completed with failed rounds"


def test_joining_waits_at_most_join_timeout_then_says_so(demo_root, tmp_path):
    calls = []

    def counting(msg, context):
        calls.append(msg.metadata.message_type)
        raise AssertionError("no site should be contacted")

    config = _config(tmp_path, **{"min-sites": 3, "join-timeout": 1.0})
    grid = InProcessGrid(counting, _nodes(demo_root, 3), config, 33, offline={"site-2"})
    from superlink.federated_stats import FederationSetupError
    from superlink.federation import run_federation

    with pytest.raises(FederationSetupError,
                       match=r"2 site\(s\) connected after join-timeout=1.0s, min-sites is 3"):
        run_federation(grid, server_context(config, 33))
    assert calls == []
    meta = _json(tmp_path / "runs" / "run-33" / "run.json")
    assert meta["status"].startswith("failed: FederationSetupError")


class DropsOut(InProcessGrid):
    """site-1 disconnects for good once it has sent its round-1 update."""

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        if any(self.site_name(m.metadata.src_node_id) == "site-1"
               and m.metadata.message_type == "train" for m in replies):
            self.offline.add("site-1")
        return replies


def test_late_and_vanished_sites_cost_one_bounded_wait_and_never_stale_work(demo_root, tmp_path):
    """site-2 answers round 1 past round-timeout: its message expires with the round, its
    late reply is never delivered, and it takes part in round 2 as usual. site-1 disconnects
    after round 1: round 2 waits join-timeout for it (min-sites 3), then goes on without it."""
    app = SyntheticSites()
    config = _config(tmp_path, **{"min-sites": 3, "round-timeout": 3.0, "join-timeout": 1.0,
                                  "num-server-rounds": 2})
    nodes = _nodes(demo_root, 3)

    def slow_round_1(site, msg):
        return 60.0 if site == "site-2" and msg.metadata.group_id == "1" else 0.0

    grid = DropsOut(app, nodes, config, 34, delay=slow_round_1)
    from superlink.federation import run_federation

    run_dir = run_federation(grid, server_context(config, 34))
    first, second = _round(run_dir, 1), _round(run_dir, 2)
    assert _kinds(first) == {"site-2": "timeout"} and first["status"] == "ok"
    assert "round-timeout=3.0" in first["failures"][0]["reason"]
    assert ("site-2", 1) not in app.trained  # expired before anyone started the stale work
    assert [m.metadata.group_id for m in grid.expired] in (["1"], [])
    assert ("site-2", 2) in app.trained and "site-2" in second["sites"]
    assert _kinds(second) == {"site-1": "offline"} and second["status"] == "ok"
    assert "join-timeout=1.0s" in second["failures"][0]["reason"]
    assert _json(run_dir / "run.json")["status"] == "completed"


def test_a_reply_that_arrives_after_its_round_is_never_applied_to_a_later_one(
    demo_root, tmp_path
):
    """A transport that delivers replies nobody asked for hands site-2's round-1 reply (6 s
    late, round-timeout 4 s) to round 2's exchange: it is dropped as stale, and round 2 uses
    site-2's own round-2 reply."""
    app = SyntheticSites()
    config = _config(tmp_path, **{"round-timeout": 4.0, "num-server-rounds": 2,
                                  "min-sites": 3})

    def timing(site, msg):
        if msg.metadata.group_id == "1":
            return 6.0 if site == "site-2" else 0.0
        return 3.0 if msg.metadata.message_type == "train" else 0.0  # round 2 takes a while

    grid = InProcessGrid(app, _nodes(demo_root, 3), config, 35, delay=timing,
                         deliver_unasked=True)
    from superlink.federation import run_federation

    run_dir = run_federation(grid, server_context(config, 35))
    first, second = _round(run_dir, 1), _round(run_dir, 2)
    assert _kinds(first) == {"site-2": "timeout"}
    assert sorted(second["sites"]) == ["site-0", "site-1", "site-2"]
    assert _kinds(second) == {"site-2": "stale"}
    assert "earlier exchange" in second["failures"][0]["reason"]
