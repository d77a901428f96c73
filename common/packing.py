"""Every array of a message in one Flower ``Array`` on the wire: few objects, few requests.

Flower 1.42 moves a message as a tree of objects, one HTTP request per object and per hop:
the message, its RecordDict, each record, each ``Array`` and each 5 MiB chunk of an array. A
SmolVLA train message holds one array per trainable tensor plus the normalization statistics
(47 + 28 arrays, ~100 objects at the tiny preset; ~650 at real size), and a reply as many: each
hop (ServerApp -> SuperLink -> SuperNode -> site worker and back) paid ~100 requests for a
400 KB message, seconds per round through the SuperLink's SQLite state, and on a 40 ms link one
round trip per two objects (Flower pulls two at a time).

:func:`pack` puts the bytes of every array of every ``ArrayRecord`` into one ``Array`` (one
object per 5 MiB chunk) and describes them in one ``ConfigRecord``; config and metric records
travel as they are. :func:`unpack` restores the content exactly (record order, array order,
dtype, shape, stype and bytes), so signatures (:mod:`common.signing`) and the codec's digests
(:mod:`common.codec`) are computed and checked on the content as zk0 built it: the packing is a
transport detail, done last before Flower serializes and undone first after it inflates, on the
ServerApp in :func:`superlink.exchange.exchange` and on the site by :func:`packing_mod`, the
ClientApp's outermost mod. What a site sends is input: a malformed layout
raises :class:`PackingError` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

PACKED = "zk0-packed"  # ArrayRecord with one Array: every array's bytes, one after the other
LAYOUT = "zk0-packed-layout"  # ConfigRecord: where each array is in it
BYTES = "bytes"
STYPE = "zk0.packed"
FORMAT = 1


class PackingError(ValueError):
    """A packed message whose layout does not describe its bytes."""


def pack(content: RecordDict, memo: dict | None = None) -> RecordDict:
    """``content`` with all its arrays in one; unchanged if it holds fewer than two arrays.

    ``memo`` (a dict kept across calls) packs the same array records once: the messages of one
    broadcast share the global weights, and each copy of them would cost the payload's size in
    memory (Flower sends identical objects once anyway).
    """
    if PACKED in content or LAYOUT in content:
        raise PackingError(f"record keys {PACKED!r} and {LAYOUT!r} are reserved for packing")
    array_keys = [k for k, r in content.items() if isinstance(r, ArrayRecord)]
    if sum(len(content[k]) for k in array_keys) < 2:
        return content
    identity = tuple((k, id(content[k])) for k in array_keys)
    if memo is not None and identity in memo:
        record, entries = memo[identity]
    else:
        entries = []
        parts: list[bytes] = []
        offset = 0
        for key in array_keys:
            for name, array in content[key].items():
                size = len(array.data)
                entries.append([key, name, array.dtype, list(array.shape), array.stype, offset,
                                size])
                parts.append(array.data)
                offset += size
        record = ArrayRecord({BYTES: Array(dtype="uint8", shape=(offset,), stype=STYPE,
                                           data=b"".join(parts))})
        if memo is not None:
            memo[identity] = (record, entries)
    packed = RecordDict({k: r for k, r in content.items() if not isinstance(r, ArrayRecord)})
    packed[PACKED] = record
    packed[LAYOUT] = ConfigRecord({
        "format": FORMAT,
        "order": json.dumps(list(content.keys())),
        "array-records": json.dumps(array_keys),
        "arrays": json.dumps(entries),
    })
    return packed


def _json(layout: ConfigRecord, key: str) -> Any:
    value = layout.get(key)
    if not isinstance(value, str):
        raise PackingError(f"packed layout: {key!r} missing or not a string")
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise PackingError(f"packed layout: {key!r} is not JSON ({err})") from None


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PackingError(f"packed layout: {what} must be a list of strings")
    if len(set(value)) != len(value):
        raise PackingError(f"packed layout: {what} repeats a name")
    return value


def _entry(raw: Any, index: int, expected_offset: int) -> tuple[str, str, str, tuple, str, int]:
    where = f"packed layout: array {index}"
    if not isinstance(raw, list) or len(raw) != 7:
        raise PackingError(f"{where}: expected [record, name, dtype, shape, stype, offset, size]")
    key, name, dtype, shape, stype, offset, size = raw
    if not all(isinstance(v, str) for v in (key, name, dtype, stype)):
        raise PackingError(f"{where}: record, name, dtype and stype must be strings")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise PackingError(f"{where} ({key}/{name}): shape must be a list of sizes >= 0")
    for label, v in (("offset", offset), ("size", size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise PackingError(f"{where} ({key}/{name}): {label} must be an integer >= 0")
    if offset != expected_offset:
        raise PackingError(f"{where} ({key}/{name}): starts at byte {offset}, expected "
                           f"{expected_offset} (arrays follow each other)")
    return key, name, dtype, tuple(shape), stype, size


def unpack(content: RecordDict) -> RecordDict:
    """The content :func:`pack` was given (unpacked content passes through unchanged)."""
    if PACKED not in content and LAYOUT not in content:
        return content
    record, layout = content.get(PACKED), content.get(LAYOUT)
    if not isinstance(record, ArrayRecord) or not isinstance(layout, ConfigRecord):
        raise PackingError(f"a packed message needs an ArrayRecord {PACKED!r} and a "
                           f"ConfigRecord {LAYOUT!r}")
    if layout.get("format") != FORMAT:
        raise PackingError(f"packed layout format {layout.get('format')!r}, expected {FORMAT}")
    if list(record.keys()) != [BYTES]:
        raise PackingError(f"{PACKED!r} must hold exactly one array {BYTES!r}")
    data = record[BYTES].data
    order = _str_list(_json(layout, "order"), "order")
    array_keys = _str_list(_json(layout, "array-records"), "array-records")
    raw = _json(layout, "arrays")
    if not isinstance(raw, list):
        raise PackingError("packed layout: 'arrays' must be a list")
    if not set(array_keys) <= set(order):
        raise PackingError("packed layout: an array record is not in the record order")
    carried = [k for k in content if k not in (PACKED, LAYOUT)]
    if sorted(carried) != sorted(k for k in order if k not in array_keys):
        raise PackingError(f"packed message carries records {sorted(carried)}, its layout "
                           f"names {sorted(k for k in order if k not in array_keys)}")
    arrays: dict[str, ArrayRecord] = {k: ArrayRecord() for k in array_keys}
    offset = 0
    for index, item in enumerate(raw):
        key, name, dtype, shape, stype, size = _entry(item, index, offset)
        if key not in arrays:
            raise PackingError(f"packed layout: array {index} ({name}) is in record {key!r}, "
                               "which is not an array record")
        if name in arrays[key]:
            raise PackingError(f"packed layout: array {key}/{name} appears twice")
        if offset + size > len(data):
            raise PackingError(f"packed layout: array {key}/{name} ends at byte "
                               f"{offset + size}, the packed bytes have {len(data)}")
        arrays[key][name] = Array(dtype=dtype, shape=shape, stype=stype,
                                  data=data[offset:offset + size])
        offset += size
    if offset != len(data):
        raise PackingError(f"packed bytes: {len(data)}, the layout describes {offset}")
    return RecordDict({k: arrays[k] if k in arrays else content[k] for k in order})


def packing_mod(msg: Message, context: Context,
                call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower ClientApp mod, outermost: unpack the instruction, pack the reply."""
    msg.content = unpack(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack(reply.content)
    return reply
