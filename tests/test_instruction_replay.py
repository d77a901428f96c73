"""Instructions are single-use (supernode.instruction_ledger): a captured instruction delivered
again, to its own site or to another one, is refused before anything acts on it; a resumed
federation's resend of a round passes; SCAFFOLD's state at the site is untouched by a replay.

The unit tests sign with the real coordinator guard and check with the real ClientApp mod;
the last test replays captured instructions in the middle of a real SCAFFOLD run (unchanged
ServerApp and ClientApp in one process, every message signed and verified as in a deployment).
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from certs import ensure_federation_certs
from common import codec
from common.protocol import ARRAYS, CODEC, CONFIG, METRICS, SIGNATURE, SiteReport
from common.settings import RunConfig
from harness.inprocess_grid import _act_as_serverapp, server_context
from superlink import authenticity as coordinator
from supernode import authenticity as site_side
from supernode.instruction_ledger import LEDGER_FILE

SITES = {11: "lab-a", 12: "lab-b"}


@pytest.fixture()
def fed(tmp_path: Path):
    return ensure_federation_certs(tmp_path / "certs", sites=list(SITES.values()))


def _site(fed, tmp_path: Path, node: int, run_id: int = 7) -> Context:
    name = SITES[node]
    return Context(run_id=run_id, node_id=node, state=RecordDict(), run_config={},
                   node_config={"site-name": name, "dataset-root": f"/data/{name}",
                                "site-key": str(fed.site_keys[name][0]),
                                "coordinator-pubkey": str(fed.coordinator_pub),
                                "state-dir": str(tmp_path / "state" / name)})


def _guard(fed, run_dir: Path, run_id: int = 7, federation: str = "7"):
    ctx = server_context({}, run_id)
    ctx.node_config["coordinator-key"] = str(fed.coordinator_key)
    return coordinator.FederationGuard.for_run(ctx, federation_id=federation, run_dir=run_dir)


def _round(guard, server_round: int, nodes=tuple(SITES)) -> dict[int, Message]:
    """One round's train messages, sharing one content as Flower's strategies do, signed."""
    _act_as_serverapp(guard.run_id)
    payload = codec.encode({"w": np.arange(6, dtype=np.float32)}, "float16")
    content = RecordDict({ARRAYS: payload.arrays, CODEC: payload.meta,
                          CONFIG: ConfigRecord({"server-round": server_round})})
    messages = [Message(content, dst_node_id=n, message_type="train") for n in nodes]
    guard.sign_instructions(messages)
    return {m.metadata.dst_node_id: m for m in messages}


class Handler:
    """The site's task: counts what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []  # (node, round)

    def __call__(self, msg: Message, context: Context) -> Message:
        self.seen.append((context.node_id, int(msg.content[CONFIG]["server-round"])))
        return Message(RecordDict({METRICS: SiteReport(num_examples=5).to_record()}),
                       reply_to=msg)


def _refused(msg: Message, ctx: Context, handler: Handler, match: str) -> str:
    with pytest.raises(site_side.InstructionRejected, match=match) as info:
        site_side.authenticity_mod(msg, ctx, handler)
    return str(info.value)


def test_each_instruction_is_signed_for_its_own_site_and_the_arrays_stay_one_object(
    fed, tmp_path
):
    guard = _guard(fed, tmp_path / "run")
    messages = _round(guard, 1)
    a, b = messages[11].content, messages[12].content
    assert a is not b and a[ARRAYS] is b[ARRAYS]  # Flower uploads the arrays once
    assert a[SIGNATURE]["node-id"] == 11 and b[SIGNATURE]["node-id"] == 12
    assert a[SIGNATURE]["sequence"] == b[SIGNATURE]["sequence"] > 0
    assert a[SIGNATURE]["federation"] == "7"
    # the number is written ahead, 0600, before the messages can leave
    path = tmp_path / "run" / coordinator.SEQUENCE_FILE
    assert json.loads(path.read_text())["last"] == a[SIGNATURE]["sequence"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _round(guard, 2)[11].content[SIGNATURE]["sequence"] > a[SIGNATURE]["sequence"]


def test_a_replayed_instruction_is_refused_by_its_site_and_by_every_other(
    fed, tmp_path, caplog
):
    guard = _guard(fed, tmp_path / "run")
    handler = Handler()
    site_a, site_b = _site(fed, tmp_path, 11), _site(fed, tmp_path, 12)
    first = _round(guard, 1)
    reply = site_side.authenticity_mod(first[11], site_a, handler)
    assert not reply.has_error() and handler.seen == [(11, 1)]

    caplog.set_level(logging.ERROR, logger="zk0.supernode")
    reason = _refused(first[11], site_a, handler, r"\(replay\)")
    assert "not newer than" in reason and "(train, round 1, run 7)" in reason
    assert any("instruction_refused" in r.getMessage() and "replay" in r.getMessage()
               for r in caplog.records), "no log line for the refused replay"
    # the same instruction at another site: signed for node 11, refused at node 12
    reason = _refused(first[11], site_b, handler, r"\(identity\)")
    assert "addressed to node 11, this is node 12" in reason
    # its own copy of the round is fine there, once
    site_side.authenticity_mod(first[12], site_b, handler)
    _refused(first[12], site_b, handler, r"\(replay\)")

    # an older instruction delivered after a newer one is refused too
    second, third = _round(guard, 2), _round(guard, 3)
    site_side.authenticity_mod(third[11], site_a, handler)
    _refused(second[11], site_a, handler, r"\(replay\).*\(train, round 2, run 7\) .* not newer "
                                          r"than .*\(train, round 3, run 7\)")
    assert handler.seen == [(11, 1), (12, 1), (11, 3)]

    ledger = tmp_path / "state" / "lab-a" / LEDGER_FILE
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
    entry = json.loads(ledger.read_text())["7"]["11"]
    assert (entry["run_id"], entry["round"], entry["kind"]) == (7, 3, "train")
    assert entry["sequence"] == third[11].content[SIGNATURE]["sequence"]


def test_a_resumed_federation_resends_its_round_but_a_captured_copy_stays_refused(
    fed, tmp_path, monkeypatch
):
    """Run 7 of federation "7" sent round 3 and died; run 8 resumes in the same folder and
    sends round 3 again: the site handles the resend (a new number), even with the host clock
    set back in between, and still refuses run 7's captured copy."""
    handler = Handler()
    run_dir = tmp_path / "run"
    interrupted = _round(_guard(fed, run_dir, run_id=7), 3)
    site_side.authenticity_mod(interrupted[11], _site(fed, tmp_path, 11, run_id=7), handler)

    monkeypatch.setattr(coordinator.time, "time_ns", lambda: 1_000)  # clock set back
    resumed = _round(_guard(fed, run_dir, run_id=8), 3)
    assert (resumed[11].content[SIGNATURE]["sequence"]
            > interrupted[11].content[SIGNATURE]["sequence"])
    site_side.authenticity_mod(resumed[11], _site(fed, tmp_path, 11, run_id=8), handler)
    assert handler.seen == [(11, 3), (11, 3)]

    _refused(interrupted[11], _site(fed, tmp_path, 11, run_id=7), handler, r"\(replay\)")
    _refused(resumed[11], _site(fed, tmp_path, 11, run_id=8), handler, r"\(replay\)")
    # another federation keeps its own numbers
    other = _round(_guard(fed, tmp_path / "other", run_id=9, federation="9"), 1)
    site_side.authenticity_mod(other[11], _site(fed, tmp_path, 11, run_id=9), handler)
    assert handler.seen[-1] == (11, 1)


def test_two_nodes_sharing_a_state_folder_keep_their_own_numbers(fed, tmp_path):
    handler = Handler()
    messages = _round(_guard(fed, tmp_path / "run"), 1)
    shared = {n: _site(fed, tmp_path, n) for n in SITES}
    for ctx in shared.values():
        ctx.node_config["state-dir"] = str(tmp_path / "one-box")
    for node, ctx in shared.items():
        site_side.authenticity_mod(messages[node], ctx, handler)
        _refused(messages[node], ctx, handler, r"\(replay\)")
    assert handler.seen == [(11, 1), (12, 1)]


def test_an_unreadable_ledger_or_sequence_refuses_with_the_file_named(fed, tmp_path):
    guard = _guard(fed, tmp_path / "run")
    handler = Handler()
    ledger = tmp_path / "state" / "lab-a" / LEDGER_FILE
    ledger.parent.mkdir(parents=True)
    ledger.write_text("{not json")
    reason = _refused(_round(guard, 1)[11], _site(fed, tmp_path, 11), handler, r"\(ledger\)")
    assert str(ledger) in reason and handler.seen == []
    (tmp_path / "run" / coordinator.SEQUENCE_FILE).write_text('{"last": "soon"}')
    with pytest.raises(coordinator.GuardSetupError, match=coordinator.SEQUENCE_FILE):
        _guard(fed, tmp_path / "run")


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_replayed_scaffold_instructions_leave_the_sites_state_untouched(demo_root, tmp_path):
    """In round 3 of a real SCAFFOLD run, before site-0 handles its round-3 message, site-0's
    captured round-1 instruction is delivered again to site-0 and to site-1: both refuse it,
    no file in either site's state changes, and round 3 builds on round 2's control variates
    at both sites. (Handled, the replay would drop site-0's pending c_i of round 2 and stage
    one of round 1, so its round 3 would start from zeros: ``control_base_round`` 0.)"""
    import torch

    from harness.inprocess_grid import InProcessGrid
    from superlink.federation import run_federation
    from supernode.client_app import app

    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}"),
              "torch-threads": 1, "state-dir": str(tmp_path / f"state-{i}")} for i in range(2)]
    run = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 3, "local-steps": 2, "batch-size": 4,
        "eval-samples": 4, "min-sites": 2, "eval-every": 3, "strategy": "scaffold",
        "trajectory-every": 0, "output-dir": str(tmp_path / "runs"),
    }).to_flwr()
    captured: dict[tuple[str, int], Message] = {}
    outcomes: list[tuple[str, str, bool]] = []
    contexts: dict[str, Context] = {}

    def client(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type != "train":
            return app(msg, context)
        name = context.node_config["site-name"]
        server_round = int(msg.content[CONFIG]["server-round"])
        captured[(name, server_round)] = msg
        if (name, server_round) == ("site-0", 3):
            replayed = captured[("site-0", 1)]
            for target in ("site-0", "site-1"):
                root = tmp_path / f"state-{target[-1]}"
                before = _files(root)
                try:
                    app(replayed, contexts[target])
                    refused = False
                except site_side.InstructionRejected as err:
                    refused = "(replay)" in str(err) or "(identity)" in str(err)
                outcomes.append((target, "unchanged" if _files(root) == before else "CHANGED",
                                 refused))
        return app(msg, context)

    grid = InProcessGrid(client, nodes, run, run_id=41)
    contexts.update({ctx.node_config["site-name"]: ctx for ctx in grid.contexts.values()})
    threads = torch.get_num_threads()
    try:
        run_dir = Path(run_federation(grid, server_context(run, 41)))
    finally:
        grid.close()
        torch.set_num_threads(threads)
    assert outcomes == [("site-0", "unchanged", True), ("site-1", "unchanged", True)]
    pending = tmp_path / "state-0" / "run-41" / "control-pending.npz"
    assert pending.is_file()  # round 3's c_i, staged from the base round 2 left
    third = json.loads((run_dir / "rounds" / "round_003.json").read_text())
    assert third["failures"] == []
    for report in third["sites"].values():
        assert report["control_base_round"] == 2
