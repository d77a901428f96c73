"""Bounded reply uploads (superlink.reply_uploads): no site's upload holds the others' replies.

The pulls are driven over real Flower messages, split into their real objects (Flower's own
deflate, the bytes the SuperLink stores), which a stand-in for the SuperLink's object store
hands out as a site's upload would deliver them; time is a fake clock. The real transport (a
SuperLink, a site revoked and one killed mid-upload) is tests/test_e2e_upload_faults.py. The
last test pins the Flower internals this module relies on to the installed Flower.
"""

from __future__ import annotations

import hashlib
import inspect

import flwr
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
    iterate_object_tree,
)
from flwr.superlink.grid.http_grid import HttpGrid

from harness.inprocess_grid import _act_as_serverapp
from superlink import reply_uploads
from superlink.reply_uploads import (
    MISSES_PER_POLL,
    ArrivedReply,
    BoundedUploads,
    ObjectGone,
    inflate_message,
)

STALL = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """What the SuperLink holds: reply messages (handed out once) and their objects, each
    available once the site's upload has delivered it."""

    def __init__(self) -> None:
        self.messages: dict[str, ArrivedReply] = {}  # by instruction id
        self.objects: dict[str, bytes] = {}  # every object of every reply
        self.delivered: set[str] = set()  # objects uploaded so far
        self.gone: set[str] = set()
        self.confirmed: list[str] = []
        self.pulls = 0

    def add(self, instruction: str, reply: Message) -> list[str]:
        """The reply message arrives (its objects not yet); its object ids in upload order."""
        objects = get_all_nested_objects(reply)
        self.objects.update({oid: obj.deflate() for oid, obj in objects.items()})
        order = [t.object_id for t in iterate_object_tree(get_object_tree(reply))]
        self.messages[instruction] = ArrivedReply(reply.object_id, instruction, tuple(order))
        return order

    def pull_messages(self, message_ids: list[str]) -> list[ArrivedReply]:
        return [self.messages.pop(m) for m in message_ids if m in self.messages]

    def pull_object(self, object_id: str) -> bytes | None:
        self.pulls += 1
        if object_id in self.gone:
            raise ObjectGone(f"object {object_id} not found")
        return self.objects[object_id] if object_id in self.delivered else None

    def confirm(self, message_id: str) -> None:
        self.confirmed.append(message_id)

    def inflate(self, message_id: str, contents: dict[str, bytes]) -> Message:
        return inflate_message(message_id, contents)


def _reply(seed: int, arrays: int = 3) -> tuple[Message, Message]:
    _act_as_serverapp(1)
    instruction = Message(RecordDict(), dst_node_id=10 + seed, message_type="train")
    rng = np.random.default_rng(seed)
    content = RecordDict({
        "arrays": ArrayRecord({f"w{i}": Array(rng.standard_normal(50).astype(np.float32))
                               for i in range(arrays)}),
        "metrics": ConfigRecord({"site": f"s{seed}"}),
    })
    return instruction, Message(content, reply_to=instruction)


def _same(a: Message, b: Message) -> None:
    assert a.object_id == b.object_id
    for name, array in a.content["arrays"].items():
        np.testing.assert_array_equal(array.numpy(), b.content["arrays"][name].numpy())


def test_a_stalled_upload_fails_its_site_alone_and_the_others_arrive_on_time():
    store, clock = Store(), Clock()
    puller = BoundedUploads(store, STALL, clock)
    (_, whole), (_, stalled), (_, slow) = (_reply(i) for i in range(3))
    store.delivered.update(store.add("m-whole", whole))
    half = store.add("m-stalled", stalled)
    store.delivered.update(half[: len(half) // 2])  # the site was cut off mid-upload
    slow_order = store.add("m-slow", slow)

    first = puller.pull(["m-whole", "m-stalled", "m-slow"])
    [got] = first.replies
    _same(got, whole)
    assert first.failed == [] and set(puller.uploads) == {"m-stalled", "m-slow"}

    # the slow site delivers one part every 0.9 x the stall timeout, in another order than the
    # SuperLink lists them (as a real SuperLink does): never given up
    for oid in reversed(slow_order):
        clock.now += 0.9 * STALL
        store.delivered.add(oid)
        step = puller.pull(["m-stalled", "m-slow"])
        if step.failed:
            break
    assert [f.reply_to for f in step.failed] == ["m-stalled"]
    [failure] = step.failed
    assert f"{len(half) // 2}/{len(half)} parts" in failure.reason
    assert "upload-stall-timeout=30s" in failure.reason
    assert stalled.object_id in store.confirmed  # the SuperLink may free what it holds
    while "m-slow" in puller.uploads:
        clock.now += 0.9 * STALL
        store.delivered.update(slow_order)
        step = puller.pull(["m-slow"])
    [done] = step.replies
    _same(done, slow)
    assert puller.uploads == {}


def test_a_missing_object_an_unformed_message_and_the_deadline_each_fail_one_site():
    store, clock = Store(), Clock()
    puller = BoundedUploads(store, STALL, clock)
    (_, gone), (_, garbage), (_, late) = (_reply(i) for i in range(3))
    gone_order = store.add("m-gone", gone)
    store.gone.add(gone_order[0])
    garbage_order = store.add("m-garbage", garbage)
    store.delivered.update(garbage_order)
    store.objects[garbage_order[0]] = b"not a flower object"
    late_order = store.add("m-late", late)
    store.delivered.update(late_order[:1])

    step = puller.pull(["m-gone", "m-garbage", "m-late"])
    assert step.replies == []
    reasons = {f.reply_to: f.reason for f in step.failed}
    assert set(reasons) == {"m-gone", "m-garbage"}
    assert "does not have part of the reply" in reasons["m-gone"]
    assert "do not form a message" in reasons["m-garbage"]
    [abandoned] = puller.abandon("the round is over")
    assert abandoned.reply_to == "m-late" and f"1/{len(late_order)} parts" in abandoned.reason
    assert set(store.confirmed) == {gone.object_id, late.object_id, garbage.object_id}


def test_a_stalled_upload_costs_a_bounded_number_of_requests_and_needs_a_full_sweep():
    store, clock = Store(), Clock()
    puller = BoundedUploads(store, STALL, clock)
    _, reply = _reply(0, arrays=40)
    order = store.add("m", reply)
    assert len(order) > 2 * MISSES_PER_POLL + 5
    store.delivered.update(order[-5:])  # the site pushed a few parts, listed last
    polls = []
    while not polls or "m" in puller.uploads:
        before = store.pulls
        step = puller.pull(["m"])
        polls.append(store.pulls - before)
        clock.now += STALL  # each poll far apart: only a complete sweep may fail the upload
    assert max(polls) <= MISSES_PER_POLL + 5
    [failure] = step.failed
    assert f"5/{len(order)} parts" in failure.reason
    # the upload was given up only after every missing part was found missing after the last
    # new part came: two sweeps (the first found the five parts)
    assert sum(polls) == len(order) + (len(order) - 5)


def test_the_stall_timeout_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        BoundedUploads(Store(), 0.0)


#: SHA-256 of ``inspect.getsource(HttpGrid.pull_messages)`` in flwr 1.42.0, whose object pulls
#: :class:`superlink.reply_uploads.RuntimeObjects` re-does without the unbounded wait.
PULL_MESSAGES_SHA256 = "67a5266a5a2ed51557437a15ef4c8844f46576bc5bb6b0753d2a2f6230a3aa83"


def test_the_flower_internals_used_are_those_of_the_installed_flower():
    """``reply_uploads`` re-does what ``HttpGrid.pull_messages`` does, with the Flower
    internals it uses. If Flower changes that method or those names (an upgrade), this fails:
    read the new ``pull_messages`` and check :class:`RuntimeObjects` against it, then update
    the pin."""
    assert flwr.__version__ == "1.42.0"
    source = inspect.getsource(HttpGrid.pull_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == PULL_MESSAGES_SHA256, (
        "HttpGrid.pull_messages changed: re-check superlink/reply_uploads.py:RuntimeObjects")
    for name in ("PullMessages", "PullObject", "ConfirmMessageReceived"):
        assert name in source
    assert isinstance(inspect.getattr_static(HttpGrid, "_runtime_client"), property)
    grid = HttpGrid(token="t")
    assert grid.node.node_id == 1  # the SuperLink's own node, as the runtime API expects
    params = inspect.signature(reply_uploads.make_pull_object_fn_protobuf).parameters
    assert list(params) == ["pull_object_protobuf", "node", "run_id"]
