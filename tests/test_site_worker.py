"""The site worker (supernode/worker.py) as this site's task executor on Flower's runtime API.

Most tests run the worker in a thread of this process against a real SuperNode runtime API
(Flower's FastAPI app, NodeState and object store over TLS, with zk0's waits:
tests/runtime_api.py): real tokens, real SuperExec authentication, zk0's real ClientApp with its
signature checks. Stopping on signals runs the worker as the process ``zk0 supernode`` starts.
The equality of worker and in-process runs is tests/test_e2e_federation.py's.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.app import Message
from runtime_api import REPO, RuntimeApi, runtime_api

from common.protocol import EXCLUDED_NOTICE, NOTICE, ExclusionNotice
from supernode.app_code import code_fingerprint, fab_fingerprint


@pytest.fixture(scope="module")
def fab() -> bytes:
    """This checkout as Flower bundles it for a run (``flwr run`` builds the same)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(REPO)


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[RuntimeApi]:
    with runtime_api(tmp_path / "site", hold=2.0) as served:
        yield served


@pytest.fixture()
def keys(tmp_path: Path):
    from certs.keys import make_coordinator_key, make_site_key

    coordinator = make_coordinator_key(tmp_path / "coordinator")
    site_key, _ = make_site_key(tmp_path / "site-keys", "lab-a")
    return coordinator, site_key


def _node_config(keys, root: Path) -> dict:
    (_coordinator_key, coordinator_pub), site_key = keys
    return {"site-name": "lab-a", "dataset-root": str(root), "site-key": str(site_key),
            "coordinator-pubkey": str(coordinator_pub)}


def _notice(keys, run_id: int = 42) -> Message:
    """An exclusion notice signed by the coordinator, as the ServerApp sends it."""
    from flwr.app import RecordDict

    from common import signing
    from harness.inprocess_grid import server_identity
    from superlink.authenticity import FederationGuard

    with server_identity(run_id):
        msg = Message(RecordDict({NOTICE: ExclusionNotice("lab-a", "test").to_record()}),
                      dst_node_id=7, message_type=EXCLUDED_NOTICE)
        FederationGuard(run_id, signing.load_private_key(keys[0][0], "key")).sign_instructions(
            [msg])
    return msg


def _options(api: RuntimeApi, **kw):
    from supernode.worker import WorkerOptions

    return WorkerOptions(api.address, api.ca, api.secret, **kw)


@pytest.fixture()
def worker_thread(api: RuntimeApi, monkeypatch):
    """Start a worker serving ``api`` in a thread (the process's kept runtime is undone)."""
    import supernode.runtime

    monkeypatch.setattr(supernode.runtime, "_kept", None)
    started = []

    def start(**kw):
        from supernode.worker import Worker

        worker = Worker(_options(api, **kw))
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop.set()
        api.installed.signals.stop()
        thread.join(15)
        assert not thread.is_alive(), "worker did not stop"


def test_fingerprints_of_the_tree_and_of_its_bundle_agree(fab: bytes) -> None:
    assert fab_fingerprint(fab) == code_fingerprint()


def test_a_message_runs_in_the_worker_and_its_signed_reply_reaches_the_supernode(
    api: RuntimeApi, worker_thread, keys, fab: bytes, tmp_path: Path
) -> None:
    from flwr.common.constant import SubStatus

    from common.protocol import SIGNATURE

    worker = worker_thread()
    for n in (1, 2):
        msg = _notice(keys)
        task = api.deliver(msg, fab, _node_config(keys, tmp_path))
        [reply] = api.replies()
        assert reply.metadata.reply_to_message_id == msg.metadata.message_id
        assert not reply.has_error(), reply.error.reason
        deadline = time.monotonic() + 10  # the reply's objects are in when the task is done
        while api.task_status(task)[1] != SubStatus.COMPLETED:
            assert time.monotonic() < deadline, api.task_status(task)
            time.sleep(0.05)
        assert SIGNATURE in api.inflated(reply).content.config_records  # signed by the site
        assert worker.tasks == n  # one process, every message


def test_a_bundle_with_other_site_code_is_refused_naming_both_versions(
    api: RuntimeApi, worker_thread, keys, fab: bytes, tmp_path: Path
) -> None:
    from flwr.common.constant import ErrorCode

    changed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(changed, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data + b"# another zk0\n" if name == "supernode/tasks.py"
                         else data)
    other = changed.getvalue()
    worker_thread()
    api.deliver(_notice(keys), other, _node_config(keys, tmp_path))
    [reply] = api.replies()
    assert reply.has_error() and reply.error.code == ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    assert fab_fingerprint(other)[:12] in reply.error.reason
    assert code_fingerprint()[:12] in reply.error.reason


def test_acquire_waits_for_a_message_and_answers_as_soon_as_it_is_stored(
    api: RuntimeApi, keys, fab: bytes, tmp_path: Path, monkeypatch
) -> None:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    import supernode.runtime
    from supernode.worker import Worker

    monkeypatch.setattr(supernode.runtime, "_kept", None)
    client = Worker(_options(api))._acquire_client()
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    start = time.monotonic()
    assert not client.AcquireTask(request).HasField("task")  # held for the whole hold: 2 s
    assert 1.8 < time.monotonic() - start < 5
    got: list = []
    thread = threading.Thread(target=lambda: got.append((client.AcquireTask(request),
                                                         time.monotonic())))
    thread.start()
    time.sleep(0.5)
    stored = time.monotonic()
    api.deliver(_notice(keys), fab, _node_config(keys, tmp_path))
    thread.join(10)
    client.close()
    [(res, answered)] = got
    assert res.HasField("task") and res.token
    assert answered - stored < 0.3, answered - stored


def test_acquire_without_the_secret_is_refused(api: RuntimeApi, tmp_path: Path,
                                               monkeypatch) -> None:
    import supernode.runtime
    from supernode.worker import SecretRefused, Worker, WorkerOptions

    monkeypatch.setattr(supernode.runtime, "_kept", None)
    wrong = tmp_path / "wrong.secret"
    wrong.write_bytes(b"not the site's secret")
    wrong.chmod(0o600)
    worker = Worker(WorkerOptions(api.address, api.ca, wrong))
    with pytest.raises(SecretRefused, match="401"):
        worker.serve()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_can_neither_read_the_secret_nor_get_a_task(api: RuntimeApi) -> None:
    """The runtime API takes connections from anyone on the box; what keeps another local user
    from the site's tasks (and their tokens) is the SuperExec secret, 0600 in a 0700 folder."""
    python = "/usr/bin/python3"  # the venv's interpreter may not be readable by another user
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} not found")
    probe = (
        "import http.client, ssl, sys\n"
        "try:\n    open(sys.argv[1], 'rb').read()\n    print('read the secret'); sys.exit(3)\n"
        "except PermissionError:\n    pass\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[3])\n"
        "host, port = sys.argv[2].split(':')\n"
        "c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)\n"
        "c.request('POST', '/v1/runtime/acquire-task', body=b'',\n"
        "          headers={'content-type': 'application/protobuf'})\n"
        "print(c.getresponse().status)\n"
    )
    ca = Path(tempfile.mkdtemp()) / "ca.crt"  # the CA is public; the secret is not
    ca.write_bytes(api.ca.read_bytes())
    ca.parent.chmod(0o755)
    ca.chmod(0o644)
    done = subprocess.run([python, "-c", probe, str(api.secret), api.address, str(ca)],
                          user=65534, group=65534, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    assert done.stdout.strip() == "401", done.stdout


def test_a_stalled_connection_to_the_runtime_api_does_not_hold_the_worker(
    api: RuntimeApi, worker_thread, keys, fab: bytes, tmp_path: Path
) -> None:
    """Another local client opens the runtime API and stops half-way through a request: the
    SuperNode serves the worker's connection alongside it."""
    context = ssl.create_default_context(cafile=str(api.ca))
    host, port = api.address.split(":")
    raw = context.wrap_socket(socket.create_connection((host, int(port))),
                              server_hostname=host)
    raw.sendall(b"POST /v1/runtime/acquire-task HTTP/1.1\r\nHost: x\r\nContent-Le")
    try:
        worker_thread()
        api.deliver(_notice(keys), fab, _node_config(keys, tmp_path))
        [reply] = api.replies(timeout=30)
        assert not reply.has_error()
    finally:
        raw.close()


def _stalled_listener() -> tuple[socket.socket, str]:
    """A TCP port that accepts connections and never answers (a hung SuperNode)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_stalled_supernode_costs_timeouts_and_retries_never_a_hang(
    api: RuntimeApi, monkeypatch
) -> None:
    import supernode.runtime
    from supernode.worker import Worker, WorkerOptions

    monkeypatch.setattr(supernode.runtime, "_kept", None)
    sock, address = _stalled_listener()
    try:
        worker = Worker(WorkerOptions(address, api.ca, api.secret, acquire_timeout=0.5,
                                      connect_timeout=0.5))
        calls: list[float] = []
        real = worker._unreachable

        def unreachable(err: Exception, failures: int) -> int:
            calls.append(time.monotonic())
            assert isinstance(err, httpx.TimeoutException), err
            if len(calls) >= 2:
                worker.stop.set()
            return real(err, failures)

        worker._unreachable = unreachable  # type: ignore[method-assign]
        start = time.monotonic()
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive() and len(calls) == 2
        assert time.monotonic() - start < 15
    finally:
        sock.close()


def _worker_process(api: RuntimeApi, address: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "supernode.worker", "--runtime-api-address",
         address or api.address, "--root-certificates", str(api.ca),
         "--superexec-auth-secret-file", str(api.secret), "--acquire-timeout", "90"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 300) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} from the worker:\n{''.join(lines)[-3000:]}")


@pytest.mark.parametrize("stalled", [False, True], ids=["held-acquire", "stalled-supernode"])
def test_sigterm_stops_the_worker_at_once_while_it_waits(tmp_path: Path, stalled: bool) -> None:
    """Waiting in an AcquireTask the SuperNode holds for 60 s (or on a SuperNode that never
    answers, read timeout 60 s), the worker exits within seconds of SIGTERM."""
    with runtime_api(tmp_path / "site", hold=60.0) as api:
        sock, address = _stalled_listener() if stalled else (None, None)
        proc = _worker_process(api, address)
        try:
            _wait_for_line(proc, "worker_ready")
            time.sleep(1.0)  # inside the waiting call now
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert time.monotonic() - start < 10  # not the 60 s the call could have taken
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if sock is not None:
                sock.close()
