"""Process orchestration: command builders, launcher refusals, and a real TLS federation.

The e2e tests start a real SuperLink, SuperExecs and two SuperNodes on 127.0.0.1 with TLS,
node authentication, process isolation and SuperExec secrets, and run a tiny throwaway Flower
app (written into tmp_path, independent of the real ML app) whose ServerApp asks every node for
its ``site-name`` and writes the answers to a file.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_checks import descendants, procs_mentioning

from certs import FederationCerts, ensure_federation_certs
from common.settings import NodeConfig
from deploy.cli import build_parser
from deploy.cluster.local_cluster import LocalCluster, free_port
from deploy.flower import flwr_cli
from deploy.flower.commands import superexec_cmd, superlink_cmd, supernode_cmd, worker_cmd
from deploy.flower.env import bin_dir, child_env
from deploy.flower.health import https_ok
from deploy.flower.logs import EXIT_SUPERNODE_CONNECTION_ERROR, flower_exit_code
from deploy.flower.processes import ManagedProcess, ProcessFailed, group_members, pid_alive
from deploy.flower.runtime_tls import RuntimeTls, ensure_runtime_tls
from deploy.lab import launcher

# -- the throwaway app --------------------------------------------------------------------------

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "echoapp"
version = "1.0.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "zk0test"

[tool.flwr.app.components]
serverapp = "echoapp.server:app"
clientapp = "echoapp.client:app"

[tool.flwr.app.config]
out-file = ""
expected-nodes = 2
"""

APP_SERVER = '''\
"""Ask every node for its site-name; write {node_id: site-name} to out-file."""
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    expected = int(context.run_config["expected-nodes"])
    deadline = time.monotonic() + 60
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        node_ids = list(grid.get_node_ids())
    query = [
        Message(RecordDict({"q": ConfigRecord({"want": "site-name"})}), n, MessageType.QUERY)
        for n in node_ids
    ]
    replies = {}
    for reply in grid.send_and_receive(query, timeout=120):
        key = str(reply.metadata.src_node_id)
        if reply.has_error():
            replies[key] = {"error": reply.error.reason}
        else:
            replies[key] = reply.content["a"]["site-name"]
    Path(str(context.run_config["out-file"])).write_text(json.dumps(replies))
'''

APP_CLIENT = '''\
"""Reply with this node's site-name."""
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    name = str(context.node_config["site-name"])
    return Message(RecordDict({"a": ConfigRecord({"site-name": name})}), reply_to=msg)
'''


def write_echo_app(root: Path) -> Path:
    app = root / "echoapp"
    (app / "echoapp").mkdir(parents=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    (app / "echoapp" / "__init__.py").write_text("")
    (app / "echoapp" / "server.py").write_text(APP_SERVER)
    (app / "echoapp" / "client.py").write_text(APP_CLIENT)
    return app


SITES = ["lab-a", "lab-b"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _node(site: str, root: Path) -> NodeConfig:
    return NodeConfig.parse({"site-name": site, "dataset-root": str(root / site)}, "test")


# -- unit: command builders ----------------------------------------------------------------------


def _flag(cmd: list[str], name: str) -> str:
    assert name in cmd, f"{name} missing from {cmd}"
    return cmd[cmd.index(name) + 1]


def test_superlink_cmd_is_secure(tmp_path: Path) -> None:
    cmd = superlink_cmd(
        certfile=tmp_path / "s.crt",
        keyfile=tmp_path / "s.key",
        ca_certfile=tmp_path / "ca.crt",
        secret_file=tmp_path / "secret",
        database=tmp_path / "state.db",
        port=9443,
    )
    assert Path(cmd[0]).name == "flower-superlink"
    assert _flag(cmd, "--ssl-certfile").endswith("s.crt")
    assert _flag(cmd, "--ssl-keyfile").endswith("s.key")
    assert _flag(cmd, "--ssl-ca-certfile").endswith("ca.crt")
    assert _flag(cmd, "--isolation") == "process"
    assert _flag(cmd, "--superexec-auth-secret-file").endswith("secret")
    assert _flag(cmd, "--database").endswith("state.db")
    assert _flag(cmd, "--host") == "127.0.0.1"
    assert _flag(cmd, "--port") == "9443"
    assert "--enable-supernode-auth" in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd


def test_supernode_and_superexec_cmds_are_secure(tmp_path: Path) -> None:
    tls = RuntimeTls(tmp_path / "r.crt", tmp_path / "r.key", tmp_path / "rca.crt")
    node = _node("lab-a", tmp_path)
    cmd = supernode_cmd(
        superlink="link.example.org:8000",
        root_certificates=tmp_path / "ca.crt",
        private_key=tmp_path / "lab-a.key",
        node_config=node,
        runtime_port=9101,
        runtime_tls=tls,
        secret_file=tmp_path / "site.secret",
    )
    assert cmd[:3] == [sys.executable, "-m", "deploy.flower.supernode_waits"]
    stock = supernode_cmd(superlink="link.example.org:8000", root_certificates=tmp_path / "ca",
                          private_key=tmp_path / "k", node_config=node, runtime_port=9101,
                          runtime_tls=tls, secret_file=tmp_path / "s", waits=None)
    assert Path(stock[0]).name == "flower-supernode" and "--pull-min-seconds" not in stock
    assert _flag(cmd, "--superlink") == "link.example.org:8000"
    assert _flag(cmd, "--root-certificates").endswith("ca.crt")
    assert _flag(cmd, "--auth-supernode-private-key").endswith("lab-a.key")
    assert _flag(cmd, "--node-config") == node.to_flwr_arg()
    assert _flag(cmd, "--isolation") == "process"
    assert _flag(cmd, "--host") == "127.0.0.1"
    assert _flag(cmd, "--port") == "9101"
    assert _flag(cmd, "--ssl-certfile").endswith("r.crt")
    assert _flag(cmd, "--ssl-keyfile").endswith("r.key")
    assert _flag(cmd, "--ssl-ca-certfile").endswith("rca.crt")
    assert _flag(cmd, "--superexec-auth-secret-file").endswith("site.secret")
    exe = superexec_cmd("127.0.0.1:9101", tls.ca, tmp_path / "site.secret")
    assert Path(exe[0]).name == "flower-superexec"
    assert _flag(exe, "--runtime-api-address") == "127.0.0.1:9101"
    assert _flag(exe, "--root-certificates").endswith("rca.crt")
    assert _flag(exe, "--superexec-auth-secret-file").endswith("site.secret")
    worker = worker_cmd("127.0.0.1:9101", tls.ca, tmp_path / "site.secret", parent_pid=5)
    assert worker[:3] == [sys.executable, "-m", "supernode.worker"]
    assert _flag(worker, "--runtime-api-address") == "127.0.0.1:9101"
    assert _flag(worker, "--root-certificates").endswith("rca.crt")
    assert _flag(worker, "--superexec-auth-secret-file").endswith("site.secret")
    assert _flag(worker, "--parent-pid") == "5"
    for c in (cmd, exe, worker):
        assert "--insecure" not in c


def test_overrides_round_trip_through_flwr_parser(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    overrides = {
        "num-server-rounds": 3,
        "proximal-mu": 0.001,
        "tiny": 1e-05,
        "flag": True,
        "output-dir": str(tmp_path / "with space" / "runs"),
        "quoted": "it's",
        "policy": "smolvla-tiny",
    }
    args = flwr_cli.format_overrides(overrides)
    assert args[::2] == ["-c"] * len(overrides)
    assert parse_config_args(args[1::2]) == overrides
    cmd = flwr_cli.flwr_run_args(tmp_path, "lab", overrides)
    assert cmd[:3] == ["run", str(tmp_path.resolve()), "lab"]
    assert cmd[3:] == args
    with pytest.raises(ValueError, match=r"run config: key 'bad'.*both quote kinds"):
        flwr_cli.format_overrides({"bad": "both ' and \""})
    with pytest.raises(ValueError, match=r"run config: key 'bad key'"):
        flwr_cli.format_overrides({"bad key": 1})


def test_connection_config_is_read_by_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    (tmp_path / "ca.crt").write_text("x")
    monkeypatch.chdir(tmp_path)
    path = flwr_cli.write_connection_config(
        tmp_path / "home", "lab", "127.0.0.1:9999", Path("ca.crt")
    )
    flwr_cli.write_connection_config(tmp_path / "home", "other", "10.0.0.1:8000", Path("ca.crt"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    conn = read_superlink_connection("lab")
    assert conn.address == "127.0.0.1:9999"
    assert conn.root_certificates == str((tmp_path / "ca.crt").resolve())
    assert Path(conn.root_certificates).is_absolute()
    assert read_superlink_connection(None).address == "10.0.0.1:8000"  # last written = default
    assert "insecure" not in path.read_text()


def test_child_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = child_env(tmp_path)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path.resolve())
    assert env["PATH"].split(os.pathsep)[0] == str(bin_dir())


def test_runtime_tls_is_kept_until_a_host_is_missing(tmp_path: Path) -> None:
    tls = ensure_runtime_tls(tmp_path / "tls")
    assert _mode(tls.key) == 0o600 and _mode(tmp_path / "tls") == 0o700
    assert not list((tmp_path / "tls").glob("*ca.key"))  # the one-off CA key is never stored
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    x509.load_pem_x509_certificate(tls.cert.read_bytes()).verify_directly_issued_by(ca)
    before = tls.cert.read_bytes()
    assert ensure_runtime_tls(tmp_path / "tls", ("LOCALHOST.",)).cert.read_bytes() == before
    assert ensure_runtime_tls(tmp_path / "tls", ("10.1.2.3",)).cert.read_bytes() != before


# -- unit: ManagedProcess ----------------------------------------------------------------------

_SPAWNER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("ready", flush=True)
time.sleep(300)
"""

_STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(300)
"""


def test_managed_process_stops_whole_group(tmp_path: Path) -> None:
    lines: list[str] = []
    proc = ManagedProcess(
        "spawner", [sys.executable, "-c", _SPAWNER], tmp_path / "p.log", on_line=lines.append
    ).start()
    try:
        proc.wait_healthy(lambda: "ready" in lines, 20)
        deadline = time.monotonic() + 10
        while len(group_members(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = group_members(proc.pid)
        assert len(members) == 2
    finally:
        proc.stop(timeout=5)
    assert proc.alive_pids() == []
    assert not any(pid_alive(p) for p in members)
    assert "ready" in proc.log_text()


def test_managed_process_sigkill_after_timeout(tmp_path: Path) -> None:
    proc = ManagedProcess("stubborn", [sys.executable, "-c", _STUBBORN], tmp_path / "s.log")
    proc.start()
    try:
        proc.wait_healthy(lambda: "ignoring" in proc.log_text(), 20)
        t0 = time.monotonic()
        code = proc.stop(timeout=1.0)
        assert time.monotonic() - t0 < 5
        assert code == -9
    finally:
        proc.stop(timeout=1.0)
    assert not pid_alive(proc.pid)


def test_wait_healthy_reports_early_exit(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "dies",
        [sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"],
        tmp_path / "d.log",
    ).start()
    try:
        with pytest.raises(ProcessFailed, match=r"(?s)exited with code 3.*boom: bad flag"):
            proc.wait_healthy(lambda: False, 20)
    finally:
        proc.stop()


# -- unit: launcher refusals ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> FederationCerts:
    return ensure_federation_certs(
        tmp_path_factory.mktemp("certs"),
        sans=["127.0.0.1", "localhost"],
        sites=[*SITES, "rogue", "lab-c"],
    )


def _settings(fed: FederationCerts, tmp_path: Path, **over: object) -> launcher.SiteSettings:
    (tmp_path / "data").mkdir(exist_ok=True)
    values: dict[str, object] = {
        "superlink": "127.0.0.1:8000",
        "ca_cert": fed.ca_cert,
        "site_key": fed.site_keys["lab-a"][0],
        "site_name": "lab-a",
        "dataset_root": str(tmp_path / "data"),
        "work_dir": tmp_path / "work",
    }
    values.update(over)
    return launcher.SiteSettings(_env_file=None, **values)  # type: ignore[arg-type]


def _refusal(settings: launcher.SiteSettings) -> str:
    with pytest.raises(launcher.SiteConfigError) as info:
        launcher.check_settings(settings, dataset=False)
    return str(info.value)


def test_launcher_accepts_good_settings(
    fed: FederationCerts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = launcher.check_settings(_settings(fed, tmp_path), dataset=False)
    assert node.site_name == "lab-a"
    monkeypatch.chdir(tmp_path)
    supernode, worker = launcher.build_site_processes(
        _settings(fed, tmp_path, work_dir=Path("rel-work"))
    )
    assert _flag(supernode, "--port") == "9094"
    assert _flag(worker, "--runtime-api-address") == "127.0.0.1:9094"
    assert "--insecure" not in supernode + worker
    for cmd in (supernode, worker):  # children run elsewhere: every path is absolute
        for flag in ("--ssl-certfile", "--superexec-auth-secret-file", "--root-certificates"):
            if flag in cmd:
                assert Path(_flag(cmd, flag)).is_absolute(), (flag, cmd)
    assert _flag(supernode, "--ssl-certfile").startswith(str(tmp_path / "rel-work"))


def test_launcher_refuses_missing_key(fed: FederationCerts, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "lab-a.key"
    text = _refusal(_settings(fed, tmp_path, site_key=missing))
    assert "ZK0_SITE_KEY" in text and str(missing) in text and "not found" in text


def test_launcher_refuses_missing_ca(fed: FederationCerts, tmp_path: Path) -> None:
    missing = tmp_path / "ca-missing.crt"
    text = _refusal(_settings(fed, tmp_path, ca_cert=missing))
    assert "ZK0_CA_CERT" in text and str(missing) in text and "not found" in text


def test_launcher_refuses_non_ec_key(fed: FederationCerts, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "ed.key"
    key.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    text = _refusal(_settings(fed, tmp_path, site_key=key))
    assert str(key) in text and "EC" in text and "NIST" in text


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("https://link.example.org:8000", "without scheme"),
        ("link.example.org", "no port"),
        ("link.example.org:99999", "not 1-65535"),
        ("link.example.org:http", "not 1-65535"),
        ("bad host:8000", "not a valid host"),
        ("[::1:8000", "expected host:port"),
    ],
)
def test_launcher_refuses_bad_address(
    fed: FederationCerts, tmp_path: Path, address: str, why: str
) -> None:
    text = _refusal(_settings(fed, tmp_path, superlink=address))
    assert "ZK0_SUPERLINK" in text and repr(address) in text and why in text


def test_launcher_accepts_ipv6_and_names() -> None:
    assert launcher.parse_superlink_address("[::1]:8000") == ("::1", 8000)
    assert launcher.parse_superlink_address("10.0.0.5:443") == ("10.0.0.5", 443)
    assert launcher.parse_superlink_address("link.lab-1.org:8000") == ("link.lab-1.org", 8000)
    # the host-name rule of the certificate SANs (certs.names): compose service names dial too
    assert launcher.parse_superlink_address("zk0_superlink:8000") == ("zk0_superlink", 8000)
    with pytest.raises(ValueError, match="not a valid host name"):
        launcher.parse_superlink_address("*.example.org:8000")  # a SAN wildcard is not dialable


def test_launcher_refuses_open_secret_and_lists_all_problems(
    fed: FederationCerts, tmp_path: Path
) -> None:
    secret = tmp_path / "open.secret"
    secret.write_text("abc")
    secret.chmod(0o644)
    text = _refusal(
        _settings(fed, tmp_path, superexec_secret_file=secret, superlink="nope", site_name="")
    )
    assert "0644" in text and "expected 0600" in text
    assert "ZK0_SUPERLINK" in text
    assert "site-name" in text


def test_launcher_refuses_waits_it_cannot_keep(fed: FederationCerts, tmp_path: Path) -> None:
    base = ["supernode", "--superlink", "127.0.0.1:8000", "--ca-cert", str(fed.ca_cert),
            "--site-key", str(fed.site_keys["lab-a"][0]), "--site-name", "lab-a"]
    for extra, expected in (
        (["--pull-min-seconds", "5", "--pull-max-seconds", "1"],
         "pull-min-seconds (5.0) is larger than pull-max-seconds (1.0)"),
        (["--pull-max-seconds", "0"], "--pull-max-seconds / ZK0_PULL_MAX_SECONDS"),
        (["--peer-timeout", "-1"], "--peer-timeout / ZK0_PEER_TIMEOUT"),
        (["--acquire-hold-seconds", "900"], "--acquire-hold-seconds / ZK0_ACQUIRE_HOLD_SECONDS"),
    ):
        with pytest.raises(launcher.SiteConfigError) as info:
            launcher.settings_from_args(build_parser().parse_args([*base, *extra]))
        assert expected in str(info.value), str(info.value)


def test_launcher_start_makes_secret_0600_in_0700_work_dir(
    fed: FederationCerts, tmp_path: Path
) -> None:
    """What ``zk0 supernode`` does before it spawns anything (:func:`launcher.prepare_site`)."""
    settings = _settings(fed, tmp_path)
    assert not settings.work_path.exists()
    old = os.umask(0)  # a permissive umask must not leak into the secret or its folder
    try:
        supernode, worker = launcher.prepare_site(settings)
    finally:
        os.umask(old)
    secret = settings.secret_path
    assert secret.parent == settings.work_path
    assert _mode(secret) == 0o600 and _mode(settings.work_path) == 0o700
    assert _mode(settings.runtime_tls_dir) == 0o700
    assert _mode(RuntimeTls.in_dir(settings.runtime_tls_dir).key) == 0o600
    content = secret.read_bytes()
    assert len(content) == 64 and bytes.fromhex(content.decode())  # hex, no newline
    assert _flag(supernode, "--superexec-auth-secret-file") == str(secret)
    assert _flag(worker, "--superexec-auth-secret-file") == str(secret)
    launcher.prepare_site(settings)  # a restart keeps the secret its SuperExec knows
    assert secret.read_bytes() == content
    launcher.check_settings(settings, dataset=False)  # and the launcher accepts what it made


def test_launcher_cli_flags_override_env(
    fed: FederationCerts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("ZK0_SUPERLINK", "from-env:8000")
    monkeypatch.setenv("ZK0_CA_CERT", str(fed.ca_cert))
    monkeypatch.setenv("ZK0_SITE_KEY", str(fed.site_keys["lab-a"][0]))
    monkeypatch.setenv("ZK0_SITE_NAME", "lab-a")
    monkeypatch.setenv("ZK0_DATASET_ROOT", str(tmp_path))
    args = build_parser().parse_args(
        ["supernode", "--superlink", "from-flag:9000", "--runtime-port", "9200"]
    )
    settings = launcher.settings_from_args(args)
    assert settings.superlink == "from-flag:9000"
    assert settings.runtime_port == 9200
    assert settings.site_name == "lab-a"
    assert args.func is launcher.run_cli


def test_launcher_reads_dotenv_and_check_prints_commands(
    fed: FederationCerts,
    demo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("ZK0_SUPERLINK", "ZK0_CA_CERT", "ZK0_SITE_KEY", "ZK0_SITE_NAME"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".env").write_text(
        "ZK0_SUPERLINK=link.example.org:8000\n"
        f"ZK0_CA_CERT={fed.ca_cert}\n"
        f"ZK0_SITE_KEY={fed.site_keys['lab-b'][0]}\n"
        "ZK0_SITE_NAME=lab-b\n"
        f"ZK0_DATASET_ROOT={demo_root / 'site-1'}\n"
        "ZK0_RUNTIME_PORT=9311\n"
    )
    assert launcher.run_cli(build_parser().parse_args(["supernode", "--check"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "-m deploy.flower.supernode_waits" in out[0] and "--port 9311" in out[0]
    assert "--pull-max-seconds 3 " in out[0] and "--acquire-hold-seconds 20 " in out[0]
    assert 'site-name="lab-b"' in out[0] and "link.example.org:8000" in out[0]
    assert "-m supernode.worker --runtime-api-address 127.0.0.1:9311" in out[1]
    assert "--peer-timeout 60 --acquire-timeout 80" in out[1]
    assert fed.superexec_secret.read_text() not in "\n".join(out)
    assert launcher.run_cli(build_parser().parse_args(
        ["supernode", "--check", "--no-worker", "--pull-min-seconds", "0.2"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert "--pull-min-seconds 0.2 " in out[0]
    assert "flower-superexec" in out[1] and "127.0.0.1:9311" in out[1]


def test_launcher_cli_names_missing_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("ZK0_SUPERLINK", "ZK0_CA_CERT", "ZK0_SITE_KEY", "ZK0_SITE_NAME"):
        monkeypatch.delenv(var, raising=False)
    code = launcher.run_cli(build_parser().parse_args(["supernode", "--superlink", "x:1"]))
    err = capsys.readouterr().err
    assert code == launcher.EXIT_CONFIG_ERROR
    assert "--site-key / ZK0_SITE_KEY" in err and "--ca-cert / ZK0_CA_CERT" in err


# -- e2e: a real federation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fed: FederationCerts
) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("cluster")
    app = write_echo_app(root)
    sites = [_node(s, root) for s in SITES]
    # the echo app trains nothing: no site workers (tests/test_site_worker*.py cover them)
    c = LocalCluster(app, sites, root / "work", certs=fed, startup_timeout=90, workers=False)
    try:
        t0 = time.monotonic()
        c.start()
        print(f"cluster up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield c
    finally:
        c.stop()


@pytest.mark.e2e
def test_run_reaches_every_site(cluster: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "replies.json"
    result = cluster.run({"out-file": str(out), "expected-nodes": len(SITES)}, timeout=300)
    print(f"run {result.run_id}: {result.status} in {result.duration_s:.1f} s", file=sys.stderr)
    assert result.returncode == 0, result.output
    assert result.run_id is not None
    assert result.status == "finished:completed", (result.details, result.output)
    replies = json.loads(out.read_text())
    assert sorted(replies.values()) == SITES
    assert set(replies) == {str(cluster.node_ids[s]) for s in SITES}
    runs = flwr_cli.list_runs(cluster.flwr_home, cluster.connection)
    assert any(str(r["run-id"]) == str(result.run_id) for r in runs)


def _assert_refused(proc: ManagedProcess, within: float) -> str:
    """The SuperNode exits by itself within ``within`` s with Flower code 305; returns its log."""
    t0 = time.monotonic()
    code = proc.wait(within + 10)
    took = time.monotonic() - t0
    log = proc.log_text()
    assert code is not None, f"still running after {within + 10} s:\n{proc.log_tail()}"
    assert code == 1, log  # flwr 1.42 exits 1 for every error code; the code is only logged
    assert flower_exit_code(proc) == EXIT_SUPERNODE_CONNECTION_ERROR, log
    assert took < within, f"refusal took {took:.1f} s"
    print(f"{proc.name} refused in {took:.1f} s", file=sys.stderr)
    return log


@pytest.mark.e2e
def test_unregistered_key_is_refused(cluster: LocalCluster, fed: FederationCerts) -> None:
    rogue = NodeConfig.parse({"site-name": "rogue", "dataset-root": "/nonexistent"}, "test")
    site = cluster.start_supernode(rogue, fed.site_keys["rogue"][0], name="rogue")
    log = _assert_refused(site.supernode, within=10)
    assert "[code: 2004] Failed to activate SuperNode" in log
    online = flwr_cli.list_supernodes(cluster.flwr_home, cluster.connection)
    assert {n["node-id"] for n in online} == {str(i) for i in cluster.node_ids.values()}


@pytest.mark.e2e
def test_wrong_ca_is_refused(
    cluster: LocalCluster, fed: FederationCerts, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = ensure_federation_certs(tmp_path_factory.mktemp("other-ca"), ["127.0.0.1"], [])
    node = NodeConfig.parse({"site-name": "lab-a", "dataset-root": "/nonexistent"}, "test")
    site = cluster.start_supernode(
        node, fed.site_keys["lab-a"][0], root_certificates=other.ca_cert, name="lab-a-wrong-ca"
    )
    log = _assert_refused(site.supernode, within=10)
    assert "CERTIFICATE_VERIFY_FAILED" in log


@pytest.mark.e2e
def test_runtime_apis_need_tls_and_the_secret(cluster: LocalCluster) -> None:
    """Anonymous local processes can neither read plain HTTP nor acquire a task (and its token)."""
    import httpx

    site = cluster._site_procs["lab-a"]
    apis = {
        "superlink": (cluster.address, cluster.certs.ca_cert),
        "lab-a": (
            f"127.0.0.1:{site.runtime_port}",
            cluster.work_dir / "sites" / "lab-a" / "runtime-tls" / "ca.crt",
        ),
    }
    for name, (address, ca) in apis.items():
        assert https_ok(address, ca), name
        res = httpx.post(
            f"https://{address}/v1/runtime/acquire-task",
            verify=ssl.create_default_context(cafile=str(ca)),
            content=b"",
            headers={"content-type": "application/protobuf"},
        )
        assert res.status_code == 401, (name, res.status_code, res.text)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{address}/health", timeout=5)


REPO_ROOT = Path(__file__).resolve().parent.parent



def _launcher(
    cluster: LocalCluster, key: Path, site: str, work: Path, data: Path,
    metrics: str = "off",
) -> ManagedProcess:
    args = [
        "supernode",
        "--superlink", cluster.address,
        "--ca-cert", str(cluster.certs.ca_cert),
        "--site-key", str(key),
        "--site-name", site,
        "--dataset-root", str(data),
        "--runtime-port", str(free_port()),
        "--work-dir", str(work / "site"),
        "--metrics-listen", metrics,
    ]  # fmt: skip
    env = child_env(work / "home", {"PYTHONPATH": str(REPO_ROOT)})
    return ManagedProcess(
        f"launcher-{site}", [sys.executable, "-m", "deploy.cli", *args], work / "launcher.log",
        env=env, cwd=work,
    ).start()  # fmt: skip


@pytest.mark.e2e
def test_launcher_explains_unregistered_key(
    cluster: LocalCluster, fed: FederationCerts, demo_root: Path, tmp_path: Path
) -> None:
    proc = _launcher(cluster, fed.site_keys["rogue"][0], "rogue", tmp_path,
                     demo_root / "site-0")
    try:
        code = proc.wait(90)  # the launcher imports the ML stack for its dataset preflight
        log = proc.log_text()
        assert code == 1, log
        assert "Flower code 305" in log and "not registered" in log
    finally:
        proc.stop()
    assert procs_mentioning(str(tmp_path / "site")) == []


@pytest.mark.e2e
def test_launcher_runs_site_and_stops_on_sigterm(
    cluster: LocalCluster, fed: FederationCerts, demo_root: Path, tmp_path: Path
) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    priv, pub = fed.site_keys["lab-c"]
    node_id = flwr_cli.register_supernode(cluster.flwr_home, cluster.connection, pub, "lab-c")
    metrics = f"127.0.0.1:{free_port()}"
    proc = _launcher(cluster, priv, "lab-c", tmp_path, demo_root / "site-0", metrics)
    try:
        cluster.wait_online([node_id], 90)
        assert _mode(tmp_path / "site" / "superexec.secret") == 0o600
        assert _mode(tmp_path / "site") == 0o700
        assert len(procs_mentioning(str(tmp_path / "site"))) >= 2  # supernode + worker
        tree = descendants(proc.pid)
        # the launcher serves the site's metrics: its processes by role, on loopback
        text = httpx.get(f"http://{metrics}/metrics", timeout=10).text
        roles = {s.labels["role"] for f in text_string_to_metric_families(text)
                 if f.name == "zk0_local_process_resident_memory_bytes" for s in f.samples
                 if s.labels["site"] == "lab-c"}
        assert {"launcher", "supernode", "worker"} <= roles, text
        assert _mode(tmp_path / "site" / "metrics") == 0o700
        os.kill(proc.pid, signal.SIGTERM)  # what `docker stop` / systemd send
        assert proc.wait(30) == 0, proc.log_tail()
    finally:
        proc.stop()
    assert [p for p in tree if pid_alive(p)] == []  # every child PID it had is gone
    assert procs_mentioning(str(tmp_path / "site")) == []
    assert f"site 'lab-c' connected as node {node_id}" in proc.log_text()
    assert f"site 'lab-c' metrics on http://{metrics}/metrics" in proc.log_text()


@pytest.mark.e2e
def test_stop_leaves_no_process(cluster: LocalCluster) -> None:
    pids = cluster.all_pids()
    assert len(pids) >= 2 + 2 * len(SITES)
    t0 = time.monotonic()
    cluster.stop()
    print(f"cluster stopped in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert cluster.alive_pids() == []
    assert [p for p in pids if pid_alive(p)] == []


@pytest.mark.e2e
def test_restart_keeps_registrations_and_runs(tmp_path: Path) -> None:
    """A new cluster on the same work dir (state.db) reuses keys, node ids and run history.

    Self-contained: its own work dir, one run, a full stop, then a restart on the same dir.
    """
    app = write_echo_app(tmp_path)
    sites = [_node(s, tmp_path) for s in SITES]
    work = tmp_path / "work"
    first = LocalCluster(app, sites, work, startup_timeout=90, echo_run=False, workers=False)
    try:
        first.start()
        out = tmp_path / "replies.json"
        done = first.run({"out-file": str(out), "expected-nodes": len(SITES)}, timeout=300)
        assert done.status == "finished:completed", (done.details, done.output)
    finally:
        first.stop()
    assert first.alive_pids() == []
    ids = dict(first.node_ids)
    assert sorted(ids) == SITES

    again = LocalCluster(app, sites, work, startup_timeout=90, echo_run=False, workers=False)
    try:
        again.start()
        assert again.certs.ca_cert.read_bytes() == first.certs.ca_cert.read_bytes()
        assert again.node_ids == ids  # read from the SuperNodes' logs: same keys, same ids
        for site in SITES:  # the registrations are still in state.db
            assert again.register(site, again.certs.site_keys[site][1]) is None
        nodes = flwr_cli.list_supernodes(again.flwr_home, again.connection)
        online = {n["node-id"] for n in nodes if n["status"] == "online"}
        assert online == {str(i) for i in ids.values()}
        runs = flwr_cli.list_runs(again.flwr_home, again.connection, done.run_id)
        assert [r["status"] for r in runs] == ["finished:completed"]
    finally:
        again.stop()
    assert again.alive_pids() == []
