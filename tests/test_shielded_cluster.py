"""The shielded layout with real processes, real TLS and a real nginx: nobody gets in.

One cluster for the module: a SuperLink on 127.0.0.1 (the operator's side), nginx as the labs'
only entry in front of it, and three sites whose SuperNodes join *through the entry* and run
zk0's own ServerApp/ClientApp (tiny SmolVLA, real demo datasets) with every message signed.
Through the entry, anonymous Control and Runtime calls are refused; plain HTTP, another CA, an
unregistered key and a revoked key are refused; a site revoked in the middle of a run cannot
deliver its update while the others finish the run; no key or secret shows up in any log or
process argument. The protocol-level attacks by authenticated sites (another site's name, a
replay, another key's signature, an inflated weight) are in tests/test_authenticity.py.

CI runs as root and installs nginx first (scripts/system-deps.sh), so there these tests never
skip; elsewhere they skip only when nginx is missing and the user is not root.
"""

from __future__ import annotations

import json
import re
import ssl
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from certs import ensure_federation_certs, make_site_key
from common import signing
from common.settings import NodeConfig
from deploy.cli import main as zk0
from deploy.cluster.local_cluster import LocalCluster, RunResult
from deploy.coordinator import site_registry
from deploy.flower.logs import EXIT_SUPERNODE_CONNECTION_ERROR, flower_exit_code
from deploy.flower.processes import ManagedProcess

REPO = Path(__file__).resolve().parent.parent
SITES = ["site-0", "site-1", "site-2"]
REVOKED = "site-2"
ROUNDS = 2
RUN = {
    "policy": "smolvla-tiny", "num-server-rounds": ROUNDS, "local-steps": 3, "batch-size": 4,
    "eval-samples": 8, "min-sites": 2, "round-timeout": 600.0,
}

pytestmark = pytest.mark.e2e


class Watcher:
    """Follows the run's log: revokes a site when round 2 starts, samples process arguments."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.cmdlines: list[str] = []
        self.revoked: list[site_registry.RegisteredNode] = []
        self.revoke_error: BaseException | None = None
        self.threads: list[threading.Thread] = []

    def _revoke(self) -> None:
        try:
            self.revoked = site_registry.revoke_site(
                self.cluster.flwr_home, REVOKED, connection=self.cluster.connection)
        except BaseException as err:  # reported by the test, not lost in a thread
            self.revoke_error = err

    def sample_processes(self) -> None:
        for pid in self.cluster.alive_pids():
            try:
                self.cmdlines.append(" ".join(psutil.Process(pid).cmdline()))
            except psutil.Error:
                continue

    def __call__(self, line: str) -> None:
        if "round_started" not in line:
            return
        self.sample_processes()
        if re.search(r"\bround=2\b", line):
            thread = threading.Thread(target=self._revoke, name="revoke")
            thread.start()
            self.threads.append(thread)


@pytest.fixture(scope="module")
def shielded(demo_root: Path, tmp_path_factory: pytest.TempPathFactory, nginx: str):
    work = tmp_path_factory.mktemp("shielded")
    nodes = [NodeConfig(site_name=s, dataset_root=str(demo_root / f"site-{i}"), torch_threads=1)
             for i, s in enumerate(SITES)]
    cluster = LocalCluster(REPO, nodes, work, proxy=True, echo_run=False, startup_timeout=120)
    t0 = time.monotonic()
    try:
        cluster.start()
        print(f"shielded cluster up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield cluster
    finally:
        cluster.stop()
        assert cluster.alive_pids() == [], "processes left running after stop()"


def _ctx(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _post(address: str, path: str, ca: Path, body: bytes = b"") -> httpx.Response:
    return httpx.post(f"https://{address}{path}", verify=_ctx(ca), content=body, timeout=10,
                      headers={"content-type": "application/protobuf"})


def _refused(proc: ManagedProcess, within: float = 30.0) -> str:
    code = proc.wait(within)
    log = proc.log_text()
    assert code is not None, f"{proc.name} still running after {within} s:\n{proc.log_tail()}"
    assert flower_exit_code(proc) == EXIT_SUPERNODE_CONNECTION_ERROR, log
    return log


def test_the_entry_refuses_anonymous_control_and_runtime_calls(shielded: LocalCluster) -> None:
    from flwr.proto.control_pb2 import (
        ListRunsRequest,
        RegisterNodeRequest,
        StartRunRequest,
        StopRunRequest,
    )

    ca = shielded.certs.ca_cert
    entry = shielded.site_address
    assert shielded.shielded and entry != shielded.address
    outsider = signing.load_public_key(make_site_key(shielded.work_dir / "outsider", "x")[1])
    calls = {
        "/v1/control/list-runs": ListRunsRequest(),
        "/v1/control/start-run": StartRunRequest(),
        "/v1/control/stop-run": StopRunRequest(run_id=1),
        "/v1/control/register-node": RegisterNodeRequest(
            public_key=signing.public_pem(outsider), name="outsider"),
        "/v1/control/list-nodes": None,
        "/v1/runtime/acquire-task": None,
        "/v1/runtime/get-nodes": None,
        "/v1/fleet/register-node": None,  # sites never register themselves
    }
    shown = {}
    for path, request in calls.items():
        body = request.SerializeToString() if request is not None else b""
        shown[path] = _post(entry, path, ca, body).status_code
    for path in ("/docs", "/openapi.json", "/", "/v1/fleet", "/anything"):
        shown[f"GET {path}"] = httpx.get(f"https://{entry}{path}", verify=_ctx(ca)).status_code
    print(f"through the labs' entry {entry}: {shown}", file=sys.stderr)
    assert set(shown.values()) == {403}, shown
    # what the entry protects: the same call on the SuperLink's own (loopback) port answers
    direct = _post(shielded.address, "/v1/control/list-runs", ca,
                   ListRunsRequest().SerializeToString()).status_code
    print(f"on the SuperLink's loopback port: list-runs {direct}", file=sys.stderr)
    assert direct == 200
    assert httpx.get(f"https://{entry}/health", verify=_ctx(ca)).status_code == 200
    # the outsider's key was never registered
    fp = signing.fingerprint(outsider)
    nodes = site_registry.list_nodes(shielded.flwr_home, shielded.connection)
    assert all(n.fingerprint != fp for n in nodes)
    log = shielded.entry.settings.access_log.read_text()  # type: ignore[union-attr]
    assert '"POST /v1/control/register-node" 403' in log


def test_plain_http_and_another_ca_are_refused(
    shielded: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    entry = shielded.site_address
    plain = httpx.post(f"http://{entry}/v1/fleet/pull-messages", content=b"", timeout=10)
    print(f"plain HTTP to the entry: {plain.status_code}", file=sys.stderr)
    assert plain.status_code == 400 and "plain HTTP" in plain.text
    other = ensure_federation_certs(tmp_path_factory.mktemp("other-ca"), ["127.0.0.1"], [])
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{entry}/health", verify=_ctx(other.ca_cert))
    node = NodeConfig(site_name="site-0", dataset_root="/nonexistent")
    site = shielded.start_supernode(node, shielded.certs.site_keys["site-0"][0],
                                    root_certificates=other.ca_cert, name="site-0-other-ca")
    assert "CERTIFICATE_VERIFY_FAILED" in _refused(site.supernode)


def test_an_unregistered_key_is_refused_at_the_entry(shielded: LocalCluster) -> None:
    key, _ = make_site_key(shielded.work_dir / "intruder", "intruder")
    node = NodeConfig(site_name="intruder", dataset_root="/nonexistent")
    site = shielded.start_supernode(node, key, name="intruder")
    assert "Failed to activate SuperNode" in _refused(site.supernode)


def test_zk0_site_binds_one_name_to_one_key_and_revokes(shielded: LocalCluster,
                                                         capsys) -> None:
    home = ["site", "--flwr-home", str(shielded.flwr_home)]
    keys = shielded.work_dir / "lab-x"
    priv, pub = make_site_key(keys, "lab-x")
    _, other_pub = make_site_key(keys, "lab-y")
    assert zk0([*home, "register", str(pub), "--name", "lab-x"]) == 0
    assert "registered as node" in capsys.readouterr().out
    assert zk0([*home, "register", str(other_pub), "--name", "lab-x"]) == 1  # name taken
    assert "already bound to node" in capsys.readouterr().err
    assert zk0([*home, "register", str(pub), "--name", "lab-z"]) == 1  # key taken
    assert "already registered as node" in capsys.readouterr().err
    assert zk0([*home, "list"]) == 0
    listed = capsys.readouterr().out
    fp = signing.fingerprint(signing.load_public_key(pub))
    assert re.search(rf"lab-x\s+registered\s+{fp}", listed), listed
    assert zk0([*home, "revoke", "lab-x"]) == 0
    assert "revoked node" in capsys.readouterr().out
    [row] = [n for n in site_registry.list_nodes(shielded.flwr_home) if n.name == "lab-x"]
    assert row.status == "unregistered"
    # the revoked key is refused from then on
    node = NodeConfig(site_name="lab-x", dataset_root="/nonexistent")
    site = shielded.start_supernode(node, priv, name="lab-x")
    assert "Failed to activate SuperNode" in _refused(site.supernode)


@pytest.fixture(scope="module")
def signed_run(shielded: LocalCluster) -> Iterator[tuple[RunResult, Path, Watcher]]:
    watcher = Watcher(shielded)
    out = shielded.work_dir / "runs"
    result = shielded.run({**RUN, "output-dir": str(out)}, timeout=1500, on_line=watcher)
    for thread in watcher.threads:
        thread.join(60)
    print(f"signed run through the entry: {result.status} in {result.duration_s:.0f} s",
          file=sys.stderr)
    yield result, out / f"run-{result.run_id}", watcher


def test_sites_train_through_the_entry_with_signed_messages(shielded, signed_run) -> None:
    result, run_dir, _ = signed_run
    assert result.ok, f"{result.status}\n{result.output[-4000:]}"
    meta = json.loads((run_dir / "run.json").read_text())
    registered = {n.name: n for n in site_registry.list_nodes(shielded.flwr_home)}
    assert set(meta["sites"]) == set(SITES)
    for name, site in meta["sites"].items():  # named and keyed by their registration
        assert site["node_id"] == registered[name].node_id
        assert site["key"] == registered[name].fingerprint
    first = json.loads((run_dir / "rounds" / "round_001.json").read_text())
    assert set(first["sites"]) == set(SITES) and first["failures"] == []
    access = shielded.entry.settings.access_log.read_text()  # type: ignore[union-attr]
    assert len(re.findall(r'"POST /v1/fleet/push-object" 200', access)) > 10


def test_a_site_revoked_mid_run_cannot_deliver_its_update(shielded, signed_run) -> None:
    result, run_dir, watcher = signed_run
    assert watcher.revoke_error is None, watcher.revoke_error
    assert [n.name for n in watcher.revoked] == [REVOKED]
    second = json.loads((run_dir / "rounds" / "round_002.json").read_text())
    assert set(second["sites"]) == set(SITES) - {REVOKED}, second
    assert second["aggregated"] is True
    [failure] = second["failures"]
    print(f"round 2, revoked site: {failure}", file=sys.stderr)
    # refused before its reply was in ("error"/"timeout") or in the middle of its upload
    assert failure["site"] == REVOKED and failure["kind"] in ("error", "timeout", "upload")
    assert result.ok  # the run went on with the others and finished
    # the entry saw the revoked key refused (401), and that SuperNode shut itself down
    access = shielded.entry.settings.access_log.read_text()  # type: ignore[union-attr]
    assert re.search(r'"POST /v1/fleet/[a-z-]+" 401', access), access[-2000:]
    revoked = shielded._site_procs[REVOKED].supernode
    assert revoked.wait(60) is not None, revoked.log_tail()


def _secret_texts(work: Path) -> dict[str, str]:
    """Recognisable pieces of every private key and secret the cluster wrote."""
    found: dict[str, str] = {}
    for path in work.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".secret":
            found[str(path)] = path.read_text().strip()
        elif path.suffix == ".key":
            body = [line for line in path.read_text().splitlines()
                    if line and not line.startswith("-----")]
            found[str(path)] = "".join(body)[20:80]  # a slice of the key body
    return found


def test_no_key_or_secret_in_logs_or_process_arguments(shielded, signed_run) -> None:
    _, _, watcher = signed_run
    work = shielded.work_dir
    secrets = _secret_texts(work)
    kinds = {Path(p).name for p in secrets}
    assert {"ca.key", "superlink.key", "coordinator.key", "superexec.secret",
            "runtime.key", "site-0.key"} <= kinds, kinds
    # every key and secret 0600, in a 0700 folder
    for path in map(Path, secrets):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    logs = {p: p.read_text(errors="replace") for p in
            [*work.rglob("*.log"), *work.rglob("*.jsonl")] if p.is_file()}
    assert any(p.name == "access.log" for p in logs) and any(
        p.name == "logs.jsonl" for p in logs)
    watcher.sample_processes()
    assert len(watcher.cmdlines) > 10
    args = "\n".join(watcher.cmdlines)
    for path, text in secrets.items():
        assert len(text) >= 32, path
        assert text not in args, f"{path} in a process argument"
        for log, content in logs.items():
            assert text not in content, f"{path} in {log}"
    # the key material is referred to by path only
    assert str(shielded.certs.site_keys["site-0"][0]) in args
