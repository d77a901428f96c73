"""The ServerApp loop with faulty sites: a broken dataset and a tampered reply are recorded as
failures naming the site and the reason, and the round goes on with the healthy sites.

Runs the unchanged ServerApp (``superlink.federation``) against the unchanged ClientApp in one
process (``harness.inprocess_grid``): the transport is the only thing left out, and it is covered
by tests/test_e2e_federation.py.
"""

from __future__ import annotations

import json

import pytest
from flwr.app import Array

from common.protocol import ARRAYS
from common.settings import RunConfig
from harness.inprocess_grid import InProcessGrid, server_context


def _run(grid: InProcessGrid, run_config: dict, run_id: int):
    from superlink.federation import run_federation

    return run_federation(grid, server_context(run_config, run_id))


@pytest.fixture()
def run_config(tmp_path) -> dict:
    return RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 1, "local-steps": 2, "batch-size": 4,
        "eval-samples": 4, "min-sites": 2, "output-dir": str(tmp_path / "runs"),
    }).to_flwr()


def _nodes(demo_root, n=3):
    return [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}")}
            for i in range(n)]


def test_site_with_missing_dataset_is_left_out_with_its_reason_and_the_rest_go_on(
    demo_root, tmp_path, run_config
):
    from supernode.client_app import app

    nodes = [*_nodes(demo_root, 2), {"site-name": "lab-x", "dataset-root": str(tmp_path / "gone")}]
    run_dir = _run(InProcessGrid(app, nodes, run_config), run_config, run_id=11)

    meta = json.loads((run_dir / "run.json").read_text())
    assert set(meta["sites"]) == {"site-0", "site-1"}
    assert any("gone" in reason and "does not exist" in reason
               for reason in meta["stats_failures"].values())
    entry = json.loads((run_dir / "rounds" / "round_001.json").read_text())
    assert set(entry["sites"]) == {"site-0", "site-1"}
    assert entry["aggregated"] is True
    # a site that could not join at stage 0 is not asked to train (it would fail every round)
    assert entry["failures"] == []
    assert (run_dir / "checkpoints" / "000001" / "pretrained_model" / "model.safetensors").exists()


def test_tampered_reply_is_refused_by_digest(demo_root, run_config):
    from supernode.client_app import app

    def tampering_app(msg, context):
        from common.packing import unpack

        reply = app(msg, context)
        if reply.has_content():
            reply.content = unpack(reply.content)  # tamper with the content, not its packing
        if context.node_config["site-name"] == "site-1" and reply.has_content() and (
            ARRAYS in reply.content.array_records
        ):
            arrays = reply.content.array_records[ARRAYS]
            name = next(iter(arrays))
            a = arrays[name]
            data = bytearray(a.data)
            data[-2] ^= 0xFF
            arrays[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=bytes(data))
        return reply

    run_dir = _run(InProcessGrid(tampering_app, _nodes(demo_root), run_config), run_config, 12)
    entry = json.loads((run_dir / "rounds" / "round_001.json").read_text())
    assert set(entry["sites"]) == {"site-0", "site-2"}
    [failure] = entry["failures"]
    assert failure["site"] == "site-1" and failure["kind"] == "integrity"
    assert "SHA-256" in failure["reason"]


def test_bad_run_config_fails_before_any_site_is_contacted(demo_root, run_config):
    calls = []

    def counting_app(msg, context):
        calls.append(msg.metadata.message_type)
        raise AssertionError("no site should be contacted")

    bad = {**run_config, "local-steps": "many"}
    with pytest.raises(ValueError, match=r"key 'local-steps'"):
        _run(InProcessGrid(counting_app, _nodes(demo_root), bad), bad, 13)
    assert calls == []


def test_too_few_usable_sites_fails_the_run_with_the_reason_on_disk(demo_root, tmp_path,
                                                                       run_config):
    from superlink.federated_stats import FederationSetupError
    from supernode.client_app import app

    nodes = [_nodes(demo_root, 1)[0], {"site-name": "lab-x", "dataset-root": str(tmp_path / "x")}]
    with pytest.raises(FederationSetupError, match=r"1 site\(s\) answered.*min-sites is 2"):
        _run(InProcessGrid(app, nodes, run_config), run_config, run_id=14)
    meta = json.loads((tmp_path / "runs" / "run-14" / "run.json").read_text())
    assert "FederationSetupError" in meta["failed"] and "does not exist" in meta["failed"]
