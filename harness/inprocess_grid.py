"""Run zk0's unchanged ServerApp against zk0's unchanged ClientApp in one process.

The real cluster pays Flower's transport (TLS, chunked uploads, a new ClientApp process per
message, 1-3 s polling). For learning-quality sweeps over many seeds and strategies that cost
is irrelevant to the result, so :class:`InProcessGrid` implements Flower's ``Grid`` interface by
calling ``supernode.client_app.app`` directly, with each site's node config, while
``superlink.federation.run_federation`` drives the rounds exactly as in a deployment. The
maths is identical to a cluster run with the same seeds (bench.quality checks that on one
configuration); only the transport is missing.

Signing is not left out: as a SuperLink registers each site's key under its name, the grid
gives every node a key of its own (and its node config the ``site-key`` and
``coordinator-pubkey`` paths a launcher would set) and lists them in :meth:`get_nodes`; the
ServerApp context names a coordinator key (:func:`server_context`). So in-process runs sign and
verify every message exactly as a deployment does.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid

from certs.keys import make_coordinator_key, make_site_key
from common import signing

FIRST_NODE_ID = 1001
#: Flower's error code for a message whose TTL passed before a reply came (SuperLink's answer
#: to a pull then).
MESSAGE_UNAVAILABLE = 3


@functools.cache
def coordinator_keys() -> tuple[Path, Path]:
    """This process's in-process coordinator key pair (private, public), made once and removed
    when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="zk0-inprocess-coordinator-"))
    atexit.register(shutil.rmtree, folder, True)
    return make_coordinator_key(folder)


class InProcessGrid(Grid):
    """A ``Grid`` whose nodes are ClientApp calls in this process, one per node config.

    A site keeps state between the rounds of a run on disk (its AdamW moments, under
    ``<state-dir>/run-<run id>``). A deployment's SuperLink hands every run a fresh random id,
    so a new run never finds an old run's state; in-process runs reuse small fixed ids, so
    unless a node config names its own ``state-dir`` (an empty one counts as none), each grid
    gives its nodes one of their own, removed by :meth:`close` (or when the grid is
    garbage-collected). Without that, a rerun of the same job would start from the AdamW
    moments a previous run (anyone's, in the shared ``$ZK0_CACHE``) left behind.
    """

    def __init__(self, client_app, node_configs: list[Mapping[str, Any]],
                 run_config: Mapping[str, Any], run_id: int = 1,
                 late: Mapping[tuple[str, str], float] | None = None, *,
                 delay: Callable[[str, Message], float] | None = None,
                 offline: Iterable[str] = (),
                 deliver_unasked: bool = False) -> None:
        """Fault knobs (all off by default):

        - ``late`` maps (site name, message type) to how many seconds after such a message is
          pushed its reply becomes available: a slow or stalled site; ``delay(site, message)``
          does the same per message (e.g. only one round's);
        - ``offline``: site names whose nodes are not connected (not in ``get_node_ids``);
        - ``deliver_unasked``: pulls also hand back due replies to messages nobody asked for
          (as a transport with at-least-once delivery might): the ServerApp must not apply a
          reply to an earlier round's message to the current one.

        As the SuperLink does, a message whose TTL passes before its reply is due is answered
        with Flower's "message unavailable" error, and its late reply is never delivered.
        """
        self.client_app = client_app
        self.run_id = run_id
        self.late = dict(late or {})
        self.delay = delay
        self.offline = set(offline)
        self.deliver_unasked = deliver_unasked
        self.expired: list[Message] = []  # messages whose TTL passed before their reply was due
        self.state_root = Path(tempfile.mkdtemp(prefix="zk0-inprocess-state-"))
        self._remove_state = weakref.finalize(self, shutil.rmtree, self.state_root, True)
        # each node's own key, as `zk0 site register KEY.pub --name <site-name>` binds it
        self.keys = {FIRST_NODE_ID + i: make_site_key(self.state_root / "keys", f"node-{i}")
                     for i in range(len(node_configs))}
        coordinator_pub = str(coordinator_keys()[1])
        self.contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + i,
                node_config={
                    **cfg,
                    "state-dir": cfg.get("state-dir") or str(self.state_root / f"node-{i}"),
                    "site-key": cfg.get("site-key") or str(self.keys[FIRST_NODE_ID + i][0]),
                    "coordinator-pubkey": cfg.get("coordinator-pubkey") or coordinator_pub,
                },
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, cfg in enumerate(node_configs)
        }
        # message id -> (message, when its reply may be pulled); replies are computed when
        # pulled, as a SuperNode works while the ServerApp waits
        self._pending: dict[str, tuple[Message, float]] = {}
        self._counter = 0

    def close(self) -> None:
        """Remove the nodes' state folders (the run is over)."""
        self._remove_state()

    # Grid interface ------------------------------------------------------------------------
    def set_run(self, run_id) -> None:  # pragma: no cover - not used in-process
        self.run_id = run_id

    @property
    def run(self):  # pragma: no cover - not used in-process
        return self.run_id

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def site_name(self, node_id: int) -> str:
        return str(self.contexts[node_id].node_config.get("site-name"))

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if self.site_name(n) not in self.offline]

    def get_nodes(self) -> Iterable[NodeInfo]:
        """What a SuperLink lists for a run: node id, registered name and public key (PEM)."""
        return [
            NodeInfo(
                node_id=node,
                name=str(ctx.node_config.get("site-name", "")),
                public_key=signing.public_pem(signing.parse_public_key(
                    self.keys[node][1].read_bytes())),
                status="online",
            )
            for node, ctx in self.contexts.items()
        ]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        now = time.monotonic()
        for msg in messages:
            self._counter += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._counter}"
            msg.metadata.__dict__["_src_node_id"] = 1
            site = self.site_name(msg.metadata.dst_node_id)
            delay = self.late.get((site, msg.metadata.message_type), 0.0)
            if self.delay is not None:
                delay += self.delay(site, msg)
            self._pending[msg.metadata.message_id] = (msg, now + delay)
            ids.append(msg.metadata.message_id)
        return ids

    def _answer(self, msg: Message) -> Message:
        context = self.contexts[msg.metadata.dst_node_id]
        # a SuperNode runs a message in the context of the message's run
        context.run_id = msg.metadata.run_id or context.run_id
        try:
            return self.client_app(msg, context)
        except Exception as err:  # what a SuperNode turns an exception into
            return Message(Error(code=2, reason=f"{type(err).__name__}: {err}"), reply_to=msg)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        asked = list(message_ids)
        candidates = list(self._pending) if self.deliver_unasked else asked
        out = []
        for m in candidates:
            if m not in self._pending:
                continue
            msg, due = self._pending[m]
            if due <= time.monotonic():
                out.append(self._answer(self._pending.pop(m)[0]))
            elif m in asked and time.time() > msg.metadata.created_at + msg.metadata.ttl:
                del self._pending[m]
                self.expired.append(msg)
                out.append(Message(Error(code=MESSAGE_UNAVAILABLE,
                                         reason="message expired before a reply arrived"),
                                   reply_to=msg))
        return out

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_inprocess(run_config: Mapping[str, Any], node_configs: list[Mapping[str, Any]],
                  run_id: int = 1, *, client_app=None,
                  late: Mapping[tuple[str, str], float] | None = None, **faults: Any):
    """Run a whole federation in this process (zk0's ClientApp unless ``client_app`` is
    given); return the run folder. ``faults``: :class:`InProcessGrid`'s fault knobs."""
    from superlink.federation import run_federation
    from supernode.client_app import app

    grid = InProcessGrid(client_app or app, node_configs, run_config, run_id, late=late,
                         **faults)
    try:
        return run_federation(grid, server_context(run_config, run_id))
    finally:
        grid.close()


def _act_as_serverapp(run_id: int) -> None:
    """Flower stamps every new instruction ``Message`` with the run, node and task ids of the
    process creating it (set by the ServerApp runtime); outside one ``Message()`` raises."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
        run_id, SUPERLINK_NODE_ID, run_id)


def server_context(run_config: Mapping[str, Any], run_id: int) -> Context:
    """The ServerApp's Context, with Flower's task identity set as a ServerApp process has it,
    naming this process's in-process coordinator key (a deployment's comes from the SuperExec's
    environment, see :mod:`superlink.authenticity`)."""
    from flwr.common.constant import SUPERLINK_NODE_ID

    from superlink.authenticity import COORDINATOR_KEY_CONFIG

    _act_as_serverapp(run_id)
    return Context(run_id=run_id, node_id=SUPERLINK_NODE_ID,
                   node_config={COORDINATOR_KEY_CONFIG: str(coordinator_keys()[0])},
                   state=RecordDict(), run_config=dict(run_config))


@contextlib.contextmanager
def server_identity(run_id: int = 1) -> Iterator[None]:
    """Act as a ServerApp process for a while (benchmarks), restoring the identity after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    _act_as_serverapp(run_id)
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
