"""Signed messages: every zk0 message is signed by its sender, end to end (ECDSA P-384, SHA-384).

Why: TLS ends at the labs' entry proxy, and Flower's node authentication signs only a timestamp
in a request header, so neither proves that a *reply* (its update, its metrics, the name it
claims) comes from the node it is attributed to, nor that a global model comes from the
coordinator. Here the sender signs a canonical statement that binds the message content to its
context:

* a site signs its reply with its node's EC key (the same key Flower authenticates the node
  with; the server verifies against the public key registered for that node);
* the coordinator signs every instruction (global model, stats query) with its own key, whose
  public half ships with the federation CA (``coordinator.pub`` next to ``ca.crt``).

The statement (:class:`Statement`) holds the run id, the round, the message type, the node id,
the site name the sender claims, the id of the instruction a reply answers, and a digest of the
content (:func:`content_digest`). A reply replayed from another round or run, moved to another
node, or altered in any record fails verification. An instruction is signed for one recipient
(its node id) and carries the federation id and the coordinator's instruction sequence number
(:class:`superlink.authenticity.InstructionSequence`), so a site can tell a new instruction from
a replayed one (:mod:`supernode.instruction_ledger`); an instruction moved to another site fails
verification there. Array payloads encoded by :mod:`common.codec` are covered through their
per-array SHA-256 digest list (which the receiver checks against the bytes before decoding), so
the large arrays are not hashed twice.

The record that carries a signature (:data:`common.protocol.SIGNATURE`) repeats the claimed
round, run id, node and site, so that a refusal can say *why* (replayed, other node, other
name); the signature itself is always verified over the statement the verifier expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.protocol import ARRAYS, CODEC, CONFIG, SIGNATURE

# v2: instructions are bound to their recipient node and carry a federation and sequence number
SCHEME = "zk0-ecdsa-p384-sha384-v2"
REPLY, INSTRUCTION = "reply", "instruction"
_HASH = hashes.SHA384
_NIST = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class SignatureRejected(ValueError):
    """A message's signature is missing, does not verify, or was made for another context.

    ``kind`` says which: ``"signature"`` (missing, malformed, other key, altered content),
    ``"replay"`` (signed for another round or run), ``"identity"`` (signed as another node or
    site name; an instruction addressed to another node).
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class KeyFileError(ValueError):
    """A signing or verifying key file is missing, unreadable, exposed or of the wrong type."""


# -- what is signed ----------------------------------------------------------------------------


def _value(v: Any) -> list[Any]:
    """One record value as a type-tagged JSON value (bool before int: bool is an int)."""
    if isinstance(v, bool):
        return ["b", v]
    if isinstance(v, int):
        return ["i", str(v)]
    if isinstance(v, float):
        return ["f", v.hex()]
    if isinstance(v, str):
        return ["s", v]
    if isinstance(v, bytes):
        return ["y", v.hex()]
    if isinstance(v, list):
        return ["l", [_value(x) for x in v]]
    raise TypeError(f"cannot sign a record value of type {type(v).__name__}")


def _arrays(record: ArrayRecord, *, by_codec_digests: bool) -> list[Any]:
    if by_codec_digests:  # the bytes are covered by the codec's digest list, checked on arrival
        return ["codec", list(record.keys())]
    return [
        [name, a.dtype, list(a.shape), a.stype, hashlib.sha256(a.data).hexdigest()]
        for name, a in record.items()
    ]


def content_digest(content: RecordDict) -> str:
    """SHA-384 over a canonical form of every record except the signature itself.

    Config and metric records are taken value by value with their types; array records by
    (name, dtype, shape, SHA-256 of the bytes), except the codec payload (``ARRAYS`` next to a
    ``CODEC`` record with a digest list), which is taken by its array names: its bytes are
    bound through the digest list in the ``CODEC`` record, which the receiver checks against
    the bytes (:func:`common.codec.verify`) before it uses them.
    """
    codec_digests = CODEC in content.config_records and "digests" in content.config_records[CODEC]
    canon: list[Any] = []
    for key in sorted(content.keys()):
        if key == SIGNATURE:
            continue
        record = content[key]
        if isinstance(record, ArrayRecord):
            body = _arrays(record, by_codec_digests=codec_digests and key == ARRAYS)
            canon.append([key, "arrays", body])
        elif isinstance(record, ConfigRecord | MetricRecord):
            kind = "config" if isinstance(record, ConfigRecord) else "metrics"
            canon.append([key, kind, [[k, _value(record[k])] for k in sorted(record.keys())]])
        else:  # pragma: no cover - Flower has no other record type
            raise TypeError(f"cannot sign record {key!r} of type {type(record).__name__}")
    blob = json.dumps(canon, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha384(blob).hexdigest()


def instruction_round(content: RecordDict) -> int:
    """The round an instruction belongs to (its ``server-round``; 0 for the stats query)."""
    if CONFIG in content.config_records and "server-round" in content.config_records[CONFIG]:
        return int(content.config_records[CONFIG]["server-round"])
    return 0


@dataclass(frozen=True)
class Statement:
    """What a signature vouches for; :meth:`to_bytes` is the exact signed byte string."""

    direction: str  # REPLY (site -> server) or INSTRUCTION (coordinator -> sites)
    kind: str  # Flower message type: "train", "evaluate", "query.stats"
    run_id: int
    server_round: int
    node_id: int  # the replying node; for an instruction, the node it is addressed to
    site: str  # the site name the replying node claims; "" for an instruction
    reply_to: str  # id of the instruction a reply answers; "" for an instruction
    content: str  # content_digest of the message
    # Instructions only ("" and 0 in a reply): the federation (the first run's id, kept when a
    # run is resumed) and the coordinator's sequence number, increasing across the federation's
    # runs, by which a site refuses an instruction it has already handled or an older one.
    federation: str = ""
    sequence: int = 0

    @classmethod
    def instruction(
        cls, msg: Message, run_id: int, *, node_id: int, federation: str, sequence: int
    ) -> Statement:
        """What the coordinator signs for an instruction to ``node_id``, and that node expects:
        bound to the run, the round, the content, the recipient, the federation and the
        instruction's sequence number."""
        return cls(
            direction=INSTRUCTION,
            kind=msg.metadata.message_type,
            run_id=run_id,
            server_round=instruction_round(msg.content),
            node_id=node_id,
            site="",
            reply_to="",
            content=content_digest(msg.content),
            federation=federation,
            sequence=sequence,
        )

    def to_bytes(self) -> bytes:
        body = {"scheme": SCHEME, **asdict(self)}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# -- sign / verify -----------------------------------------------------------------------------


def sign(statement: Statement, key: ec.EllipticCurvePrivateKey) -> ConfigRecord:
    """The signature record for ``statement`` (also repeats its claims, for clear refusals)."""
    return ConfigRecord(
        {
            "scheme": SCHEME,
            "run-id": statement.run_id,
            "round": statement.server_round,
            "node-id": statement.node_id,
            "site": statement.site,
            "federation": statement.federation,
            "sequence": statement.sequence,
            "signature": key.sign(statement.to_bytes(), ec.ECDSA(_HASH())),
        }
    )


@dataclass(frozen=True)
class InstructionClaims:
    """The federation and sequence number an instruction's signature record claims: what the
    recipient builds its expected :class:`Statement` from (so :func:`verify` binds them)."""

    federation: str
    sequence: int


def instruction_claims(content: RecordDict) -> InstructionClaims:
    """Read (not yet verify) an instruction's claimed federation and sequence number."""
    record = content.config_records.get(SIGNATURE)
    if record is None:
        raise SignatureRejected("signature", "unsigned message (no signature record)")
    try:
        return InstructionClaims(str(record["federation"]), int(record["sequence"]))
    except (KeyError, TypeError, ValueError) as err:
        raise SignatureRejected("signature", f"malformed signature record: {err}") from None


def attach(content: RecordDict, statement: Statement, key: ec.EllipticCurvePrivateKey) -> None:
    """Sign ``statement`` and put the signature record into ``content``."""
    content[SIGNATURE] = sign(statement, key)


def verify(content: RecordDict, expected: Statement, key: ec.EllipticCurvePublicKey) -> None:
    """Raise :class:`SignatureRejected` unless ``content`` carries a valid signature by ``key``
    over ``expected`` (the statement the verifier builds from what *it* knows)."""
    record = content.config_records.get(SIGNATURE)
    if record is None:
        raise SignatureRejected("signature", "unsigned message (no signature record)")
    try:
        scheme = str(record["scheme"])
        claimed = (int(record["run-id"]), int(record["round"]),
                   int(record["node-id"]), str(record["site"]))
        signature = record["signature"]
    except (KeyError, TypeError, ValueError) as err:
        raise SignatureRejected("signature", f"malformed signature record: {err}") from None
    if scheme != SCHEME or not isinstance(signature, bytes):
        raise SignatureRejected("signature", f"unknown signature scheme {scheme!r}")
    run_id, server_round, node_id, site = claimed
    if run_id != expected.run_id or server_round != expected.server_round:
        raise SignatureRejected(
            "replay",
            f"signed for run {run_id} round {server_round}, this is run {expected.run_id} "
            f"round {expected.server_round} (a replayed message)",
        )
    if expected.direction == INSTRUCTION and node_id != expected.node_id:
        raise SignatureRejected(
            "identity",
            f"instruction addressed to node {node_id}, this is node {expected.node_id} (an "
            "instruction captured on its way to another site)",
        )
    if node_id != expected.node_id or site != expected.site:
        raise SignatureRejected(
            "identity",
            f"signed as node {node_id} site {site!r}, the sender is node {expected.node_id} "
            f"registered as {expected.site!r}",
        )
    try:
        key.verify(signature, expected.to_bytes(), ec.ECDSA(_HASH()))
    except InvalidSignature:
        raise SignatureRejected(
            "signature",
            "signature does not verify with the sender's registered key (signed by another key, "
            "or the content was altered after signing)",
        ) from None


# -- keys --------------------------------------------------------------------------------------


def _read_private(path: Path, what: str) -> bytes:
    """A private key file's bytes, refused unless it is a regular file only its owner can read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path}: file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{what} {path}: not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{what} {path}: mode {mode:04o}, expected 0600 (chmod 600 {path})")
    try:
        return path.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{what} {path}: cannot read ({err.strerror})") from None


def load_private_key(path: Path | str, what: str = "signing key") -> ec.EllipticCurvePrivateKey:
    """An unencrypted EC private key (OpenSSH, as Flower's node keys, or PEM), mode 0600."""
    path = Path(path)
    data = _read_private(path, what)
    loader = (serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data
              else serialization.load_pem_private_key)
    try:
        key = loader(data, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"{what} {path}: not an unencrypted OpenSSH or PEM private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _NIST):
        raise KeyFileError(f"{what} {path}: expected an EC key on a NIST curve (e.g. P-384)")
    return key


def parse_public_key(data: bytes, what: str = "public key") -> ec.EllipticCurvePublicKey:
    """An EC public key from PEM (SubjectPublicKeyInfo, as Flower stores registered keys) or an
    OpenSSH line (``<site>.pub``)."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = serialization.load_ssh_public_key(text)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{what}: not a PEM or OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST):
        raise KeyFileError(f"{what}: expected an EC key on a NIST curve (e.g. P-384)")
    return key


def load_public_key(path: Path | str, what: str = "public key") -> ec.EllipticCurvePublicKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path}: file not found") from None
    except OSError as err:
        raise KeyFileError(f"{what} {path}: cannot read ({err.strerror})") from None
    return parse_public_key(data, f"{what} {path}")


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo: the form Flower keeps for a registered node key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:<hex>`` of the key's DER SubjectPublicKeyInfo (for lists and logs; not secret)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(der).hexdigest()[:32]
