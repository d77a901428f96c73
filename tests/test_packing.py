"""One array on the wire per message (common/packing.py): exact round trips, few objects, and a
malformed layout refused with what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common import codec, signing
from common.packing import LAYOUT, PACKED, PackingError, pack, packing_mod, unpack
from harness.inprocess_grid import server_identity


def _content() -> RecordDict:
    rng = np.random.default_rng(0)
    weights = {f"layer{i}.weight": rng.standard_normal((16, 8)).astype(np.float32)
               for i in range(30)}
    payload = codec.encode(weights, "float16")
    return RecordDict({
        "config": ConfigRecord({"server-round": 3, "s": "x"}),
        "arrays": payload.arrays,
        "codec": payload.meta,
        "empty": ArrayRecord(),
        "stats": ArrayRecord({"mean": Array(np.arange(6, dtype=np.float64)),
                              "count": Array(np.array([7], dtype=np.int64))}),
        "metrics": MetricRecord({"loss": 0.5}),
    })


def _same(a: RecordDict, b: RecordDict) -> None:
    assert list(a.keys()) == list(b.keys())
    for key, record in a.items():
        other = b[key]
        assert type(record) is type(other), key
        if isinstance(record, ArrayRecord):
            assert list(record.keys()) == list(other.keys()), key
            for name, array in record.items():
                got = other[name]
                assert (got.dtype, got.shape, got.stype, got.data) == (
                    array.dtype, array.shape, array.stype, array.data), f"{key}/{name}"
        else:
            assert dict(record) == dict(other), key


def test_round_trip_is_exact_and_digests_and_codec_still_verify() -> None:
    content = _content()
    before = signing.content_digest(content)
    packed = pack(content)
    assert set(packed.keys()) == {"config", "codec", "metrics", PACKED, LAYOUT}
    back = unpack(packed)
    _same(content, back)
    assert signing.content_digest(back) == before
    codec.decode(codec.from_content(back, "arrays", "codec"))  # every digest checks out


def test_a_message_of_many_arrays_becomes_a_few_objects() -> None:
    content = _content()
    with server_identity():
        many = len(get_all_nested_objects(Message(content, dst_node_id=1,
                                                  message_type="train")))
        few = len(get_all_nested_objects(Message(pack(content), dst_node_id=1,
                                                 message_type="train")))
    assert many > 60 and few == 9, (many, few)  # message, dict, 5 records, array, chunk


def test_one_broadcast_packs_its_shared_weights_once() -> None:
    shared = _content()
    a = RecordDict({**shared, "config": ConfigRecord({"to": 1})})
    b = RecordDict({**shared, "config": ConfigRecord({"to": 2})})
    memo: dict = {}
    pa, pb = pack(a, memo), pack(b, memo)
    assert pa[PACKED] is pb[PACKED] and len(memo) == 1
    _same(unpack(pb), b)


def test_fewer_than_two_arrays_and_unpacked_content_pass_through() -> None:
    one = RecordDict({"a": ArrayRecord({"x": Array(np.zeros(3, np.float32))}),
                      "c": ConfigRecord({"k": 1})})
    assert pack(one) is one
    assert unpack(one) is one


def _tampered(change) -> RecordDict:
    packed = pack(_content())
    layout = dict(packed[LAYOUT])
    change(layout, packed)
    packed[LAYOUT] = ConfigRecord(layout)
    return packed


def _arrays(layout: dict, edit) -> None:
    entries = json.loads(layout["arrays"])
    edit(entries)
    layout["arrays"] = json.dumps(entries)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda lay, p: lay.__setitem__("format", 2), "format 2"),
    (lambda lay, p: lay.__setitem__("arrays", "not json"), "not JSON"),
    (lambda lay, p: lay.__setitem__("order", json.dumps([1, 2])), "list of strings"),
    (lambda lay, p: _arrays(lay, lambda e: e.pop()), "the layout describes"),
    (lambda lay, p: _arrays(lay, lambda e: e[1].__setitem__(5, 0)), "expected"),
    (lambda lay, p: _arrays(lay, lambda e: e[0].__setitem__(6, 10**9)), "ends at byte"),
    (lambda lay, p: _arrays(lay, lambda e: e[0].__setitem__(3, [-1])), "shape"),
    (lambda lay, p: _arrays(lay, lambda e: e[0].__setitem__(0, "config")), "not an array rec"),
    (lambda lay, p: _arrays(lay, lambda e: e.__setitem__(1, e[0][:5] + e[1][5:])), "twice"),
    (lambda lay, p: p.__delitem__("metrics"), "carries records"),
])
def test_a_malformed_layout_is_refused_with_the_reason(change, expected) -> None:
    with pytest.raises(PackingError, match=expected):
        unpack(_tampered(change))


def test_the_mod_unpacks_the_instruction_and_packs_the_reply() -> None:
    content = _content()
    with server_identity():
        msg = Message(pack(content), dst_node_id=1, message_type="train")
    seen: list[RecordDict] = []

    def handler(m: Message, _context) -> Message:
        seen.append(m.content)
        return Message(RecordDict({"arrays": m.content["arrays"]}), reply_to=m)

    reply = packing_mod(msg, None, handler)  # type: ignore[arg-type]
    _same(seen[0], content)
    assert set(reply.content.keys()) == {PACKED, LAYOUT}
    _same(unpack(reply.content), RecordDict({"arrays": content["arrays"]}))
