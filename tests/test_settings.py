"""Run and node configs: typed, and every problem named by key before any work starts."""

from __future__ import annotations

import pytest

from common.policy_factory import make_policy_config
from common.settings import NodeConfig, RunConfig, SettingsError, parse_overrides


def test_pyproject_defaults_parse():
    run = RunConfig.with_overrides({})
    assert run.strategy == "diloco" and run.policy == "smolvla"
    assert run.server_momentum == 0.9 and run.server_lr == 0.7 and run.proximal_mu == 0.0
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


def test_server_lr_must_suit_a_server_optimizer():
    with pytest.raises(SettingsError, match=r"server-lr 2.0 is far too large for .*'fedadam'"):
        RunConfig.with_overrides({"strategy": "fedadam", "server-lr": 2.0})
    assert RunConfig.with_overrides({"strategy": "fedadam", "server-lr": 0.01}).server_lr == 0.01


def test_unknown_run_config_key_is_refused():
    with pytest.raises(SettingsError, match=r"unknown key"):
        RunConfig.with_overrides({"local_steps": 3})
    with pytest.raises(SettingsError, match=r"unknown key 'bogus'"):
        RunConfig.parse({**RunConfig.defaults_from_pyproject(), "bogus": 1}, "run config")


def test_int_is_accepted_for_float_keys():
    assert RunConfig.with_overrides({"lr": 1}).lr == 1.0


def test_unknown_policy_is_refused_with_choices():
    run = RunConfig.with_overrides({"policy": "gpt-robot"})
    with pytest.raises(SettingsError, match=r"unknown policy 'gpt-robot'.*smolvla-tiny"):
        make_policy_config(run)


def test_tiny_preset_refuses_a_pretrained_path():
    run = RunConfig.with_overrides({"policy": "smolvla-tiny", "pretrained-path": "x/y"})
    with pytest.raises(SettingsError, match=r"pretrained-path"):
        make_policy_config(run)


def test_node_config_needs_a_dataset_and_a_clean_site_name():
    with pytest.raises(SettingsError, match=r"dataset-root"):
        NodeConfig.parse({"site-name": "lab-a"}, "node config")
    with pytest.raises(SettingsError, match=r"site-name"):
        NodeConfig.parse({"site-name": "lab a/../x", "dataset-root": "/d"}, "node config")
    with pytest.raises(SettingsError, match=r"eval-episodes"):
        NodeConfig.parse({"site-name": "a", "dataset-root": "/d", "eval-episodes": "2"}, "n")


def test_node_config_round_trips_through_flower_syntax():
    from flwr.common.config import parse_config_args

    for root in ("/data/lab-a", '/data/we"ird', "C:\\data", "/my data/lab a"):
        node = NodeConfig(site_name="lab-a", dataset_root=root, eval_episodes=3)
        parsed = parse_config_args([node.to_flwr_arg()])  # flower-supernode's own parser
        assert NodeConfig.parse(parsed, "node config") == node
    with pytest.raises(SettingsError, match=r"dataset-root.*both quote kinds"):
        NodeConfig(site_name="a", dataset_root="/it's \"x\"").to_flwr_arg()


AWKWARD = {
    "plain": "smolvla-tiny",
    "single": "it's",
    "double": 'say "hi"',
    "backslash": "C:\\data\\new",
    "both-slashes": 'a\\"b',
    "spaces-and-equals": "a b=c d",
    "hash": "x # not a comment",
    "tab-newline": "col\tcol\nnext line",
    "unicode": "Zürich ✓ \x7f",
    "empty": "",
    "flag": False,
    "count": 3,
    "tiny": 1e-05,
    "dotted.key": 1.5,
}


def test_flwr_config_pairs_round_trip_through_flowers_parser():
    """Exactly what ``flwr run -c k=v`` (one pair per flag) and ``--node-config`` (all pairs
    in one string) read back, for strings that need quoting, escaping or the other quote."""
    from flwr.common.config import parse_config_args

    from common.settings import flwr_config_pairs

    pairs = flwr_config_pairs(AWKWARD, "test")
    assert parse_config_args(pairs) == AWKWARD  # flwr run -c, one per value
    assert parse_config_args([" ".join(pairs)]) == AWKWARD  # flower-supernode --node-config


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("it's \"x\"", "both quote kinds"),
        ('say "hi"\nthere', "double quote and a control character"),
        (None, "not a bool, int, float or string"),
        ([1, 2], "not a bool, int, float or string"),
    ],
)
def test_flwr_config_pairs_refuses_what_flower_cannot_carry(value, why):
    from common.settings import flwr_config_pairs

    with pytest.raises(SettingsError, match=rf"run config: key 'policy': .*{why}"):
        flwr_config_pairs({"policy": value}, "run config")
    with pytest.raises(SettingsError, match=r"run config: key 'bad key'"):
        flwr_config_pairs({"bad key": 1}, "run config")


def test_parse_overrides_uses_toml_values():
    assert parse_overrides(["local-steps=5", "lr=0.003", 'policy="smolvla-tiny"', "x=word"]) == {
        "local-steps": 5, "lr": 0.003, "policy": "smolvla-tiny", "x": "word"}
    with pytest.raises(SettingsError, match=r"key=value"):
        parse_overrides(["novalue"])
