"""End to end: a site revoked mid-upload and a site whose SuperNode dies mid-upload do not hold
the round; the other sites' replies are aggregated on time and the run completes.

A real TLS cluster (SuperLink behind the labs' entry, node authentication, process isolation,
site workers) with four sites. site-2 and site-3 reach the entry through a relay
(tests/net_valve.py) that stops their upstream bytes midway through their round-1 reply: the
SuperLink then holds each reply message but not all its objects, which is exactly where Flower's
own ``HttpGrid.pull_messages`` would wait for two hours. Then ``zk0 site revoke site-2`` runs and
site-2's relay lets its remaining uploads through (the SuperLink refuses them: revoked), and
site-3's SuperNode is killed with SIGKILL. Nothing here sleeps and hopes: the relay freezes each
upload at a byte count inside the reply (the tiny preset's reply is ~520 kB in ~25 kB parts,
after ~180 kB of stage-0 reply, object-pull requests and heartbeats), and the test acts only once
both relays report the freeze.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from net_valve import Valve

from common.settings import NodeConfig
from deploy.cluster.local_cluster import LocalCluster
from deploy.coordinator.site_registry import revoke_site

REPO = Path(__file__).resolve().parent.parent
SITES = 4
REVOKED, KILLED = "site-2", "site-3"
#: Upstream bytes a cut site may send after the cluster is up: past its stage-0 reply and the
#: round-1 model's pull requests (~180 kB), short of the end of its round-1 reply (~700 kB).
CUT_AFTER = 320_000
STALL = 10.0
ROUND_TIMEOUT = 300.0

pytestmark = pytest.mark.e2e


def _act(cluster: LocalCluster, valves: dict[str, Valve], done: dict[str, float]) -> None:
    """Once both uploads are frozen: revoke site-2 (then let its uploads through, to be
    refused) and SIGKILL site-3's SuperNode."""
    for valve in valves.values():
        if not valve.held.wait(600):
            return
    done["frozen"] = time.time()
    revoke_site(cluster.flwr_home, REVOKED, connection=cluster.connection)
    valves[REVOKED].release()
    done["revoked"] = time.time()
    supernode = next(p for p in cluster.processes if p.name == f"supernode-{KILLED}")
    os.kill(supernode.pid, signal.SIGKILL)
    done["killed"] = time.time()


def test_sites_lost_mid_upload_fail_alone_and_the_round_ends_on_time(demo_root, tmp_path):
    work = tmp_path / "cluster"
    nodes = [NodeConfig(site_name=f"site-{i}", dataset_root=str(demo_root / f"site-{i}"),
                        torch_threads=1) for i in range(SITES)]
    cluster: LocalCluster | None = None
    valves = {name: Valve(lambda: cluster.site_address) for name in (REVOKED, KILLED)}
    cluster = LocalCluster(REPO, nodes, work, echo_run=False, metrics=False,
                           dial={name: v.address for name, v in valves.items()})
    done: dict[str, float] = {}
    try:
        cluster.start()
        for valve in valves.values():
            valve.cut_after(CUT_AFTER)
        actor = threading.Thread(target=_act, args=(cluster, valves, done), daemon=True)
        actor.start()
        result = cluster.run({
            "policy": "smolvla-tiny", "num-server-rounds": 1, "local-steps": 2,
            "batch-size": 4, "eval-samples": 4, "min-sites": 2, "trajectory-every": 0,
            "round-timeout": ROUND_TIMEOUT, "upload-stall-timeout": STALL,
            "output-dir": str(work / "runs"),
        }, timeout=900)
        actor.join(5)
    finally:
        cluster.stop()
        for valve in valves.values():
            valve.close()
    assert result.ok, f"status {result.status}\n{result.output[-3000:]}"
    assert list(done) == ["frozen", "revoked", "killed"], "the uploads were never frozen"
    run_dir = work / "runs" / f"run-{result.run_id}"
    entry = json.loads((run_dir / "rounds" / "round_001.json").read_text())
    assert entry["status"] == "ok" and set(entry["sites"]) == {"site-0", "site-1"}
    failures = {f["site"]: f for f in entry["failures"]}
    assert set(failures) == {REVOKED, KILLED}, failures
    for failure in failures.values():
        # the ServerApp held the reply message and part of its objects: cut mid-upload
        assert failure["kind"] == "upload", failure
        assert "reply upload incomplete" in failure["reason"], failure
        got, total = failure["reason"].split(" parts")[0].rsplit(" ", 1)[1].split("/")
        assert 0 < int(got) < int(total), failure["reason"]
    # on time: the round closed about upload-stall-timeout after the uploads froze, where
    # Flower's own pull would have waited 2 h (and round-timeout is 300 s)
    events = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]
    [finished] = [e for e in events if e["event"] == "round_finished" and e["round"] == 1]
    closed = datetime.fromisoformat(finished["timestamp"]).timestamp() - done["frozen"]
    assert 0 < closed < STALL + 30, closed
    # the final evaluation has the two remaining sites (site-3's SuperNode is found dead by
    # Flower's heartbeat check, site-2 is no longer listed)
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert all(history["per_site"][s][-1] is not None for s in ("site-0", "site-1"))
