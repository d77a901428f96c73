"""Protocol-level attacks by authenticated sites, in one federation: each is refused, recorded
against the attacker's *registered* site name with its reason, and the run goes on with the
honest sites.

Runs the unchanged ServerApp against the unchanged ClientApp in one process
(``harness.inprocess_grid``), where every node has its own registered key and every message is
signed and verified as in a deployment; the attackers are ClientApp wrappers that change their
honest reply and, where an attacker could, re-sign it with their own key. The transport-level
attacks (plain HTTP, other CA, unregistered or revoked keys, anonymous Control API) need the
real processes and proxy: tests/test_shielded_cluster.py.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Message, MetricRecord

from common import signing
from common.packing import unpack
from common.protocol import METRICS, SITE
from common.settings import NodeConfig, RunConfig
from harness.inprocess_grid import FIRST_NODE_ID, InProcessGrid, server_context
from supernode.authenticity import sign_reply
from supernode.client_app import app

ROUNDS = 2
# node name -> what it does (data: the four demo sites, reused)
SITES = {
    "site-0": "honest",
    "site-1": "honest",
    "site-2": "claims to be site-0 in its updates",
    "site-3": "signs its updates with a key that is not its registered one",
    "site-4": "reports 100x the training frames it declared",
    "site-5": "replays its round-1 update in round 2",
    "site-6": "claims to be site-1 when it joins (stage 0)",
}


def _resign(reply: Message, msg: Message, context, site: str | None = None,
            key: ec.EllipticCurvePrivateKey | None = None) -> Message:
    """What a dishonest site can do: sign its altered reply itself (its own key by default)."""
    node = NodeConfig.parse({**context.node_config,
                             "site-name": site or context.node_config["site-name"]}, "attacker")
    sign_reply(reply, msg, context, node,
               key or signing.load_private_key(context.node_config["site-key"]))
    return reply


def attackers():
    replayed: dict[str, Message] = {}
    stranger = ec.generate_private_key(ec.SECP384R1())

    def client(msg: Message, context) -> Message:
        name = context.node_config["site-name"]
        reply = app(msg, context)
        if reply.has_error() or name in ("site-0", "site-1"):
            return reply
        reply.content = unpack(reply.content)  # the content zk0 built, not its wire packing
        is_train = msg.metadata.message_type == "train"
        if name == "site-6" and msg.metadata.message_type == "query.stats":
            reply.content[SITE] = ConfigRecord({**reply.content[SITE], "site-name": "site-1"})
            return _resign(reply, msg, context, site="site-1")
        if name == "site-2" and is_train:
            reply.content[SITE] = ConfigRecord({"site-name": "site-0"})
            return _resign(reply, msg, context, site="site-0")
        if name == "site-3" and is_train:
            return _resign(reply, msg, context, key=stranger)
        if name == "site-4" and is_train:
            report = reply.content[METRICS]
            reply.content[METRICS] = MetricRecord(
                {**report, "num-examples": 100 * int(report["num-examples"])})
            return _resign(reply, msg, context)
        if name == "site-5" and is_train:
            if name not in replayed:
                replayed[name] = reply
                return reply
            old = replayed[name]  # the signed round-1 reply, delivered as the answer to round 2
            return Message(old.content, reply_to=msg)
        return reply

    return client


@pytest.fixture(scope="module")
def attacked_run(demo_root, tmp_path_factory):
    from superlink.federation import run_federation

    out = tmp_path_factory.mktemp("attacked")
    run = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": ROUNDS, "local-steps": 2,
        "batch-size": 4, "eval-samples": 4, "min-sites": 2,
        "output-dir": str(out / "runs"),
    }).to_flwr()
    nodes = [{"site-name": name, "dataset-root": str(demo_root / f"site-{i % 4}"),
              "torch-threads": 1} for i, name in enumerate(SITES)]
    grid = InProcessGrid(attackers(), nodes, run, run_id=77)
    try:
        run_dir = run_federation(grid, server_context(run, 77))
    finally:
        grid.close()
    rounds = {r: json.loads((run_dir / "rounds" / f"round_{r:03d}.json").read_text())
              for r in range(1, ROUNDS + 1)}
    return json.loads((run_dir / "run.json").read_text()), rounds


def _failures(entry) -> dict[str, tuple[str, str]]:
    return {f["site"]: (f["kind"], f["reason"]) for f in entry["failures"]}


def test_a_site_claiming_another_name_when_it_joins_is_left_out(attacked_run):
    meta, _ = attacked_run
    assert "site-6" not in meta["sites"]
    [reason] = meta["stats_failures"].values()
    assert reason.startswith("site-6: refused (identity)")
    assert "claims site 'site-1'" in reason and "registered as 'site-6'" in reason
    # sites are named, and keyed, by their registered identity
    assert set(meta["sites"]) == set(SITES) - {"site-6"}
    for name, site in meta["sites"].items():
        assert site["node_id"] == FIRST_NODE_ID + list(SITES).index(name)
        assert site["key"].startswith("SHA256:")


def test_each_attack_is_refused_and_recorded_per_site(attacked_run):
    _, rounds = attacked_run
    first, second = _failures(rounds[1]), _failures(rounds[2])
    assert set(first) == {"site-2", "site-3", "site-4"}
    assert set(second) == {"site-2", "site-3", "site-4", "site-5"}
    kind, reason = first["site-2"]
    assert kind == "identity" and "claims site 'site-0'" in reason
    kind, reason = first["site-3"]
    assert kind == "signature" and "does not verify with the sender's registered key" in reason
    kind, reason = first["site-4"]
    assert kind == "weight" and "num-examples" in reason and "declared before round 1" in reason
    kind, reason = second["site-5"]
    assert kind == "replay" and "signed for run 77 round 1, this is run 77 round 2" in reason


def test_the_run_goes_on_with_the_honest_sites(attacked_run):
    _, rounds = attacked_run
    assert set(rounds[1]["sites"]) == {"site-0", "site-1", "site-5"}  # site-5 honest in round 1
    assert set(rounds[2]["sites"]) == {"site-0", "site-1"}
    for entry in rounds.values():
        assert entry["aggregated"] is True
        for report in entry["sites"].values():
            assert report["num_examples"] <= 6 * 30  # never an inflated weight
