"""The site worker: its channel, who may use it, and that it computes what the ClientApp would.

The channel and refusal tests run a worker in a thread of this process on a real Unix socket.
The equality test runs real worker processes (``python -m supernode.worker``, supervised as
``zk0 supernode`` / ``zk0 cluster`` do) behind zk0's unchanged ServerApp and ClientApp in one
process (:mod:`harness.inprocess_grid`): only Flower's transport is left out, and
tests/test_e2e_federation.py runs the real cluster through workers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common import codec
from common.settings import RunConfig
from supernode import channel
from supernode.relay import ping, relay


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture()
def thread_worker(tmp_path: Path) -> Iterator[Path]:
    """A worker serving in a thread of this process; yields its socket path."""
    from supernode.worker import Worker, bind

    path = tmp_path / "w" / "worker.sock"
    sock = bind(path)
    worker = Worker(sock, path)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        worker.stop.set()
        thread.join(10)
        sock.close()


def test_records_cross_the_channel_unchanged() -> None:
    weights = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
               "b.bias": np.linspace(-1, 1, 5, dtype=np.float32)}
    payload = codec.encode(weights, "bfloat16")
    content = RecordDict({
        "arrays": payload.arrays,
        "codec": payload.meta,
        "raw": ArrayRecord({"i64": Array(np.array([[1, -2], [3, 4]], dtype=np.int64)),
                            "empty": Array(np.zeros((0, 3), dtype=np.float16))}),
        "config": ConfigRecord({"s": "x'y\"z", "b": b"\x00\xff", "t": True, "i": 7,
                                "f": 0.1, "fl": [1.5, 2.5], "sl": ["a", "b"]}),
        "metrics": MetricRecord({"loss": 0.25, "n": 3, "hist": [1.0, 2.0]}),
    })
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=channel.send_frame,
                                  args=(left, channel.KIND_TASK, {"run_id": 5}, content))
        sender.start()
        frame = channel.recv_frame(right)
        sender.join()
    assert frame.kind == channel.KIND_TASK and frame.header["run_id"] == 5
    got = frame.content
    assert list(got.keys()) == list(content.keys())
    for key in ("arrays", "raw"):
        assert list(got.array_records[key]) == list(content.array_records[key])
        for name, array in content.array_records[key].items():
            back = got.array_records[key][name]
            assert (back.dtype, back.shape, back.stype, back.data) == (
                array.dtype, array.shape, array.stype, array.data)
    assert dict(got.config_records["config"]) == dict(content.config_records["config"])
    assert dict(got.metric_records["metrics"]) == dict(content.metric_records["metrics"])
    decoded = codec.decode(codec.from_content(got))  # digests still verify
    np.testing.assert_allclose(decoded["a.weight"], weights["a.weight"], rtol=1e-2)


def test_socket_is_private_and_a_live_one_is_not_taken_over(thread_worker: Path) -> None:
    from supernode.worker import WorkerStartError, bind

    assert _mode(thread_worker.parent) == 0o700 and _mode(thread_worker) == 0o600
    assert stat.S_ISSOCK(thread_worker.lstat().st_mode)
    with pytest.raises(WorkerStartError, match="already serving"):
        bind(thread_worker)
    with pytest.raises(ValueError, match="Unix sockets allow 107"):
        channel.check_socket_path(Path("/tmp") / ("x" * 120))


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    from supernode.worker import bind

    path = tmp_path / "w" / "worker.sock"
    dead = bind(path)
    dead.close()  # a killed worker leaves its file behind
    (tmp_path / "w").chmod(0o755)  # and a loosened folder is tightened again
    sock = bind(path)
    sock.close()
    assert _mode(tmp_path / "w") == 0o700 and _mode(path) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_the_worker() -> None:
    """Another uid can reach the folder around the worker's, but not the worker."""
    from supernode.worker import Worker, bind

    python = "/usr/bin/python3"  # the venv's may not be readable by another user
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} not found")
    outer = Path(tempfile.mkdtemp(prefix="zk0-worker-uid-"))  # 0755 from here up
    try:
        outer.chmod(0o755)
        path = outer / "w" / "worker.sock"
        sock = bind(path)
        worker = Worker(sock, path)
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        probe = ("import os, socket, sys\n"
                 "os.listdir(sys.argv[2])\n"  # the surroundings are reachable ...
                 "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                 "try:\n    s.connect(sys.argv[1])\n"  # ... the worker is not
                 "except PermissionError:\n    sys.exit(1)\n")
        done = subprocess.run([python, "-c", probe, str(path), str(outer)], user=65534,
                              group=65534, capture_output=True, text=True, timeout=60)
        worker.stop.set()
        thread.join(10)
        sock.close()
        assert done.returncode == 1, f"exit {done.returncode}: {done.stderr}"
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_a_relay_from_other_zk0_code_is_refused_with_the_reason(thread_worker: Path) -> None:
    for header, expected in (({"code": "0" * 64}, "runs zk0 code 000000000000"),
                             ({"protocol": 99}, "speaks zk0 worker protocol 99")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(thread_worker))
            channel.send_frame(s, channel.KIND_TASK, header, RecordDict())
            frame = channel.recv_frame(s)
        assert frame.kind == channel.KIND_ERROR
        assert expected in frame.header["error"] and "refused the task" in frame.header["error"]
        assert "worker-socket" in frame.header["error"]  # says how to get going again
    assert ping(thread_worker)["tasks"] == 0  # refused, not run, and still serving


def test_a_failed_task_is_an_error_naming_the_cause_and_the_worker_goes_on(
    thread_worker: Path, demo_root: Path, tmp_path: Path
) -> None:
    run = {"policy": "smolvla-tiny"}
    with pytest.raises(channel.WorkerRefused, match=r"DatasetError: dataset-root .*gone"):
        relay(thread_worker, "query.stats", RecordDict(),
              {"site-name": "a", "dataset-root": str(tmp_path / "gone")}, run, 1)
    with pytest.raises(channel.WorkerRefused, match=r"unknown message type 'train\.x'"):
        relay(thread_worker, "train.x", RecordDict(), {"site-name": "a"}, run, 1)
    reply = relay(thread_worker, "query.stats", RecordDict(),
                  {"site-name": "site-0", "dataset-root": str(demo_root / "site-0")}, run, 1)
    assert reply.config_records["site"]["site-name"] == "site-0"
    assert ping(thread_worker)["tasks"] == 3


# -- the same numbers through real worker processes ---------------------------------------------

SITES = ["site-0", "site-1"]
RUNS = {
    # optimizer moments kept across rounds (the worker keeps them in memory)
    "a": {"policy": "smolvla-tiny", "num-server-rounds": 2, "local-steps": 3, "batch-size": 4,
          "eval-samples": 4, "min-sites": 2, "seed": 0},
    # another seed and another model (chunk size): the worker must rebuild, not carry over
    "b": {"policy": "smolvla-tiny", "num-server-rounds": 2, "local-steps": 3, "batch-size": 4,
          "eval-samples": 4, "min-sites": 2, "seed": 1, "proximal-mu": 0.01,
          "policy-options": '{"chunk_size": 5, "n_action_steps": 5}'},
}


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> Iterator[dict[str, Path]]:
    from deploy.flower.env import child_env
    from deploy.lab.worker_supervisor import WorkerSupervisor, socket_path, stop_all

    root = tmp_path_factory.mktemp("workers")
    supervisors = {
        site: WorkerSupervisor(f"worker-{site}", socket_path(root / site),
                               root / f"{site}.log", env=child_env(root / "home"),
                               parent_pid=os.getpid()).start()
        for site in SITES
    }
    try:
        for supervisor in supervisors.values():
            supervisor.wait_ready(300)
        yield {site: s.socket for site, s in supervisors.items()}
    finally:
        stop_all(list(supervisors.values()))
        assert all(s.alive_pids() == [] for s in supervisors.values())


def _history(demo_root: Path, work: Path, name: str, run_id: int,
             sockets: dict[str, Path] | None) -> dict:
    from harness.inprocess_grid import run_inprocess

    config = RunConfig.with_overrides({**RUNS[name], "output-dir": str(work / "runs")}).to_flwr()
    nodes = [{"site-name": s, "dataset-root": str(demo_root / s), "torch-threads": 1,
              **({"worker-socket": str(sockets[s])} if sockets else {})} for s in SITES]
    run_dir = run_inprocess(config, nodes, run_id)
    return json.loads((Path(run_dir) / "eval_history.json").read_text())


def test_runs_through_the_worker_give_the_per_message_numbers(
    workers: dict[str, Path], demo_root: Path, tmp_path: Path
) -> None:
    """Same seed, same data: the worker path's held-out MSE per round equals the per-message
    path's, also for a second run on the same (warm) workers with another seed and model."""
    import torch

    threads = torch.get_num_threads()
    try:
        per_message = {n: _history(demo_root, tmp_path / f"pm-{n}", n, 60 + i, None)
                       for i, n in enumerate(RUNS)}
        through = {}
        for i, name in enumerate(RUNS):
            through[name] = _history(demo_root, tmp_path / f"w-{name}", name, 70 + i, workers)
            described = {s: ping(workers[s]) for s in SITES}
            assert all(d["policy_builds"] == i + 1 for d in described.values()), described
    finally:
        torch.set_num_threads(threads)
    for name in RUNS:
        ours, theirs = through[name], per_message[name]
        assert ours["rounds"] == theirs["rounds"] == [0, 1, 2]
        for site in SITES:
            np.testing.assert_allclose(ours["per_site"][site], theirs["per_site"][site],
                                       rtol=1e-6, err_msg=f"run {name}, {site}")
    # the two runs differ (else the comparison above could not tell them apart)
    assert per_message["a"]["per_site"] != per_message["b"]["per_site"]


def test_bf16_precision_trains_and_evaluates_with_float32_weights(demo_root: Path) -> None:
    """Node option ``precision = "bf16"``: autocast around training and evaluation (measured
    for speed and MSE only on a GPU; here: it runs on CPU and keeps float32 master weights)."""
    import math

    import torch

    from common.norm_stats import global_stats
    from supernode.evaluation import evaluate_action_mse
    from supernode.local_site import Site
    from supernode.tasks import precision
    from supernode.training import train_round

    run = RunConfig.with_overrides({"policy": "smolvla-tiny", "local-steps": 2, "batch-size": 4})
    threads = torch.get_num_threads()
    try:
        site = Site.open({"site-name": "site-0", "dataset-root": str(demo_root / "site-0"),
                          "precision": "bf16", "torch-threads": 1}, run.to_flwr())
        stats = global_stats(site.moments(), ["observation.images.top",
                                              "observation.images.wrist"])
        bundle = site.policy(site.spec, stats, None)
        with precision(site):
            assert torch.is_autocast_enabled("cpu")
            result = train_round(bundle, site.train_loader(1), site.run, 1, 0.0)
            mse = evaluate_action_mse(bundle, site.eval_dataset(), 4, 4, 0).action_mse
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(result.loss_mean) and math.isfinite(mse) and mse > 0
    assert {p.dtype for p in bundle.policy.parameters()} == {torch.float32}
