"""End to end: a real SuperLink and 4 authenticated SuperNodes over TLS train SmolVLA (tiny).

Real processes (flower-superlink, flower-superexec, flower-supernode) on 127.0.0.1 with TLS,
node authentication and process isolation; real LeRobot datasets on disk; the real SmolVLA code
path. Checks the run's outputs, not just that it ran.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.norm_stats import merge_all
from common.settings import NodeConfig
from deploy.cluster.local_cluster import LocalCluster
from deploy.flower.logs import EXIT_SUPERNODE_CONNECTION_ERROR, flower_exit_code

REPO = Path(__file__).resolve().parent.parent
SITES = 4
ROUNDS = 2
RUN = {
    "policy": "smolvla-tiny",
    "num-server-rounds": ROUNDS,
    "local-steps": 25,
    "batch-size": 8,
    "eval-samples": 32,
    "min-sites": SITES,
    "round-timeout": 600.0,
    # bfloat16 goes over the real transport as uint16 bits (Flower's Array refuses bfloat16);
    # float16, the default, is the same 2-byte path and is covered in-process.
    "wire-dtype": "bfloat16",
    # each site ends by fine-tuning the final model on its own data (through its warm worker)
    "personalize-steps": 5,
}

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def federation(demo_root, tmp_path_factory):
    """One federated run on a fresh local cluster; the cluster stays up for the checks."""
    work = tmp_path_factory.mktemp("cluster")
    nodes = [
        NodeConfig(site_name=f"site-{i}", dataset_root=str(demo_root / f"site-{i}"),
                   torch_threads=1)
        for i in range(SITES)
    ]
    cluster = LocalCluster(REPO, nodes, work, echo_run=False)
    cluster.start()
    try:
        result = cluster.run({**RUN, "output-dir": str(work / "runs")}, timeout=1200)
        yield cluster, result, work / "runs" / f"run-{result.run_id}", nodes
    finally:
        cluster.stop()
        assert cluster.alive_pids() == [], "processes left running after stop()"


def test_run_completed_and_every_site_replied(federation):
    _, result, run_dir, nodes = federation
    assert result.ok, f"status {result.status}\n{result.output[-3000:]}"
    names = {n.site_name for n in nodes}
    meta = json.loads((run_dir / "run.json").read_text())
    assert set(meta["sites"]) == names
    assert meta["parameters"]["trainable"] < meta["parameters"]["total"]
    for r in range(1, ROUNDS + 1):
        entry = json.loads((run_dir / "rounds" / f"round_{r:03d}.json").read_text())
        assert set(entry["sites"]) == names and entry["failures"] == []
        assert entry["steps"] == 25 * SITES and entry["samples"] == 25 * 8 * SITES
        for site in entry["sites"].values():
            assert np.isfinite(site["train_loss"]) and site["train_loss"] > 0
            assert site["payload_bytes"] > 0
        # only trainable params travel, in bfloat16: ~2 bytes per trainable parameter
        trainable = meta["parameters"]["trainable"]
        assert 2 * trainable <= entry["downlink_bytes_per_site"] < 2 * trainable * 1.1
        assert entry["eval"] is not None, f"round {r} has no eval of its global model"


def test_every_site_trained_in_its_warm_worker(federation):
    """Each site's worker took every message of the run from its SuperNode and ran it in its
    own process, which built the policy once per run."""
    cluster, _, _, nodes = federation
    for node in nodes:
        log = (cluster.logs / f"worker-{node.site_name}.log").read_text()
        done = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in log.splitlines()
                if " task_done " in line]
        assert len(done) == ROUNDS + 2, log[-3000:]  # stats, ROUNDS x train, final evaluate
        assert {d["status"] for d in done} == {"completed"}
        assert {d["pid"] for d in done} == {str(cluster.workers[node.site_name].pid)}
        assert done[-1]["policy_builds"] == "1", done[-1]


def test_eval_mse_recorded_per_site_and_falls(federation):
    _, _, run_dir, nodes = federation
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert history["rounds"] == list(range(ROUNDS + 1))  # initial model, then after each round
    for node in nodes:
        values = history["per_site"][node.site_name]
        assert all(v is not None and v > 0 for v in values), values
        assert values[-1] < values[0], f"{node.site_name}: {values}"
    weighted = history["weighted"]
    assert weighted[-1] < weighted[1] < weighted[0], weighted
    assert (run_dir / "eval_mse.png").stat().st_size > 1000
    logs = (run_dir / "logs.jsonl").read_text().splitlines()
    events = {json.loads(line)["event"] for line in logs}
    assert {"run_started", "site_joined", "round_finished", "run_finished"} <= events


def test_checkpoint_reloads_with_lerobot_and_predicts(federation):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from supernode.local_site import Site

    _, _, run_dir, nodes = federation
    ckpt = run_dir / "checkpoints" / "last" / "pretrained_model"
    assert ckpt.resolve().parent.name == f"{ROUNDS:06d}"
    policy = SmolVLAPolicy.from_pretrained(ckpt)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(ckpt))

    # the stored normalization stats are the federated ones: pooled over every site's train set
    sites = [Site.open(n.to_flwr(), {"policy": "smolvla-tiny"}) for n in nodes]
    pooled = merge_all(s.moments() for s in sites)["action"].finalize()
    norm = next(s for s in pre.steps if type(s).__name__ == "NormalizerProcessorStep")
    np.testing.assert_allclose(np.asarray(norm.stats["action"]["mean"]), pooled["mean"],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.stats["action"]["std"]), pooled["std"],
                               rtol=1e-4)

    frame = sites[0].eval_dataset()[0]
    batch = pre({k: v for k, v in frame.items() if k != "action"})
    chunk = post(policy.predict_action_chunk(batch))
    assert chunk.shape == (1, policy.config.n_action_steps, 6)
    assert np.isfinite(chunk.numpy()).all()


def test_unregistered_key_is_refused(federation, tmp_path):
    from certs import make_site_key

    cluster, _, _, nodes = federation
    key, _ = make_site_key(tmp_path, "intruder")
    intruder = NodeConfig(site_name="intruder", dataset_root=nodes[0].dataset_root)
    site = cluster.start_supernode(intruder, key)
    deadline = time.monotonic() + 30
    while site.supernode.returncode is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert site.supernode.returncode is not None, "SuperNode with an unregistered key kept running"
    assert flower_exit_code(site.supernode) == EXIT_SUPERNODE_CONNECTION_ERROR
    assert "Failed to activate SuperNode" in site.supernode.log_text()


def test_the_cluster_run_equals_the_same_run_in_one_process(federation, tmp_path):
    """Transport, process isolation and arrival order change nothing: the same configuration
    run in one process (same seed, same data) gives the same held-out MSE, round by round."""
    from common.settings import RunConfig
    from harness.inprocess_grid import run_inprocess

    _, _, run_dir, nodes = federation
    config = RunConfig.with_overrides({**RUN, "output-dir": str(tmp_path / "runs")}).to_flwr()
    local = [{**n.to_flwr(), "state-dir": str(tmp_path / "state" / n.site_name)} for n in nodes]
    replica = run_inprocess(config, local, run_id=9001)
    ours = json.loads((replica / "eval_history.json").read_text())
    cluster = json.loads((run_dir / "eval_history.json").read_text())
    assert ours["rounds"] == cluster["rounds"]
    for site, values in cluster["per_site"].items():
        np.testing.assert_allclose(ours["per_site"][site], values, rtol=1e-6, err_msg=site)
    # the personalized models too: each site fine-tuned the same final model the same way
    assert set(cluster["personalized"]["per_site"]) == {n.site_name for n in nodes}
    for site, value in cluster["personalized"]["per_site"].items():
        np.testing.assert_allclose(ours["personalized"]["per_site"][site], value, rtol=1e-6,
                                   err_msg=site)


def test_scaffold_through_the_site_workers_equals_the_same_run_in_one_process(
    federation, tmp_path
):
    """SCAFFOLD's control variates through the real path (warm site workers, c_i on each
    site's disk, the two-phase commit, signed messages carrying c and the deltas): the same
    held-out MSE round by round as one process, and every reply carries its control delta."""
    from common.settings import RunConfig
    from harness.inprocess_grid import run_inprocess

    cluster, _, _, nodes = federation
    run = {**RUN, "strategy": "scaffold", "num-server-rounds": 3, "local-steps": 5,
           "eval-samples": 8}
    result = cluster.run({**run, "output-dir": str(tmp_path / "runs")}, timeout=1200)
    assert result.ok, f"status {result.status}\n{result.output[-3000:]}"
    run_dir = tmp_path / "runs" / f"run-{result.run_id}"
    for r in (2, 3):  # from round 2 on, each site's delta builds on the c_i the server counted
        entry = json.loads((run_dir / "rounds" / f"round_{r:03d}.json").read_text())
        assert len(entry["sites"]) == SITES and entry["failures"] == []
        for report in entry["sites"].values():
            assert report["control_bytes"] == report["payload_bytes"] > 0
            assert report["control_base_round"] == r - 1
    config = RunConfig.with_overrides({**run, "output-dir": str(tmp_path / "local")}).to_flwr()
    local = [{**n.to_flwr(), "state-dir": str(tmp_path / "state" / n.site_name)} for n in nodes]
    ours = json.loads((run_inprocess(config, local, run_id=9002) / "eval_history.json")
                      .read_text())
    theirs = json.loads((run_dir / "eval_history.json").read_text())
    assert ours["rounds"] == theirs["rounds"]
    for site, values in theirs["per_site"].items():
        np.testing.assert_allclose(ours["per_site"][site], values, rtol=1e-6, err_msg=site)


def test_console_has_each_flower_line_once_and_the_plots_came_over_tls(federation):
    _, result, run_dir, nodes = federation
    lines = result.output.splitlines()
    assert not [line for line in lines if ":flwr:" in line], "Flower lines printed twice"
    assert sum("configure_train: Sampled" in line for line in lines) == ROUNDS
    progress = [line for line in lines if line.startswith("[zk0] ===== round ")]
    assert len(progress) == ROUNDS, lines
    # trajectories travel in the real messages (trajectory-every = 1 by default)
    for r in range(ROUNDS + 1):
        for node in nodes:
            assert (run_dir / "plots" / f"round_{r:03d}" / f"{node.site_name}.png").is_file()
    assert "data:image/png;base64," in (run_dir / "summary.html").read_text()
def _kill_when_serving(log: Path, pid_of, runs: Path, killed: list) -> None:
    """After round 1's report is written, SIGKILL the worker as it starts its next task."""
    deadline = time.monotonic() + 900
    while not list(runs.glob("run-*/rounds/round_001.json")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    seen = log.read_text().count(" task_started ")
    while log.read_text().count(" task_started ") == seen:
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    pid = pid_of()
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def test_a_worker_killed_mid_task_fails_that_round_and_serves_the_next(federation, tmp_path):
    """The round records the failure with its reason; the launcher restarts the worker; the
    next round has the site back. Runs last: it uses the cluster the other tests checked."""
    cluster, _, _, nodes = federation
    site = nodes[0].site_name
    supervisor = cluster.workers[site]
    runs = tmp_path / "runs"
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_when_serving,
        args=(cluster.logs / f"worker-{site}.log", lambda: supervisor.pid, runs, killed),
        daemon=True,
    )
    killer.start()
    result = cluster.run({**RUN, "num-server-rounds": 3, "local-steps": 10, "eval-samples": 8,
                          "output-dir": str(runs)}, timeout=1200)
    killer.join(10)
    assert result.ok, f"status {result.status}\n{result.output[-3000:]}"
    assert killed, "the worker was never caught serving"
    run_dir = runs / f"run-{result.run_id}"
    second = json.loads((run_dir / "rounds" / "round_002.json").read_text())
    [failure] = second["failures"]
    # Flower's task heartbeat: the SuperNode answers for the dead worker within a minute
    assert failure["site"] == site and "stopped responding" in failure["reason"], failure
    assert site not in second["sites"] and len(second["sites"]) == SITES - 1
    third = json.loads((run_dir / "rounds" / "round_003.json").read_text())
    assert site in third["sites"] and third["failures"] == []
    assert supervisor.restarts == 1 and supervisor.pid not in (None, killed[0])
