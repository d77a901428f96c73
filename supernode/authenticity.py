"""The site's half of end-to-end signing (see :mod:`common.signing`), as a Flower ClientApp mod.

Every message the site gets must carry the coordinator's signature over its content, this run,
its round and this node (checked against ``coordinator-pubkey``, the public key shipped with
the CA), and a sequence number above every instruction the site handled before
(:mod:`supernode.instruction_ledger`), before any of it is used; every reply the site sends is
signed with the node's own EC key (``site-key``, the key its SuperNode authenticates with, so
the server verifies it against the key registered for this node). Both are node-config paths
set by the site's launcher; the key material is read here, in the ClientApp process, and never
logged.

As a mod (``ClientApp(mods=[authenticity_mod])``) it wraps every handler, so no reply leaves
the site unsigned and no handler sees an unverified instruction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message

from common import signing
from common.logs import get_logger
from common.settings import NodeConfig
from supernode.instruction_ledger import (
    Handled,
    InstructionLedger,
    InstructionReplayed,
    LedgerUnreadable,
)

log = get_logger("zk0.supernode")


class InstructionRejected(RuntimeError):
    """An instruction that is not signed by the coordinator for this run: the site refuses it.

    Raised from the ClientApp, it becomes an error reply whose reason names the problem.
    """


@dataclass(frozen=True)
class SiteKeys:
    site: ec.EllipticCurvePrivateKey
    coordinator: ec.EllipticCurvePublicKey

    @classmethod
    def load(cls, node: NodeConfig) -> SiteKeys:
        missing = [k for k, v in (("site-key", node.site_key),
                                  ("coordinator-pubkey", node.coordinator_pubkey)) if not v]
        if missing:
            raise InstructionRejected(
                f"node config: {', '.join(repr(k) for k in missing)} not set; zk0 signs every "
                "reply with the site's key and checks the coordinator's signature on every "
                "instruction (`zk0 supernode` sets both)"
            )
        try:
            return cls(
                site=signing.load_private_key(node.site_key, "node config 'site-key'"),
                coordinator=signing.load_public_key(
                    node.coordinator_pubkey, "node config 'coordinator-pubkey'"
                ),
            )
        except signing.KeyFileError as err:
            raise InstructionRejected(str(err)) from None


def _refused(msg: Message, context: Context, kind: str, reason: str) -> InstructionRejected:
    """The error to raise for a refused instruction, after saying so in the site's log."""
    log.error("instruction_refused", kind=kind, message_type=msg.metadata.message_type,
              run_id=context.run_id, node_id=context.node_id, reason=reason)
    return InstructionRejected(f"instruction refused ({kind}): {reason}")


def check_instruction(
    msg: Message, context: Context, key: ec.EllipticCurvePublicKey
) -> signing.InstructionClaims:
    """Refuse an instruction unless the coordinator signed exactly this content, for this run
    and this node; return the federation and sequence number it was signed with."""
    try:
        claims = signing.instruction_claims(msg.content)
        expected = signing.Statement.instruction(
            msg, context.run_id, node_id=context.node_id, federation=claims.federation,
            sequence=claims.sequence)
        signing.verify(msg.content, expected, key)
    except signing.SignatureRejected as err:
        raise _refused(msg, context, err.kind, str(err)) from None
    return claims


def admit_once(msg: Message, context: Context, node: NodeConfig,
               claims: signing.InstructionClaims) -> None:
    """Record a verified instruction in the site's ledger, or refuse it as a replay."""
    handled = Handled(claims.sequence, context.run_id,
                      signing.instruction_round(msg.content), msg.metadata.message_type)
    try:
        InstructionLedger(node.state_root).admit(claims.federation, context.node_id, handled)
    except InstructionReplayed as err:
        raise _refused(msg, context, "replay", str(err)) from None
    except LedgerUnreadable as err:
        raise _refused(msg, context, "ledger", str(err)) from None


def sign_reply(reply: Message, msg: Message, context: Context, node: NodeConfig,
               key: ec.EllipticCurvePrivateKey) -> None:
    """Sign ``reply`` (the answer to ``msg``) as this node and site, for this run and round."""
    statement = signing.Statement(
        direction=signing.REPLY,
        kind=msg.metadata.message_type,
        run_id=context.run_id,
        server_round=signing.instruction_round(msg.content),
        node_id=context.node_id,
        site=node.site_name,
        reply_to=msg.metadata.message_id,
        content=signing.content_digest(reply.content),
    )
    signing.attach(reply.content, statement, key)


def authenticity_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower mod: verify the coordinator's signature, refuse a replay, run the handler, sign
    its reply."""
    node = NodeConfig.parse(context.node_config, "node config")
    keys = SiteKeys.load(node)
    claims = check_instruction(msg, context, keys.coordinator)
    admit_once(msg, context, node, claims)
    reply = call_next(msg, context)
    if not reply.has_error():
        sign_reply(reply, msg, context, node, keys.site)
    return reply
