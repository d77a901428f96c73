"""The in-process grid (tests and bench.quality run federations through it) behaves like a
fresh deployment run: every grid's sites start without state left by an earlier run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.settings import RunConfig
from harness.inprocess_grid import InProcessGrid, run_inprocess


def test_each_grid_gives_its_nodes_private_state_and_removes_it(tmp_path: Path) -> None:
    nodes = [{"site-name": "a"}, {"site-name": "b", "state-dir": ""},
             {"site-name": "c", "state-dir": str(tmp_path / "mine")}]
    grid = InProcessGrid(None, nodes, {})
    dirs = [Path(c.node_config["state-dir"]) for c in grid.contexts.values()]
    assert dirs[2] == tmp_path / "mine"  # a node config's own choice stands
    assert dirs[0].parent == dirs[1].parent == grid.state_root and dirs[0] != dirs[1]
    other = InProcessGrid(None, nodes[:1], {})
    assert other.state_root != grid.state_root
    assert grid.state_root.is_dir()
    grid.close()
    assert not grid.state_root.exists() and other.state_root.is_dir()
    other.close()


def test_a_rerun_with_the_same_run_id_gives_the_same_result(demo_root: Path, tmp_path: Path):
    """Sites keep their AdamW moments between rounds under ``run-<id>`` in their state dir. The
    quality study reruns a job with the same run id; if the second run found the moments the
    first one left, its first round would start from them and its numbers would differ."""
    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}"),
              "torch-threads": 1} for i in range(2)]
    threads = torch.get_num_threads()
    histories = []
    try:
        for attempt in ("first", "again"):
            run = RunConfig.with_overrides({
                "policy": "smolvla-tiny", "num-server-rounds": 1, "local-steps": 2,
                "batch-size": 4, "eval-samples": 4, "min-sites": 2, "eval-every": 1,
                "output-dir": str(tmp_path / attempt),
            }).to_flwr()
            run_dir = run_inprocess(run, nodes, run_id=21)
            histories.append(json.loads((Path(run_dir) / "eval_history.json").read_text()))
    finally:
        torch.set_num_threads(threads)  # Site.open sets the node's thread count process-wide
    first, again = histories
    assert first["per_site"] == again["per_site"]
    # The round trained the model (so the moments existed to be left behind).
    assert all(values[0] != values[-1] for values in first["per_site"].values())
