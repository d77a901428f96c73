"""Resume: a run whose ServerApp dies mid-run, started again with ``resume-from`` = its run
folder, ends exactly where the uninterrupted run ends.

The ServerApp is "killed" in round 3 after the sites trained it (so each site has already
saved round-3 optimizer moments that the resumed round 3 must not start from) and before the
round completed. In-process, the resumed run must give the same numbers bit for bit; over real
processes (``test_e2e_*``, a LocalCluster whose ``flwr-serverapp`` is killed by PID) the same
held-out MSE as the in-process uninterrupted run within 1e-6 (relative), the tolerance the
cluster-vs-in-process equivalence test uses.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from common.settings import NodeConfig, RunConfig, SettingsError
from harness.inprocess_grid import InProcessGrid, run_inprocess, server_context
from harness.synthetic_sites import SyntheticSites
from superlink import server_state
from superlink.checkpoints import latest_checkpoint

ROUNDS = 4
REAL = {"policy": "smolvla-tiny", "num-server-rounds": ROUNDS, "local-steps": 2,
        "batch-size": 4, "eval-samples": 4, "min-sites": 2, "seed": 3,
        "strategy": "fedavgm", "server-momentum": 0.5, "server-lr": 1.0}
REL_TOLERANCE = 1e-6


class ServerAppKilled(BaseException):
    """Stands for SIGKILL: nothing in the ServerApp may catch it and carry on."""


class KilledInRound(InProcessGrid):
    """The ServerApp dies once the sites have answered round ``kill_round``'s train messages."""

    def __init__(self, *args, kill_round: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_round = kill_round

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        if any(m.metadata.message_type == "train" and m.metadata.group_id == str(self.kill_round)
               for m in replies):
            raise ServerAppKilled(f"killed in round {self.kill_round}")
        return replies


def _nodes(demo_root: Path, state: Path, n: int = 2) -> list[dict]:
    return [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}"),
             "torch-threads": 1, "state-dir": str(state / f"site-{i}")} for i in range(n)]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _interrupted_then_resumed(config: dict, nodes: list[dict], make_app, *, lose_report=False):
    """Run until killed in round 3, then resume the folder with a new run id."""
    from superlink.federation import run_federation

    grid = KilledInRound(make_app(), nodes, config, 71, kill_round=3)
    with pytest.raises(ServerAppKilled):
        run_federation(grid, server_context(config, 71))
    run_dir = Path(config["output-dir"]) / "run-71"
    interrupted = _json(run_dir / "run.json")
    assert latest_checkpoint(run_dir)[0] == 2
    if lose_report:  # as if killed between round 2's checkpoint and its report
        (run_dir / "rounds" / "round_002.json").unlink()
    app = make_app()
    resumed = run_inprocess({**config, "resume-from": str(run_dir)}, nodes, 72, client_app=app)
    assert resumed == run_dir
    return run_dir, interrupted, app


def _same_run_outcome(a: Path, b: Path, exact: bool) -> None:
    ha, hb = _json(a / "eval_history.json"), _json(b / "eval_history.json")
    assert ha["rounds"] == hb["rounds"] == list(range(ROUNDS + 1))
    for site, values in ha["per_site"].items():
        if exact:
            assert hb["per_site"][site] == values, site
        else:
            np.testing.assert_allclose(hb["per_site"][site], values, rtol=REL_TOLERANCE,
                                       err_msg=site)
    for r in range(1, ROUNDS + 1):
        ra, rb = (_json(d / "rounds" / f"round_{r:03d}.json") for d in (a, b))
        assert ra["round"] == rb["round"] == r and sorted(ra["sites"]) == sorted(rb["sites"])


def test_a_killed_and_resumed_run_continues_exactly(demo_root, tmp_path):
    """Synthetic sites, FedAvgM with momentum: weights, momentum, eval history and round
    reports of the resumed run equal the uninterrupted run's bit for bit; rounds 1-2 are not
    redone, round 3 (never completed) is."""
    base = RunConfig.with_overrides({**REAL, "max-update-norm-ratio": 0.0}).to_flwr()
    nodes = _nodes(demo_root, tmp_path / "state-a")
    whole = run_inprocess({**base, "output-dir": str(tmp_path / "whole")}, nodes, 70,
                          client_app=SyntheticSites())
    config = {**base, "output-dir": str(tmp_path / "parts")}
    run_dir, interrupted, app = _interrupted_then_resumed(
        config, _nodes(demo_root, tmp_path / "state-b"), SyntheticSites, lose_report=True)

    assert interrupted["status"].startswith("failed: ServerAppKilled")
    assert sorted({r for _, r in app.trained}) == [3, 4]  # nothing completed is redone
    _same_run_outcome(whole, run_dir, exact=True)
    sa = server_state.read(latest_checkpoint(whole)[1] / server_state.STATE_FILE)
    sb = server_state.read(latest_checkpoint(run_dir)[1] / server_state.STATE_FILE)
    assert sa.server_round == sb.server_round == ROUNDS
    for name in sa.weights:
        np.testing.assert_array_equal(sa.weights[name], sb.weights[name], err_msg=name)
    assert sa.layout == sb.layout and "momentum_vector" in sa.layout
    for key in sa.strategy:
        np.testing.assert_array_equal(sa.strategy[key], sb.strategy[key], err_msg=key)
    meta = _json(run_dir / "run.json")
    assert meta["status"] == "completed" and "failed" not in meta
    assert meta["run_id"] == 71 and meta["federation_id"] == "71"
    assert [r["run_id"] for r in meta["runs"]] == [71, 72]
    assert meta["runs"][1]["resumed_after_round"] == 2
    assert (run_dir / "rounds" / "round_002.json").is_file()  # restored from the checkpoint


def test_resume_refuses_a_run_config_that_trains_differently(demo_root, tmp_path):
    calls = []

    def counting(msg, context):
        calls.append(msg)
        raise AssertionError("no site should be contacted")

    run_dir = tmp_path / "runs" / "run-5"
    run_dir.mkdir(parents=True)
    old = RunConfig.with_overrides({**REAL, "output-dir": str(tmp_path / "runs")}).to_flwr()
    (run_dir / "run.json").write_text(json.dumps(
        {"run_id": 5, "run_config": old, "features": {}}))
    changed = {**old, "local-steps": 3, "seed": 4, "round-timeout": 60.0,
               "resume-from": str(run_dir)}
    from superlink.federation import run_federation

    with pytest.raises(SettingsError, match=r"'local-steps' was 2, now 3; 'seed' was 3, now 4\."):
        run_federation(InProcessGrid(counting, _nodes(demo_root, tmp_path), changed, 6),
                       server_context(changed, 6))
    with pytest.raises(SettingsError, match=r"holds no run\.json"):
        missing = {**old, "resume-from": str(tmp_path / "nowhere")}
        run_federation(InProcessGrid(counting, _nodes(demo_root, tmp_path), missing, 6),
                       server_context(missing, 6))
    (run_dir / "run.json").write_text(json.dumps(
        {"run_id": 5, "run_config": old, "features": {}, "status": "completed"}))
    same = {**old, "resume-from": str(run_dir)}
    with pytest.raises(SettingsError, match="already completed; nothing to resume"):
        run_federation(InProcessGrid(counting, _nodes(demo_root, tmp_path), same, 6),
                       server_context(same, 6))
    assert calls == []
    assert "failed" not in _json(run_dir / "run.json")  # a refused resume writes nothing


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory):
    """The reference: the real ClientApp, 4 rounds without interruption."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    config = RunConfig.with_overrides({**REAL, "output-dir": str(tmp / "runs")}).to_flwr()
    return run_inprocess(config, _nodes(demo_root, tmp / "state"), 60)


def test_resumed_real_sites_end_with_the_same_held_out_mse(demo_root, tmp_path, uninterrupted):
    """The real ClientApp (SmolVLA tiny, AdamW moments kept per site across rounds): a run
    killed in round 3 and resumed ends with the uninterrupted run's held-out MSE."""
    from supernode.client_app import app

    config = RunConfig.with_overrides({**REAL, "output-dir": str(tmp_path / "runs")}).to_flwr()
    run_dir, _, _ = _interrupted_then_resumed(
        config, _nodes(demo_root, tmp_path / "state"), lambda: app)
    _same_run_outcome(uninterrupted, run_dir, exact=False)
    fa, fb = (_json(d / "run.json")["final_eval"] for d in (uninterrupted, run_dir))
    assert fb["action_mse_weighted"] == pytest.approx(fa["action_mse_weighted"],
                                                      rel=REL_TOLERANCE)
    # each site keeps its moments under the federation's id (the first run's), not under
    # the resumed run's: the last round's, and the one it started from
    for site in ("site-0", "site-1"):
        state = tmp_path / "state" / site
        assert [p.name for p in state.iterdir() if p.is_dir()] == ["run-71"]
        files = sorted(p.name for p in (state / "run-71").iterdir())
        assert files == [f"optimizer-r{r:06d}.pt" for r in (ROUNDS - 1, ROUNDS)], files
        # the sites had handled round 3 of run 71 when it was killed; run 72's resend of round
        # 3 was taken (a newer instruction of the same federation), up to its final evaluation
        [last] = _json(state / "instructions.json")["71"].values()
        assert (last["run_id"], last["round"], last["kind"]) == (72, ROUNDS, "evaluate")


# -- real processes -------------------------------------------------------------------------


def _serverapps(cluster) -> list[psutil.Process]:
    """The flwr-serverapp processes among the cluster's process groups."""
    found = []
    for pid in cluster.alive_pids():
        try:
            proc = psutil.Process(pid)
            if any("flwr-serverapp" in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.e2e
def test_e2e_serverapp_killed_by_pid_and_resumed_on_the_same_cluster(
    demo_root, tmp_path, uninterrupted
):
    """Real SuperLink, SuperExecs and SuperNodes over TLS: the ServerApp process is killed by
    PID once round 2's checkpoint is on disk; a second ``flwr run`` with resume-from finishes
    rounds 3-4 and ends with the uninterrupted (in-process) run's held-out MSE."""
    from deploy.cluster.local_cluster import LocalCluster
    from deploy.flower import flwr_cli

    repo = Path(__file__).resolve().parent.parent
    nodes = [NodeConfig(site_name=f"site-{i}", dataset_root=str(demo_root / f"site-{i}"),
                        torch_threads=1, state_dir=str(tmp_path / "state" / f"site-{i}"))
             for i in range(2)]
    runs = tmp_path / "runs"
    config = {**REAL, "output-dir": str(runs), "round-timeout": 600.0}
    with LocalCluster(repo, nodes, tmp_path / "cluster", echo_run=False) as cluster:
        outcome: dict = {}
        worker = threading.Thread(
            target=lambda: outcome.setdefault("first", cluster.run(config, timeout=900)))
        t0 = time.monotonic()
        worker.start()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and worker.is_alive():
            done = [latest_checkpoint(d) for d in runs.glob("run-*")] if runs.is_dir() else []
            if any(c and c[0] >= 2 for c in done):
                break
            time.sleep(0.5)
        [run_dir] = list(runs.glob("run-*"))
        killed = _serverapps(cluster)
        assert killed, "no flwr-serverapp process found in the cluster's process groups"
        for proc in killed:
            proc.kill()  # SIGKILL by PID
        first_run = int(run_dir.name.removeprefix("run-"))
        flwr_cli.stop_run(cluster.flwr_home, cluster.connection, first_run)
        worker.join(120)
        assert not worker.is_alive()
        assert outcome["first"].status != "finished:completed"
        killed_after = latest_checkpoint(run_dir)[0]
        assert killed_after in (2, 3), killed_after
        t1 = time.monotonic()
        second = cluster.run({**config, "resume-from": str(run_dir)}, timeout=900)
        t2 = time.monotonic()
        assert second.ok, f"{second.status}\n{second.output[-3000:]}"
    print(f"\nkilled run: {t1 - t0:.0f} s, resumed run: {t2 - t1:.0f} s")
    meta = _json(run_dir / "run.json")
    assert meta["status"] == "completed"
    assert [r["run_id"] for r in meta["runs"]] == [first_run, second.run_id]
    _same_run_outcome(uninterrupted, run_dir, exact=False)
    fa, fb = (_json(d / "run.json")["final_eval"] for d in (uninterrupted, run_dir))
    assert fb["action_mse_weighted"] == pytest.approx(fa["action_mse_weighted"],
                                                      rel=REL_TOLERANCE)
