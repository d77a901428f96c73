"""Prometheus metrics, without Prometheus: what the ServerApp and the ClientApp record, and what
the exporters serve.

The federation runs in one process (``harness.inprocess_grid``): the unchanged ServerApp and
ClientApp record into this process's default registry, and the values are compared with the run
folder's report. The exporters are checked on a real multiprocess folder written by real
subprocesses. The same metrics through real Flower processes and a real Prometheus:
tests/test_e2e_monitoring.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from common.settings import RunConfig
from harness.inprocess_grid import run_inprocess

REPO = Path(__file__).resolve().parent.parent
BROKEN = "lab-gpu"  # configured for a GPU it does not have: joins, then fails every message


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def faulty_run(demo_root, tmp_path_factory):
    """Two rounds with a healthy site and one that fails in training; metric deltas."""
    out = tmp_path_factory.mktemp("runs")
    config = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 2, "local-steps": 2, "batch-size": 4,
        "eval-samples": 4, "min-sites": 2, "output-dir": str(out),
    }).to_flwr()
    nodes = [
        {"site-name": "site-0", "dataset-root": str(demo_root / "site-0"), "torch-threads": 1},
        {"site-name": BROKEN, "dataset-root": str(demo_root / "site-1"), "torch-threads": 1,
         "device": "cuda:99"},
    ]
    watched = {
        "failures": lambda s: value("zk0_site_failures_total", site=s, kind="error"),
        "steps": lambda s: value("zk0_site_train_steps_total", site=s),
        "samples": lambda s: value("zk0_site_train_samples_total", site=s),
        "uplink": lambda s: value("zk0_site_uplink_bytes_total", site=s),
        "downlink": lambda s: value("zk0_site_downlink_bytes_total", site=s),
        "local_failures": lambda s: value("zk0_local_task_failures_total", site=s, task="train"),
        "local_tasks": lambda s: value("zk0_local_tasks_total", site=s, task="train"),
        "local_steps": lambda s: value("zk0_local_train_steps_total", site=s),
    }
    before = {k: {s["site-name"]: f(s["site-name"]) for s in nodes} for k, f in watched.items()}
    rounds_before = value("zk0_rounds_completed_total")
    run_dir = run_inprocess(config, nodes, run_id=4242)
    after = {k: {s["site-name"]: f(s["site-name"]) for s in nodes} for k, f in watched.items()}
    delta = {k: {s: after[k][s] - before[k][s] for s in after[k]} for k in after}
    delta["rounds"] = value("zk0_rounds_completed_total") - rounds_before
    return run_dir, delta


def test_a_failing_site_shows_in_its_own_failure_counter_only(faulty_run):
    run_dir, delta = faulty_run
    # two training rounds and the final evaluation failed at the broken site, none elsewhere
    assert delta["failures"] == {"site-0": 0, BROKEN: 3}
    assert value("zk0_site_consecutive_failures", site=BROKEN) == 3
    assert value("zk0_site_consecutive_failures", site="site-0") == 0
    # the site's own view agrees: its ClientApp failed both training messages
    assert delta["local_failures"] == {"site-0": 0, BROKEN: 2}
    assert delta["local_tasks"] == {"site-0": 2, BROKEN: 2}
    rounds = [json.loads((run_dir / "rounds" / f"round_{r:03d}.json").read_text()) for r in (1, 2)]
    assert all([f["site"] for f in e["failures"]] == [BROKEN] for e in rounds)


def test_counters_and_gauges_equal_the_run_report(faulty_run):
    run_dir, delta = faulty_run
    rounds = [json.loads((run_dir / "rounds" / f"round_{r:03d}.json").read_text()) for r in (1, 2)]
    healthy = [e["sites"]["site-0"] for e in rounds]
    assert delta["steps"]["site-0"] == sum(s["steps"] for s in healthy) == 4
    assert delta["local_steps"]["site-0"] == 4
    assert delta["samples"]["site-0"] == sum(s["samples"] for s in healthy)
    assert delta["uplink"]["site-0"] == sum(s["payload_bytes"] for s in healthy)
    # every message sent carries the model: 2 rounds + the final evaluation, to both sites
    per_site = rounds[0]["downlink_bytes_per_site"]
    assert delta["downlink"] == {"site-0": 3 * per_site, BROKEN: 3 * per_site}
    assert delta["rounds"] == 2
    assert value("zk0_site_train_loss", site="site-0") == healthy[-1]["train_loss"]
    assert value("zk0_local_train_loss", site="site-0") == healthy[-1]["train_loss"]

    history = json.loads((run_dir / "eval_history.json").read_text())
    assert value("zk0_run_eval_action_mse", run="4242") == history["weighted"][-1]
    assert value("zk0_site_eval_action_mse", site="site-0") == history["per_site"]["site-0"][-1]
    assert value("zk0_local_eval_action_mse", site="site-0") == history["per_site"]["site-0"][-1]
    assert value("zk0_run_state", run="4242", state="completed") == 1
    assert value("zk0_run_state", run="4242", state="running") == 0
    assert value("zk0_run_active", run="4242") == 0
    assert value("zk0_run_current_round", run="4242") == 2
    assert value("zk0_run_sites_sampled", run="4242") == 2
    assert value("zk0_run_sites_replied", run="4242") == 1
    meta = json.loads((run_dir / "run.json").read_text())
    assert value("zk0_run_start_timestamp_seconds", run="4242") == meta["started"]


def test_a_run_that_cannot_start_is_marked_failed(demo_root, tmp_path):
    config = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 1, "min-sites": 2,
        "output-dir": str(tmp_path / "runs"),
    }).to_flwr()
    nodes = [{"site-name": "site-0", "dataset-root": str(demo_root / "site-0")},
             {"site-name": "gone", "dataset-root": str(tmp_path / "nothing-here")}]
    with pytest.raises(Exception, match="min-sites"):
        run_inprocess(config, nodes, run_id=4343)
    assert value("zk0_run_state", run="4343", state="failed") == 1


# -- exporters over a real multiprocess folder --------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from superlink.metrics import RunMetrics, SITE_FAILURES
    from supernode.metrics import observe_task
    metrics = RunMetrics(sys.argv[1], rounds=3)
    metrics.started(["site-a"], {})
    SITE_FAILURES.labels("site-a", "timeout").inc()
    with observe_task("train", {"site-name": "site-a"}):
        pass
    if sys.argv[2] == "finish":
        metrics.completed()
""")


def _write(folder, run: str, finish: bool) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", WRITER, run, "finish" if finish else "no"],
                   env=env, check=True, timeout=120)


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_coordinator_exporter_sums_counters_over_processes_and_drops_dead_live_gauges(tmp_path):
    from deploy.monitoring.metrics_export import prepare_multiproc_dir, serve_coordinator

    folder = prepare_multiproc_dir(tmp_path / "mp", wipe=True)
    _write(folder, "1", finish=True)
    _write(folder, "2", finish=False)  # exits without finishing: a crashed ServerApp
    server = serve_coordinator(folder, "127.0.0.1:0")
    try:
        samples = _scrape(server.url)
    finally:
        server.close()
    key = ("zk0_site_failures_total", frozenset({("site", "site-a"), ("kind", "timeout")}))
    assert samples[key] == 2  # one per process, summed: no reset when a ServerApp exits
    assert samples[("zk0_run_state", frozenset({("run", "1"), ("state", "completed")}))] == 1
    assert samples[("zk0_run_state", frozenset({("run", "2"), ("state", "running")}))] == 1
    # the live gauge of both (dead) writers is gone; their files were reaped
    assert not [k for k in samples if k[0] == "zk0_run_active"]
    assert not list(folder.glob("gauge_live*"))
    assert samples[("zk0_rounds_completed_total", frozenset())] == 0
    assert ("zk0_superlink_up", frozenset()) not in samples  # no SuperLink given: no probe


def test_site_exporter_reports_its_processes_by_role_and_no_gpu_series_without_one(tmp_path):
    from deploy.flower.processes import ManagedProcess
    from deploy.monitoring.metrics_export import GpuCollector, prepare_multiproc_dir, serve_site

    folder = prepare_multiproc_dir(tmp_path / "mp", wipe=True)
    _write(folder, "1", finish=True)
    busy = ManagedProcess("busy", [sys.executable, "-c", "while True: pass"],
                          tmp_path / "busy.log").start()
    cpu = ("zk0_local_process_cpu_seconds_total",
           frozenset({("site", "site-a"), ("role", "supernode")}))
    try:
        server = serve_site("site-a", folder, lambda: {"supernode": busy.pid},
                            "127.0.0.1:0", include_self=True)
        try:
            first = _scrape(server.url)
            deadline = time.monotonic() + 20  # a busy machine may give it little CPU
            while (second := _scrape(server.url))[cpu] <= first[cpu]:
                assert time.monotonic() < deadline, "CPU seconds of a busy process never rose"
                time.sleep(0.5)
        finally:
            server.close()
    finally:
        busy.stop()
    assert second[cpu] > 0  # (the first scrape may come before the process ran at all)
    rss = ("zk0_local_process_resident_memory_bytes",
           frozenset({("site", "site-a"), ("role", "launcher")}))
    assert second[rss] > 10e6
    tasks = ("zk0_local_tasks_total", frozenset({("site", "site-a"), ("task", "train")}))
    assert second[tasks] == 1
    if GpuCollector("site-a").gpus == 0:
        assert not [k for k in second if k[0].startswith("zk0_local_gpu_")]
