"""Personalization: a real in-process run whose sites fine-tune the final global model on their
own data. The personalized policy stays at the site as a LeRobot checkpoint that LeRobot loads
and that scores exactly what the site reported; the run's history, console table and summary
page show it next to the global model (and a study's alone reference when one is given)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

from common.settings import RunConfig

STEPS = 3


@pytest.fixture(scope="module")
def personalized_run(demo_root, tmp_path_factory):
    from harness.inprocess_grid import run_inprocess

    tmp = tmp_path_factory.mktemp("personal")
    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}"),
              "torch-threads": 1, "state-dir": str(tmp / f"state-{i}")} for i in range(2)]
    run = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 1, "local-steps": 2, "batch-size": 4,
        "eval-samples": 8, "min-sites": 2, "personalize-steps": STEPS,
        "output-dir": str(tmp / "runs"), "trajectory-every": 0,
    })
    threads = torch.get_num_threads()
    try:
        run_dir = Path(run_inprocess(run.to_flwr(), nodes, run_id=41))
    finally:
        torch.set_num_threads(threads)
    return run, nodes, run_dir, tmp


def test_history_has_both_models_per_site(personalized_run):
    _, _, run_dir, _ = personalized_run
    history = json.loads((run_dir / "eval_history.json").read_text())
    personal = history["personalized"]
    assert personal["after_round"] == 1 and personal["steps"] == {"site-0": STEPS,
                                                                   "site-1": STEPS}
    for site, mse in personal["per_site"].items():
        glob = history["per_site"][site][-1]
        assert mse > 0 and mse != pytest.approx(glob, rel=1e-6), site  # it trained


def test_the_personalized_checkpoint_stays_at_the_site_and_scores_what_it_reported(
        personalized_run):
    """LeRobot loads the site's checkpoint (policy + processors with the federation's stats);
    scored by the site's own evaluation code it gives the MSE the site reported, and its
    trainable weights differ from the final global checkpoint's."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from common.policy_factory import LoadedPolicy, trainable_state
    from supernode.evaluation import evaluate_action_mse
    from supernode.local_site import Site

    run, nodes, run_dir, tmp = personalized_run
    history = json.loads((run_dir / "eval_history.json").read_text())
    folder = tmp / "state-0" / "run-41" / "personalized"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    policy = SmolVLAPolicy.from_pretrained(folder / "pretrained_model")
    pre, post = make_pre_post_processors(policy.config,
                                         pretrained_path=str(folder / "pretrained_model"))
    site = Site.open(nodes[0], run.to_flwr())
    score = evaluate_action_mse(LoadedPolicy(policy, pre, post), site.eval_dataset(),
                                run.eval_samples, run.eval_batch_size, run.seed).action_mse
    assert score == pytest.approx(history["personalized"]["per_site"]["site-0"], rel=1e-4)
    final = SmolVLAPolicy.from_pretrained(run_dir / "checkpoints" / "last" / "pretrained_model")
    mine, theirs = trainable_state(policy), trainable_state(final)
    assert max(float((mine[k] - theirs[k]).abs().max()) for k in mine) > 0
    assert not list(run_dir.rglob("personalized"))  # never at the coordinator


def test_console_table_and_summary_show_personalized_and_a_study_reference(personalized_run):
    from superlink.reports import format_history
    from superlink.summary import REFERENCES, load_references, render_summary

    _, _, run_dir, _ = personalized_run
    history = json.loads((run_dir / "eval_history.json").read_text())
    table = format_history(history)
    row = next(line for line in table.splitlines() if "personalized" in line)
    assert f"{history['personalized']['per_site']['site-1']:.2f}" in row
    (run_dir / REFERENCES).write_text(json.dumps(
        {"alone": {"per_site": {"site-0": 12.5, "site-1": 34.25}, "source": "test"}}))
    table = format_history(history, load_references(run_dir))
    assert any("alone (reference)" in line and "12.50" in line and "34.25" in line
               for line in table.splitlines())
    page = render_summary(run_dir)
    assert "personalized" in page and "alone (reference)" in page and "34.25" in page


def test_personalization_lr_defaults_to_where_the_schedule_ended():
    from supernode.personalization import personalize_lr

    class _Site:
        run = RunConfig.with_overrides({"policy": "smolvla-tiny", "num-server-rounds": 4,
                                        "local-steps": 5, "lr": 1e-3})

    class _Bundle:
        config = None

    from supernode.training import lr_at

    ended = personalize_lr(_Site(), _Bundle())  # the last of the run's 20 steps
    assert ended == lr_at(_Site.run, 1e-3, 19) == pytest.approx(1e-4, rel=0.1)  # ~10 % of peak
    _Site.run = _Site.run.model_copy(update={"personalize_lr": 5e-4})
    assert personalize_lr(_Site(), _Bundle()) == 5e-4
