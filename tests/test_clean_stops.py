"""Clean stops and early checks, with real processes over real TLS.

- ``zk0 cluster`` stopped with SIGTERM (what Docker, systemd and CI send) or SIGINT mid-run
  stops its whole process tree: every PID it had started, down to the ServerApp and the
  site workers, is gone.
- A bad policy name or malformed ``policy-options`` is refused before any process starts
  (``zk0 cluster``) or any site is contacted (the ServerApp).
- A site whose SuperNode was killed rejoins when restarted at once: the launcher retries while
  the SuperLink still counts the old node online, says so, and connects as the same node; then
  SIGINT stops every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from process_checks import descendants, procs_mentioning

from deploy.cli import build_parser
from deploy.flower.env import child_env
from deploy.flower.processes import ManagedProcess, pid_alive

REPO_ROOT = Path(__file__).resolve().parent.parent


def _zk0(args: list[str], work: Path, log: Path) -> ManagedProcess:
    """``zk0 ARGS`` as a child process in its own session (as a shell or systemd starts it)."""
    env = child_env(work / "home", {"PYTHONPATH": str(REPO_ROOT)})
    return ManagedProcess(log.stem, [sys.executable, "-m", "deploy.cli", *args], log, env=env,
                          cwd=work).start()


def _wait_for(proc: ManagedProcess, text: str, timeout: float, since: int = 0) -> float:
    t0 = time.monotonic()
    while text not in proc.log_text(since):
        assert proc.returncode is None, f"{proc.name} exited:\n{proc.log_tail(60)}"
        assert time.monotonic() - t0 < timeout, f"no {text!r} after {timeout} s:\n" + (
            proc.log_tail(60))
        time.sleep(0.5)
    return time.monotonic() - t0


def _wait_for_process(pid: int, name: str, timeout: float) -> float:
    """Wait until a process named ``name`` runs below ``pid`` (e.g. a ClientApp at work)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for child in descendants(pid):
            try:
                if psutil.Process(child).name().startswith(name[:15]):
                    return time.monotonic() - t0
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no {name} below pid {pid} after {timeout} s")


# -- early checks (no process) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("policy=nosuchpolicy", "key 'policy': unknown policy 'nosuchpolicy'"),
        ("policy-options='{bad'", "key 'policy-options': not JSON"),
        ("policy-options={bad", "run config override 'policy-options={bad'"),
        ("policy-options='{\"no_such_field\": 1}'", "['no_such_field'] are not fields of"),
    ],
)
def test_cluster_refuses_a_bad_policy_before_anything_starts(
    override, expected, tmp_path, capsys
):
    work = tmp_path / "work"
    args = build_parser().parse_args(["cluster", "--work-dir", str(work), "-c", override])
    t0 = time.monotonic()
    code = args.func(args)
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err
    assert not work.exists(), "nothing may be created (no data, certs, processes) before"
    print(f"refused in {took:.1f} s", file=sys.stderr)


def test_serverapp_refuses_a_bad_policy_before_stage_0(demo_root, tmp_path):
    from common.settings import RunConfig, SettingsError
    from harness.inprocess_grid import InProcessGrid, server_context
    from superlink.federation import run_federation

    calls = []

    def counting_app(msg, context):
        calls.append(msg.metadata.message_type)
        raise AssertionError("no site should be contacted")

    run_config = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "policy-options": '{"chunk_sizee": 5}',
        "output-dir": str(tmp_path / "runs"),
    }).to_flwr()  # keys and types are fine: only building the policy's config shows the typo
    nodes = [{"site-name": "site-0", "dataset-root": str(demo_root / "site-0")}]
    grid = InProcessGrid(counting_app, nodes, run_config)
    with pytest.raises(SettingsError, match=r"\['chunk_sizee'\] are not fields"):
        run_federation(grid, server_context(run_config, 31))
    assert calls == []
    meta = json.loads((tmp_path / "runs" / "run-31" / "run.json").read_text())
    assert "chunk_sizee" in meta["failed"]


# -- zk0 cluster: the whole tree stops on SIGTERM as on SIGINT ------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cluster_stops_its_whole_process_tree(sig, demo_root, tmp_path):
    work = tmp_path / "work"
    args = [
        "cluster", "--sites", "2", "--data-dir", str(demo_root), "--work-dir", str(work),
        "-c", "num-server-rounds=30", "-c", "local-steps=2", "-c", "eval-samples=4",
    ]  # fmt: skip
    proc = _zk0(args, tmp_path, tmp_path / "cluster.log")
    try:
        took = _wait_for(proc, "started run", timeout=300)
        took += _wait_for_process(proc.pid, "flwr-serverapp", timeout=120)  # the run is on
        tree = descendants(proc.pid)
        names = {psutil.Process(p).name() for p in tree if pid_alive(p)}
        print(f"mid-run after {took:.0f} s: {len(tree)} processes {sorted(names)}",
              file=sys.stderr)
        # SuperLink, its SuperExec, the ServerApp, 2 SuperNodes, 2 site workers, flwr log, ...
        assert len(tree) >= 8
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        code = proc.wait(120)
        print(f"{sig.name}: stopped in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        assert code == 128 + sig, proc.log_tail(40)
    finally:
        proc.stop()
    assert f"stopped by {sig.name}; every process it started has been stopped" in (
        proc.log_text())
    assert [p for p in tree if pid_alive(p)] == []
    assert procs_mentioning(str(work)) == []


# -- zk0 supernode: a restarted site rejoins ------------------------------------------------


@pytest.mark.e2e
def test_restarted_site_rejoins_after_its_old_node_expires(demo_root, tmp_path):
    """The old launcher dies by SIGKILL (its SuperNode never deactivates) while the new one
    is being refused: the order is forced so that the new SuperNode dials inside the old
    node's 60 s window however long its start-up (the dataset check) takes on a busy box."""
    from certs import ensure_federation_certs
    from deploy.cluster.local_cluster import LocalCluster, free_port

    fed = ensure_federation_certs(tmp_path / "certs", ["127.0.0.1", "localhost"], ["lab-r"])
    priv, pub = fed.site_keys["lab-r"]
    site_work = tmp_path / "site"
    args = [
        "supernode", "--site-name", "lab-r", "--site-key", str(priv),
        "--ca-cert", str(fed.ca_cert), "--dataset-root", str(demo_root / "site-0"),
        "--work-dir", str(site_work),
        # no site worker: its torch import would compete with the old node's heartbeats on a
        # 2-core box, and this test is about the node's expiry window, not the worker
        "--no-worker",
    ]  # fmt: skip
    with LocalCluster(tmp_path, [], tmp_path / "link", certs=fed, startup_timeout=90) as link:
        node_id = link.register("lab-r", pub)
        args += ["--superlink", link.address]
        def ports() -> list[str]:  # both launchers run at once: no shared default port
            return ["--runtime-port", str(free_port()),
                    "--metrics-listen", f"127.0.0.1:{free_port()}"]

        first = _zk0([*args, *ports()], tmp_path, tmp_path / "first.log")
        second: ManagedProcess | None = None
        try:
            _wait_for(first, f"connected as node {node_id}", timeout=180)
            link.wait_online([node_id], 30)
            second = _zk0([*args, *ports()], tmp_path, tmp_path / "second.log")
            _wait_for(second, "still counts as online", timeout=240)  # refused: node online
            # A crash: the old launcher, its SuperNode and SuperExec die at once, by PID.
            old = descendants(first.pid)
            for pid in [*old, first.pid]:
                os.kill(pid, signal.SIGKILL)
            first.wait(10)
            assert [p for p in old if pid_alive(p)] == []
            took = _wait_for(second, f"connected as node {node_id}", timeout=120)
            print(f"rejoined as node {node_id} {took:.0f} s after the old one died",
                  file=sys.stderr)
            log = second.log_text()
            assert "did not stop cleanly and still counts as online" in log  # after the kill
            assert "retrying in" in log
            assert "not registered" not in log  # no misleading hint
            assert took <= rejoin_window()
            link.wait_online([node_id], 30)
            tree = descendants(second.pid)
            assert len(tree) >= 2  # SuperNode and SuperExec
            t0 = time.monotonic()
            os.kill(second.pid, signal.SIGINT)
            assert second.wait(60) == 0, second.log_tail(40)
            print(f"SIGINT: stopped in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        finally:
            first.stop()
            if second is not None:
                second.stop()
    assert [p for p in tree if pid_alive(p)] == []
    assert procs_mentioning(str(site_work)) == []


def rejoin_window() -> float:
    from deploy.lab import rejoin

    return rejoin.NODE_EXPIRY_S + rejoin.MARGIN_S
