"""End-to-end signatures (common.signing, supernode.authenticity, superlink.authenticity) on
real Flower messages and records, without a federation around them: what is signed survives
Flower's wire format, and every change to what was signed is refused with its reason."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from certs import ensure_federation_certs
from certs.keys import make_site_key
from common import codec, signing
from common.protocol import ARRAYS, CODEC, CONFIG, METRICS, SIGNATURE, SITE, SiteReport
from harness.inprocess_grid import server_context
from superlink.authenticity import FederationGuard, GuardSetupError
from superlink.strategy.replies import ReplyRejected
from supernode import authenticity as site_side


def _content() -> RecordDict:
    payload = codec.encode({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "float16")
    return RecordDict({
        ARRAYS: payload.arrays,
        CODEC: payload.meta,
        CONFIG: ConfigRecord({"server-round": 3, "proximal-mu": 0.0, "evaluate": True,
                              "fingerprint": "abc", "raw": b"\x00\x01", "names": ["a", "b"]}),
        METRICS: SiteReport(num_examples=30, train_loss=0.25).to_record(),
        "moments": ArrayRecord({"m": codec.to_array(np.ones(3, dtype=np.float64))}),
    })


def _statement(content: RecordDict, **over) -> signing.Statement:
    values = dict(direction=signing.REPLY, kind="train", run_id=7, server_round=3, node_id=11,
                  site="lab-a", reply_to="m1", content=signing.content_digest(content))
    values.update(over)
    return signing.Statement(**values)


def test_signature_survives_flowers_wire_format_and_binds_every_record():
    key = ec.generate_private_key(ec.SECP384R1())
    content = _content()
    signing.attach(content, _statement(content), key)
    wire = recorddict_from_proto(recorddict_to_proto(content))  # what the other end gets
    signing.verify(wire, _statement(wire), key.public_key())

    def refused(mutate) -> signing.SignatureRejected:
        copy = recorddict_from_proto(recorddict_to_proto(content))
        mutate(copy)
        with pytest.raises(signing.SignatureRejected) as info:
            signing.verify(copy, _statement(copy), key.public_key())
        return info.value

    # a metric, a config value, the codec's digest list, a small array: all bound
    def more_examples(c):
        c[METRICS] = MetricRecord({**c[METRICS], "num-examples": 3000})

    def other_mu(c):
        c[CONFIG] = ConfigRecord({**c[CONFIG], "proximal-mu": 1.0})

    def other_digests(c):
        c[CODEC] = ConfigRecord({**c[CODEC], "digests": ["0" * 64]})

    def other_moments(c):
        c["moments"] = ArrayRecord({"m": codec.to_array(np.zeros(3, dtype=np.float64))})

    def no_signature(c):
        del c[SIGNATURE]

    for mutate in (more_examples, other_mu, other_digests, other_moments):
        assert refused(mutate).kind == "signature"
    assert "unsigned" in str(refused(no_signature))

    # the codec payload's bytes are bound through its digest list, checked before decoding
    tampered = recorddict_from_proto(recorddict_to_proto(content))
    array = tampered[ARRAYS]["w"]
    data = bytearray(array.data)
    data[-1] ^= 0xFF
    tampered[ARRAYS]["w"] = type(array)(dtype=array.dtype, shape=array.shape,
                                        stype=array.stype, data=bytes(data))
    signing.verify(tampered, _statement(tampered), key.public_key())
    with pytest.raises(codec.PayloadIntegrityError, match="SHA-256"):
        codec.verify(codec.from_content(tampered, ARRAYS, CODEC))


def test_refusals_name_replay_identity_and_wrong_key():
    key = ec.generate_private_key(ec.SECP384R1())
    content = _content()
    signing.attach(content, _statement(content), key)
    cases = {
        "replay": _statement(content, server_round=4),
        "identity": _statement(content, site="lab-b"),
    }
    for kind, expected in cases.items():
        with pytest.raises(signing.SignatureRejected) as info:
            signing.verify(content, expected, key.public_key())
        assert info.value.kind == kind, info.value
    other_run = _statement(content, run_id=8)
    with pytest.raises(signing.SignatureRejected, match=r"run 7 round 3.*run 8 round 3"):
        signing.verify(content, other_run, key.public_key())
    # same claims, other instruction (a reply moved to another message): the signature fails
    with pytest.raises(signing.SignatureRejected, match="does not verify") as info:
        signing.verify(content, _statement(content, reply_to="m2"), key.public_key())
    assert info.value.kind == "signature"
    intruder = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(signing.SignatureRejected, match="does not verify"):
        signing.verify(content, _statement(content), intruder.public_key())


def test_keys_load_from_flower_and_zk0_files_and_exposed_keys_are_refused(tmp_path: Path):
    fed = ensure_federation_certs(tmp_path / "certs", sites=["lab-a"])
    assert stat.S_IMODE(fed.coordinator_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(fed.out_dir.stat().st_mode) == 0o700
    coordinator = signing.load_private_key(fed.coordinator_key)
    assert signing.load_public_key(fed.coordinator_pub).public_numbers() == \
        coordinator.public_key().public_numbers()
    site = signing.load_private_key(fed.site_keys["lab-a"][0])  # OpenSSH, as Flower reads it
    assert signing.load_public_key(fed.site_keys["lab-a"][1]).public_numbers() == \
        site.public_key().public_numbers()
    # kept on a rerun, byte for byte (sites keep trusting the same coordinator.pub)
    before = fed.coordinator_pub.read_bytes()
    again = ensure_federation_certs(tmp_path / "certs", sites=["lab-a"])
    assert again.coordinator_pub.read_bytes() == before
    assert again.actions[again.coordinator_key] == "kept"

    os.chmod(fed.site_keys["lab-a"][0], 0o644)
    with pytest.raises(signing.KeyFileError, match="mode 0644, expected 0600"):
        signing.load_private_key(fed.site_keys["lab-a"][0])
    with pytest.raises(signing.KeyFileError, match="not found"):
        signing.load_private_key(tmp_path / "nope.key")
    with pytest.raises(signing.KeyFileError, match="PEM or OpenSSH public key"):
        signing.parse_public_key(b"ssh-rsa AAAA")


def _site_context(tmp_path: Path, node_id: int = 11, run_id: int = 7) -> Context:
    fed = ensure_federation_certs(tmp_path / "certs", sites=["lab-a"])
    return Context(run_id=run_id, node_id=node_id, state=RecordDict(), run_config={},
                   node_config={"site-name": "lab-a", "dataset-root": "/data/lab-a",
                                "site-key": str(fed.site_keys["lab-a"][0]),
                                "coordinator-pubkey": str(fed.coordinator_pub),
                                "state-dir": str(tmp_path / f"state-{node_id}")})


def _server_guard(tmp_path: Path, run_id: int = 7) -> FederationGuard:
    ctx = server_context({}, run_id)
    ctx.node_config["coordinator-key"] = str(tmp_path / "certs" / "coordinator.key")
    return FederationGuard.for_run(ctx)


def _instruction(guard: FederationGuard, run_id: int = 7) -> Message:
    from harness.inprocess_grid import _act_as_serverapp

    _act_as_serverapp(run_id)
    msg = Message(_content(), dst_node_id=11, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"
    guard.sign_instructions([msg])
    return msg


def test_site_refuses_instructions_not_signed_by_the_coordinator_for_its_run(tmp_path: Path):
    ctx = _site_context(tmp_path)
    guard = _server_guard(tmp_path)
    calls: list[str] = []

    def handler(msg: Message, context: Context) -> Message:
        calls.append(msg.metadata.message_type)
        content = RecordDict({METRICS: SiteReport(num_examples=5).to_record(),
                              SITE: ConfigRecord({"site-name": "lab-a"})})
        return Message(content, reply_to=msg)

    reply = site_side.authenticity_mod(_instruction(guard), ctx, handler)
    assert calls == ["train"] and SIGNATURE in reply.content.config_records

    altered = _instruction(guard)
    altered.content[CONFIG] = ConfigRecord({**altered.content[CONFIG], "proximal-mu": 9.0})
    with pytest.raises(site_side.InstructionRejected, match=r"\(signature\)"):
        site_side.authenticity_mod(altered, ctx, handler)
    other_run = _instruction(guard)
    with pytest.raises(site_side.InstructionRejected, match=r"\(replay\).*run 7.*run 8"):
        site_side.authenticity_mod(other_run, _site_context(tmp_path, run_id=8), handler)
    forged = _instruction(guard)
    signing.attach(forged.content, signing.Statement(
        signing.INSTRUCTION, "train", 7, 3, 11, "", "", signing.content_digest(forged.content),
        federation="7", sequence=guard.sequence.next()),
        ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(site_side.InstructionRejected, match="does not verify"):
        site_side.authenticity_mod(forged, ctx, handler)
    assert calls == ["train"]  # no refused instruction reached the handler

    missing = Context(run_id=7, node_id=11, state=RecordDict(), run_config={},
                      node_config={"site-name": "lab-a", "dataset-root": "/d"})
    with pytest.raises(site_side.InstructionRejected, match="'site-key', 'coordinator-pubkey'"):
        site_side.authenticity_mod(_instruction(guard), missing, handler)


def test_server_needs_its_key_and_refuses_nodes_without_a_usable_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("ZK0_COORDINATOR_KEY", raising=False)
    with pytest.raises(GuardSetupError, match="ZK0_COORDINATOR_KEY"):
        FederationGuard.for_run(Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                                        run_config={}))
    _site_context(tmp_path)
    guard = _server_guard(tmp_path)
    from flwr.proto.node_pb2 import NodeInfo

    a_key = make_site_key(tmp_path / "k", "a")[1].read_bytes()
    b_key = make_site_key(tmp_path / "k", "b")[1].read_bytes()
    pem = {k: signing.public_pem(signing.parse_public_key(v)) for k, v in
           {"a": a_key, "b": b_key}.items()}

    class Nodes:
        def get_nodes(self):
            return [NodeInfo(node_id=1, name="lab-a", public_key=pem["a"]),
                    NodeInfo(node_id=2, name="", public_key=pem["b"]),
                    NodeInfo(node_id=3, name="lab-c", public_key=pem["a"]),
                    NodeInfo(node_id=4, name="lab-c", public_key=pem["b"]),
                    NodeInfo(node_id=5, name="lab-e", public_key=b"junk")]

    guard.refresh(Nodes())  # type: ignore[arg-type]
    assert guard.identity(1).name == "lab-a"
    reasons = {}
    for node in (2, 3, 5, 9):
        with pytest.raises(ReplyRejected) as info:
            guard.identity(node)
        assert info.value.kind == "identity"
        reasons[node] = str(info.value)
    assert "without a site name" in reasons[2]
    assert "several online nodes [3, 4]" in reasons[3]
    assert "not a PEM or OpenSSH public key" in reasons[5]
    assert "not a registered, online node" in reasons[9]
