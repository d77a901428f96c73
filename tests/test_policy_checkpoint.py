"""The policy factory and the global checkpoint in LeRobot's own format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.norm_stats import Moments, global_stats
from common.policy_factory import (
    build_policy,
    frozen_fingerprint,
    load_trainable,
    trainable_state,
)
from common.settings import NodeConfig, RunConfig
from superlink.checkpoints import save_checkpoint
from supernode import site_dataset as ds


@pytest.fixture(scope="module")
def features(demo_root):
    meta = ds.open_metadata(NodeConfig(site_name="a", dataset_root=str(demo_root / "site-0")))
    return meta.features


def _stats():
    rng = np.random.default_rng(0)
    m = {k: Moments.of(rng.normal(5.0, 3.0, (100, 6))) for k in ("action", "observation.state")}
    return global_stats(m, ["observation.images.top", "observation.images.wrist"])


def test_tiny_preset_is_smolvla_with_default_freezing(features, tiny_run):
    bundle = build_policy(tiny_run, features, _stats())
    assert type(bundle.policy).__name__ == "SmolVLAPolicy"
    total = sum(p.numel() for p in bundle.policy.parameters())
    trainable = sum(v.numel() for v in trainable_state(bundle.policy).values())
    assert 0 < trainable < total  # the VLM is frozen, the action expert trains
    assert all(n.startswith("model.") for n in trainable_state(bundle.policy))
    assert not any("vision_model" in n for n in trainable_state(bundle.policy))


def test_two_builds_share_the_frozen_backbone(features, tiny_run):
    a = build_policy(tiny_run, features, _stats()).policy
    b = build_policy(tiny_run, features, _stats()).policy
    assert frozen_fingerprint(a) == frozen_fingerprint(b)
    frozen = next(p for p in b.parameters() if not p.requires_grad)
    with torch.no_grad():
        frozen.add_(1e-3)
    assert frozen_fingerprint(a) != frozen_fingerprint(b)


def test_load_trainable_refuses_wrong_names_and_shapes(features, tiny_run):
    policy = build_policy(tiny_run, features, _stats()).policy
    state = trainable_state(policy)
    name = next(iter(state))
    with pytest.raises(ValueError, match=r"missing"):
        load_trainable(policy, {k: v for k, v in state.items() if k != name})
    state[name] = torch.zeros(3)
    with pytest.raises(ValueError, match=f"parameter {name}: shape"):
        load_trainable(policy, state)


def test_checkpoint_reloads_with_lerobot(features, tiny_run, tmp_path):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    stats = _stats()
    bundle = build_policy(tiny_run, features, stats)
    weights = {k: v.numpy() + 0.5 for k, v in trainable_state(bundle.policy).items()}
    path = save_checkpoint(tmp_path, 3, bundle, weights, {"round": 3}, keep=2)
    assert path == tmp_path / "checkpoints" / "000003" / "pretrained_model"
    assert (tmp_path / "checkpoints" / "last").resolve() == path.parent.resolve()
    assert json.loads((path.parent / "zk0_round.json").read_text())["round"] == 3

    policy = SmolVLAPolicy.from_pretrained(path)
    reloaded = trainable_state(policy)
    for k, v in weights.items():
        np.testing.assert_array_equal(reloaded[k].numpy(), v)
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(path))
    norm = next(s for s in pre.steps if type(s).__name__ == "NormalizerProcessorStep")
    np.testing.assert_allclose(np.asarray(norm.stats["action"]["mean"]), stats["action"]["mean"])
    np.testing.assert_allclose(np.asarray(norm.stats["observation.state"]["std"]),
                               stats["observation.state"]["std"])

    # keep=2 prunes older rounds; no temporary folders are left behind
    for r in (4, 5):
        save_checkpoint(tmp_path, r, bundle, weights, {"round": r}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["000004", "000005", "last"]


def test_another_lerobot_policy_by_name_trains_offline(demo_root, tmp_path):
    """ACT, chosen by run config (small dims, no pretrained backbone download), trains a step
    and predicts an action chunk through the same site code path as SmolVLA."""
    from common.norm_stats import global_stats
    from supernode.evaluation import evaluate_action_mse
    from supernode.local_site import Site
    from supernode.training import train_round

    options = ('{"pretrained_backbone_weights": null, "dim_model": 32, "dim_feedforward": 64, '
               '"n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "chunk_size": 5, '
               '"n_action_steps": 5, "use_vae": false}')
    run = {"policy": "act", "policy-options": options, "local-steps": 2, "batch-size": 2,
           "lr": 1e-4}
    site = Site.open({"site-name": "s", "dataset-root": str(demo_root / "site-0")},
                     {**RunConfig.defaults_from_pyproject(), **run})
    cams = ["observation.images.top", "observation.images.wrist"]
    bundle = site.policy(site.spec, global_stats(site.moments(), cams), None)
    assert type(bundle.policy).__name__ == "ACTPolicy" and bundle.config.chunk_size == 5
    result = train_round(bundle, site.train_loader(1), site.run, 1, 0.0)
    assert result.steps == 2 and np.isfinite(result.loss_mean)
    ev = evaluate_action_mse(bundle, site.eval_dataset(), 4, 2, 0)
    assert np.isfinite(ev.action_mse) and ev.samples == 4


def test_policy_options_are_checked():
    from common.policy_factory import make_policy_config
    from common.settings import SettingsError

    run = RunConfig.with_overrides({"policy": "act", "policy-options": '{"no_such": 1}'})
    with pytest.raises(SettingsError, match=r"policy-options.*no_such"):
        make_policy_config(run)
    run = RunConfig.with_overrides({"policy": "act", "policy-options": "{broken"})
    with pytest.raises(SettingsError, match=r"policy-options.*not JSON"):
        make_policy_config(run)


def test_policy_options_on_a_preset_set_only_config_fields():
    """A zk0 preset takes the same options: fields are set, methods and typos are refused."""
    from common.policy_factory import make_policy_config
    from common.settings import SettingsError

    run = RunConfig.with_overrides({"policy": "smolvla-tiny",
                                    "policy-options": '{"n_action_steps": 5}'})
    assert make_policy_config(run).n_action_steps == 5
    for bad in ("validate_features", "no_such"):  # a method of the config; not an attribute
        run = RunConfig.with_overrides({"policy": "smolvla-tiny",
                                        "policy-options": json.dumps({bad: 1})})
        with pytest.raises(SettingsError, match=rf"policy-options.*{bad}.*SmolVLAConfig"):
            make_policy_config(run)


def test_any_lerobot_policy_type_is_known_in_a_fresh_process():
    """A ClientApp is a fresh process: LeRobot registers a policy type only once its config
    module is imported, so the factory must not depend on what else was imported before."""
    import subprocess
    import sys

    code = ("from common.settings import RunConfig\n"
            "from common.policy_factory import make_policy_config\n"
            "print(type(make_policy_config(RunConfig.with_overrides({'policy': 'act'}))).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ACTConfig"


def test_default_policy_path_loads_a_checkpoint_laid_out_like_smolvla_base(
    features, tiny_run, demo_root, tmp_path
):
    """``policy=smolvla`` starts from ``lerobot/smolvla_base`` on the Hub, which these machines
    cannot reach; the same loading code runs here on a local folder with that repository's
    layout (config.json, model.safetensors, processors), given as ``pretrained-path``: its own
    config and weights are used, the ServerApp and the sites build the same model, and a
    federated round trains it offline."""
    from common.policy_factory import make_policy_config
    from harness.inprocess_grid import run_inprocess

    source = build_policy(tiny_run, features, _stats())
    frozen = next(p for p in source.policy.parameters() if not p.requires_grad)
    with torch.no_grad():  # pretrained weights that a fresh build would not have
        frozen.add_(0.25)
    base = tmp_path / "smolvla_base"
    for part in (source.policy, source.preprocessor, source.postprocessor):
        part.save_pretrained(base)
    assert {"config.json", "model.safetensors"} <= {p.name for p in base.iterdir()}

    run = RunConfig.with_overrides({
        "policy": "smolvla", "pretrained-path": str(base), "num-server-rounds": 1,
        "local-steps": 2, "batch-size": 4, "eval-samples": 4, "min-sites": 2,
        "output-dir": str(tmp_path / "runs"),
    })
    cfg = make_policy_config(run)
    assert type(cfg).__name__ == "SmolVLAConfig" and cfg.pretrained_path == str(base)
    assert cfg.chunk_size == 10  # the checkpoint's own config, not SmolVLAConfig's default 50
    loaded = build_policy(run, features, _stats())
    assert frozen_fingerprint(loaded.policy) == frozen_fingerprint(source.policy)
    assert frozen_fingerprint(loaded.policy) != frozen_fingerprint(
        build_policy(tiny_run, features, _stats()).policy)

    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}"),
              "state-dir": str(tmp_path / "state")} for i in range(2)]
    run_dir = run_inprocess(run.to_flwr(), nodes, run_id=31)
    entry = json.loads((run_dir / "rounds" / "round_001.json").read_text())
    assert set(entry["sites"]) == {"site-0", "site-1"} and entry["failures"] == []
    saved = json.loads((run_dir / "checkpoints" / "last" / "pretrained_model" / "config.json")
                       .read_text())
    assert saved["type"] == "smolvla" and saved["chunk_size"] == 10


def test_a_pretrained_path_of_another_policy_type_is_refused(tmp_path):
    from common.policy_factory import make_policy_config
    from common.settings import SettingsError

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"type": "act"}))
    run = RunConfig.with_overrides({"policy": "smolvla", "pretrained-path": str(tmp_path / "ckpt")})
    with pytest.raises(SettingsError, match=r"holds a 'act' policy, but key 'policy' is"):
        make_policy_config(run)
    missing = RunConfig.with_overrides({"policy": "smolvla",
                                        "pretrained-path": str(tmp_path / "nothing")})
    with pytest.raises(SettingsError, match=r"pretrained-path.*nothing"):
        make_policy_config(missing)
