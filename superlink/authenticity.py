"""The coordinator's half of end-to-end signing, and site identity from authentication.

A reply is attributed to the node Flower authenticated (the SuperLink routes it by the node's
key); the site *name* in every report, failure and metric is the name the coordinator
registered for that node's key (``zk0 site register KEY.pub --name lab-a``), read from the
SuperLink's node list (``grid.get_nodes()``: node id, registered name, registered public key),
never the name a site writes into its own messages. :class:`FederationGuard` holds that
registry for one run and:

* signs every instruction (stats query, global model) with the coordinator's key, which sites
  verify with the public key shipped next to ``ca.crt`` (:mod:`supernode.authenticity`), each
  for its one recipient node and with the federation id and the next number of
  :class:`InstructionSequence`, so that sites can refuse a replayed instruction
  (:mod:`supernode.instruction_ledger`);
* checks every reply before anything in it is decoded: the name it claims is the registered
  one ("identity"), it is signed by the key registered for the node, for this run, this round
  and the instruction it answers ("signature", "replay"), and its aggregation weight
  (``num-examples``) is at most the frame count the site declared in its signed stage-0 reply
  ("weight"). A refusal raises :class:`ReplyRejected`, which the strategy records as the
  site's failure for the round.

Where the coordinator's private key is: the path in the ServerApp context's node config
(``coordinator-key``, the in-process harness) or in ``ZK0_COORDINATOR_KEY`` in the environment
of the SuperLink's SuperExec (a deployment; ``zk0 cluster`` sets it). Only the path travels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from common import atomic, signing
from common.protocol import SIGNATURE, SITE, SiteInfo, SiteReport
from superlink.reply_model import ReplyRejected, check_signature_record

COORDINATOR_KEY_ENV = "ZK0_COORDINATOR_KEY"
COORDINATOR_KEY_CONFIG = "coordinator-key"
TRAIN, EVALUATE = "train", "evaluate"
#: In the run folder: the highest instruction sequence number handed out (written ahead).
SEQUENCE_FILE = "instruction_sequence.json"


class GuardSetupError(RuntimeError):
    """The ServerApp cannot sign: no coordinator key, or one that cannot be used."""


class InstructionSequence:
    """The numbers the coordinator gives its instructions: increasing for the federation's life.

    A site refuses an instruction whose number is not above the highest it has handled for
    the federation (:mod:`supernode.instruction_ledger`), so the numbers must grow across the
    federation's runs, also when a run is resumed in a new Flower run. Each number is
    ``max(wall clock in ns, last + 1)``, and with a ``path`` (the run folder's
    :data:`SEQUENCE_FILE`, which a resumed run continues in) it is written there before any
    instruction carrying it is sent: a resumed run starts above everything the interrupted one
    may have sent, even if the host's clock was set back in between.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.last = 0
        if path is not None and path.exists():
            try:
                self.last = int(json.loads(path.read_text())["last"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise GuardSetupError(
                    f"{path}: unreadable instruction sequence ({type(err).__name__}: {err}); it "
                    "is written atomically, so it was changed by hand: restore it from a backup "
                    'or write {"last": <a number above every instruction sent so far>}'
                ) from None

    def next(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        if self.path is not None:
            atomic.write_bytes(self.path, json.dumps({"last": self.last}).encode(), 0o600)
        return self.last


@dataclass(frozen=True)
class NodeIdentity:
    """A node as the SuperLink registered it: the name and key the coordinator bound."""

    node_id: int
    name: str
    key: ec.EllipticCurvePublicKey

    @property
    def fingerprint(self) -> str:
        return signing.fingerprint(self.key)


def coordinator_key_path(context: Context) -> str:
    """Where the coordinator's private key is (context node config, else environment)."""
    path = str(context.node_config.get(COORDINATOR_KEY_CONFIG, "") or "")
    path = path or os.environ.get(COORDINATOR_KEY_ENV, "")
    if not path:
        raise GuardSetupError(
            f"no coordinator signing key: set {COORDINATOR_KEY_ENV}=<path to coordinator.key> in "
            "the environment of the SuperLink's SuperExec (`zk0 certs` makes the key; "
            "`zk0 cluster` sets it)"
        )
    return path


def _claimed_site(msg: Message) -> str | None:
    """The site name a reply writes about itself (train/evaluate: ``site-name``; stats:
    SiteInfo's ``site_name``), or None if it names none."""
    record = msg.content.config_records.get(SITE)
    if record is None:
        return None
    for key in ("site-name", "site_name"):
        if key in record:
            return str(record[key])
    return None


class FederationGuard:
    """One run's registry of node identities, its signer and its reply checks (module doc)."""

    def __init__(
        self, run_id: int, coordinator_key: ec.EllipticCurvePrivateKey,
        federation_id: str | None = None, sequence: InstructionSequence | None = None,
    ) -> None:
        self.run_id = run_id
        self.federation_id = federation_id or str(run_id)
        self.sequence = sequence or InstructionSequence()
        self._key = coordinator_key
        self._identities: dict[int, NodeIdentity] = {}
        self._problems: dict[int, str] = {}  # node id -> why it has no usable identity
        self._declared: dict[int, SiteInfo] = {}

    @classmethod
    def for_run(
        cls, context: Context, *, federation_id: str | None = None, run_dir: Path | None = None
    ) -> FederationGuard:
        """The run's guard; ``federation_id`` defaults to the run id (a new federation),
        ``run_dir`` keeps the instruction sequence (:class:`InstructionSequence`)."""
        path = coordinator_key_path(context)
        try:
            key = signing.load_private_key(path, "coordinator key")
        except signing.KeyFileError as err:
            raise GuardSetupError(str(err)) from None
        sequence = InstructionSequence(run_dir / SEQUENCE_FILE if run_dir is not None else None)
        return cls(context.run_id, key, federation_id, sequence)

    # -- identities ---------------------------------------------------------------------------

    def refresh(self, grid: Grid) -> None:
        """Read node id -> registered name and public key from the SuperLink's node list.

        Only online nodes are listed (Flower 1.42). A node registered without a name, with a
        key that does not parse, or under a name another online node also holds cannot be
        attributed to a site and is refused (:meth:`identity` says why).
        """
        seen: dict[int, tuple[str, bytes]] = {
            int(info.node_id): (str(info.name), bytes(info.public_key))
            for info in grid.get_nodes()  # type: ignore[attr-defined]
        }
        names = Counter(name for name, _ in seen.values() if name)
        for node, (name, pem) in seen.items():
            if node in self._identities:
                continue  # a run keeps the identity it first read for a node
            if not name:
                self._problems[node] = (
                    f"node {node} was registered without a site name; revoke it and register "
                    "its key with `zk0 site register KEY.pub --name SITE`"
                )
                continue
            if names[name] > 1:
                others = sorted(n for n, (m, _) in seen.items() if m == name)
                self._problems[node] = (
                    f"site name {name!r} is registered for several online nodes {others}; "
                    "revoke all but one (`zk0 site revoke`)"
                )
                continue
            try:
                key = signing.parse_public_key(pem, f"registered key of node {node}")
            except signing.KeyFileError as err:
                self._problems[node] = str(err)
                continue
            self._identities[node] = NodeIdentity(node, name, key)
            self._problems.pop(node, None)

    def identity(self, node: int) -> NodeIdentity:
        """The registered identity of ``node``; :class:`ReplyRejected` ("identity") if none."""
        found = self._identities.get(node)
        if found is None:
            reason = self._problems.get(node, f"node {node} is not a registered, online node")
            raise ReplyRejected("identity", reason)
        return found

    def name_of(self, node: int) -> str:
        """The registered site name of ``node`` (``node-<id>`` if it has none)."""
        found = self._identities.get(node)
        return found.name if found is not None else f"node-{node}"

    # -- sign ---------------------------------------------------------------------------------

    def sign_instructions(self, messages: Iterable[Message]) -> None:
        """Sign every message for its own recipient, under one new sequence number.

        Flower's strategies share one RecordDict between the messages of a round; each message
        gets its own RecordDict holding the same records (the arrays stay one object, which
        Flower uploads once) so that it can carry its own signature. The content digest is
        computed once per shared content.
        """
        messages = list(messages)
        if not messages:
            return
        sequence = self.sequence.next()
        templates: dict[int, tuple[RecordDict, signing.Statement]] = {}  # holds the contents
        for msg in messages:
            shared = msg.content
            if id(shared) not in templates:
                templates[id(shared)] = (shared, signing.Statement.instruction(
                    msg, self.run_id, node_id=0, federation=self.federation_id,
                    sequence=sequence))
            statement = dataclasses.replace(templates[id(shared)][1],
                                            node_id=msg.metadata.dst_node_id)
            msg.content = RecordDict({k: v for k, v in shared.items() if k != SIGNATURE})
            signing.attach(msg.content, statement, self._key)

    # -- check --------------------------------------------------------------------------------

    def check_signed(self, msg: Message, node: int, kind: str, server_round: int) -> NodeIdentity:
        """Identity and signature of one reply from ``node`` to a ``kind`` instruction of
        ``server_round``; raises :class:`ReplyRejected` naming what failed."""
        ident = self.identity(node)
        check_signature_record(msg.content)  # typed before common.signing reads it
        claimed = _claimed_site(msg)
        if claimed is not None and claimed != ident.name:
            raise ReplyRejected(
                "identity",
                f"reply claims site {claimed!r}, node {node} is registered as {ident.name!r}",
            )
        expected = signing.Statement(
            direction=signing.REPLY,
            kind=kind,
            run_id=self.run_id,
            server_round=server_round,
            node_id=node,
            site=ident.name,
            reply_to=msg.metadata.reply_to_message_id,
            content=signing.content_digest(msg.content),
        )
        try:
            signing.verify(msg.content, expected, ident.key)
        except signing.SignatureRejected as err:
            raise ReplyRejected(err.kind, str(err)) from None
        return ident

    def declare(self, node: int, info: SiteInfo) -> None:
        """What the site declared at stage 0 (signed): the bound of its aggregation weights."""
        self._declared[node] = info

    def check_weight(self, kind: str, node: int, report: SiteReport) -> None:
        """Refuse a ``num-examples`` (of a parsed report, :mod:`superlink.reply_model`) above
        the frames the site declared before round 1."""
        info = self._declared.get(node)
        if info is None:
            raise ReplyRejected("weight", f"node {node} declared no data before round 1")
        bound, what = ((info.train_frames, "training") if kind == TRAIN
                       else (info.eval_frames, "evaluation"))
        if not 0 < report.num_examples <= bound:
            raise ReplyRejected(
                "weight",
                f"num-examples {report.num_examples} outside 1..{bound}, the {what} frames "
                f"site {info.site_name!r} declared before round 1",
            )
