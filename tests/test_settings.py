"""Run and node configs: typed, and every problem named by key before any work starts."""

from __future__ import annotations

import pytest

from common.policy_factory import make_policy_config
from common.settings import NodeConfig, RunConfig, SettingsError, parse_overrides


def test_pyproject_defaults_parse():
    run = RunConfig.with_overrides({})
    assert run.strategy == "fedprox" and run.policy == "smolvla"
    assert run.total_steps == run.num_server_rounds * run.local_steps


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("local-steps", "ten", "key 'local-steps'"),
        ("local-steps", 2.5, "key 'local-steps'"),
        ("lr", "fast", "key 'lr'"),
        ("fraction-train", 1.5, "key 'fraction-train'"),
        ("wire-dtype", "int8", "key 'wire-dtype'"),
        ("strategy", "fedmagic", "key 'strategy'"),
        ("num-server-rounds", 0, "key 'num-server-rounds'"),
    ],
)
def test_wrong_types_and_values_name_the_key(key, value, expect):
    with pytest.raises(SettingsError, match=expect) as err:
        RunConfig.with_overrides({key: value})
    assert repr(value) in str(err.value)


def test_unknown_run_config_key_is_refused():
    with pytest.raises(SettingsError, match="unknown key"):
        RunConfig.with_overrides({"local_steps": 3})
    with pytest.raises(SettingsError, match="unknown key 'bogus'"):
        RunConfig.parse({**RunConfig.defaults_from_pyproject(), "bogus": 1}, "run config")


def test_int_is_accepted_for_float_keys():
    assert RunConfig.with_overrides({"lr": 1}).lr == 1.0


def test_unknown_policy_is_refused_with_choices():
    run = RunConfig.with_overrides({"policy": "gpt-robot"})
    with pytest.raises(SettingsError, match="unknown policy 'gpt-robot'.*smolvla-tiny"):
        make_policy_config(run)


def test_tiny_preset_refuses_a_pretrained_path():
    run = RunConfig.with_overrides({"policy": "smolvla-tiny", "pretrained-path": "x/y"})
    with pytest.raises(SettingsError, match="pretrained-path"):
        make_policy_config(run)


def test_node_config_needs_a_dataset_and_a_clean_site_name():
    with pytest.raises(SettingsError, match="dataset-root"):
        NodeConfig.parse({"site-name": "lab-a"}, "node config")
    with pytest.raises(SettingsError, match="site-name"):
        NodeConfig.parse({"site-name": "lab a/../x", "dataset-root": "/d"}, "node config")
    with pytest.raises(SettingsError, match="eval-episodes"):
        NodeConfig.parse({"site-name": "a", "dataset-root": "/d", "eval-episodes": "2"}, "n")


def test_node_config_round_trips_through_flower_syntax():
    import tomllib

    node = NodeConfig(site_name="lab-a", dataset_root='/data/we"ird', eval_episodes=3)
    parsed = {}
    for part in node.to_flwr_arg().split(" "):
        key, value = part.split("=", 1)
        parsed[key] = tomllib.loads(f"v = {value}")["v"]
    assert NodeConfig.parse(parsed, "node config") == node


def test_parse_overrides_uses_toml_values():
    assert parse_overrides(["local-steps=5", "lr=0.003", 'policy="smolvla-tiny"', "x=word"]) == {
        "local-steps": 5, "lr": 0.003, "policy": "smolvla-tiny", "x": "word"}
    with pytest.raises(SettingsError, match="key=value"):
        parse_overrides(["novalue"])
