"""A SuperNode's runtime API in this process: Flower's own FastAPI app and in-memory NodeState,
served by uvicorn over TLS with a SuperExec secret, as ``flower-supernode`` serves it, with zk0's
changes to its waits installed (:mod:`deploy.flower.supernode_waits`).

Only the SuperLink side is left out: :meth:`RuntimeApi.deliver` stores a message, its run, FAB
and context and creates its task exactly as the SuperNode's pull loop does after a pull
(``flwr.supernode.start_client_internal._pull_and_store_message``), so the site worker meets
the real API, state, tokens and object store.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message, RecordDict

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RuntimeApi:
    address: str
    ca: Path
    secret: Path
    state: object  # flwr's InMemoryNodeState
    installed: object  # deploy.flower.supernode_waits.Installed
    node_id: int = 7

    def deliver(self, msg: Message, fab: bytes, node_config: dict, run_id: int = 42) -> int:
        """Store ``msg`` (an instruction to this node) as if just pulled; its task id."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.fab import Fab
        from flwr.supercore.run import Run, RunStatus
        from flwr.supernode.start_client_internal import _insert_message

        fab_hash = __import__("hashlib").sha256(fab).hexdigest()
        if self.state.get_run(run_id) is None:
            run = Run(run_id, "zk0/zk0", "0.1.0", fab_hash, {}, "", "", "", "",
                      RunStatus("running", "", ""), "", "", None, 0, 0, 0.0, series_id=run_id)
            context = Context(run_id=run_id, node_id=self.node_id, node_config=node_config,
                              state=RecordDict(), run_config={}, series_id=run_id)
            self.state.set_run_series_context(run_id, context)
            self.state.store_run(run)
            self.state.store_fab(Fab(fab_hash, fab, {}))
        task_id = self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=run_id,
                                         fab_hash=fab_hash)
        _insert_message(msg, self.state, self.state.object_store)
        self.installed.signals.task_created()
        return task_id

    def replies(self, timeout: float = 60.0) -> list[Message]:
        """The replies the worker pushed (waits until one is complete or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.state.get_messages_legacy(is_reply=True)
            if got:
                return list(got)
            time.sleep(0.05)
        return []

    def inflated(self, reply: Message) -> Message:
        """The reply with its content, rebuilt from the objects the worker pushed (the state
        keeps the message without it, as the SuperNode uploads it)."""
        from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        store = self.state.object_store
        message_id = reply.metadata.message_id
        tree = store.get_object_tree(message_id)
        contents = {t.object_id: store.get(t.object_id) for t in iterate_object_tree(tree)}
        whole = inflate_object_from_contents(message_id, contents)
        assert isinstance(whole, Message)
        return whole

    def task_status(self, task_id: int) -> tuple[str, str]:
        [task] = self.state.get_tasks(task_ids=[task_id])
        return task.status.status, task.status.sub_status


@contextmanager
def runtime_api(folder: Path, hold: float = 5.0) -> Iterator[RuntimeApi]:
    import uvicorn
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.main import create_app
    from flwr.supernode.nodestate import NodeStateFactory

    from certs.keys import make_secret
    from deploy.flower.runtime_tls import ensure_runtime_tls
    from deploy.flower.supernode_waits import Waits, install

    installed = install(Waits(acquire_hold=hold))
    assert installed is not None, "Flower changed: see tests/test_supernode_waits.py"
    try:
        secret = make_secret(folder / "superexec.secret")
        tls = ensure_runtime_tls(folder / "runtime-tls")
        factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
        state = factory.state()
        state.set_node_id(7)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(
            create_app(state_factory=factory, superexec_auth_secret=secret.read_bytes()),
            host="127.0.0.1", port=port, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key),
            log_level="warning", access_log=False, workers=1))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "runtime API did not start"
            time.sleep(0.05)
        try:
            yield RuntimeApi(f"127.0.0.1:{port}", tls.ca, secret, state, installed)
        finally:
            installed.signals.stop()  # releases held AcquireTask calls
            server.should_exit = True
            thread.join(10)
    finally:
        installed.undo()
