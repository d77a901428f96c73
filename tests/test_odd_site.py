"""One odd site does not stop the others: at stage 0 a site whose features differ from the
federation's (here: the same joints in another order, which a shape check alone would merge
silently) is left out with its reason in run.json, the log and its own ClientApp's log, and the
rest of the federation goes on. Which site is "the federation" never depends on who answered
first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array

from common.features import FeatureMismatchError, compare_specs
from common.protocol import SiteInfo
from common.settings import RunConfig
from harness.inprocess_grid import run_inprocess
from harness.synthetic_sites import SyntheticSites
from superlink.federated_stats import FederationSetupError, agree_features

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos",
          "wrist_roll.pos", "gripper.pos"]


def _spec(joints=JOINTS, dims=6, cameras=("top",)) -> dict:
    spec = {key: {"dtype": "float32", "shape": [dims], "names": list(joints)}
            for key in ("observation.state", "action")}
    for cam in cameras:
        spec[f"observation.images.{cam}"] = {"dtype": "video", "shape": [480, 640, 3],
                                             "names": ["height", "width", "channels"]}
    return spec


def _sites(*specs) -> dict[int, SiteInfo]:
    return {100 + i: SiteInfo(site_name=name, features=spec, train_episodes=4, eval_episodes=2,
                              train_frames=100, eval_frames=50, fps=30.0, device="cpu")
            for i, (name, spec) in enumerate(specs)}


def test_joint_order_is_part_of_the_features():
    swapped = [JOINTS[1], JOINTS[0], *JOINTS[2:]]
    with pytest.raises(FeatureMismatchError, match=r"same names in another order \(position 0"):
        compare_specs("lab", _spec(swapped), _spec())
    with pytest.raises(FeatureMismatchError, match="names"):
        compare_specs("lab", _spec([*JOINTS[:5], "jaw.pos"]), _spec())
    # camera resolutions may differ, the set of cameras may not
    other_res = _spec()
    other_res["observation.images.top"]["shape"] = [240, 320, 3]
    compare_specs("lab", other_res, _spec())
    with pytest.raises(FeatureMismatchError, match=r"missing feature 'observation\.images\.top'"):
        compare_specs("lab", _spec(cameras=("side",)), _spec())


def test_the_majority_sets_the_features_whatever_the_reply_order():
    swapped = _spec([JOINTS[1], JOINTS[0], *JOINTS[2:]])
    specs = [("a-lab", swapped), ("b-lab", _spec()), ("c-lab", _spec()), ("d-lab", _spec(dims=7,
             joints=[*JOINTS, "extra.pos"]))]
    for order in (specs, specs[::-1], specs[1:] + specs[:1]):
        features, _, excluded = agree_features(_sites(*order))
        assert features == _spec()
        names = {info.site_name for node, info in _sites(*order).items() if node in excluded}
        assert names == {"a-lab", "d-lab"}


def test_a_tie_goes_to_the_group_of_the_alphabetically_first_site():
    swapped = _spec([JOINTS[1], JOINTS[0], *JOINTS[2:]])
    for order in ([("zeta", _spec()), ("alpha", swapped)], [("alpha", swapped), ("zeta", _spec())]):
        features, _, excluded = agree_features(_sites(*order))
        assert features == swapped
        assert [s.site_name for n, s in _sites(*order).items() if n in excluded] == ["zeta"]


def test_a_resumed_run_keeps_its_features_even_against_a_new_majority():
    swapped = _spec([JOINTS[1], JOINTS[0], *JOINTS[2:]])
    features, _, excluded = agree_features(
        _sites(("a", swapped), ("b", swapped), ("c", _spec())), federation=_spec())
    assert features == _spec() and len(excluded) == 2


def test_two_nodes_with_one_site_name_are_refused():
    with pytest.raises(FederationSetupError, match="same site-name"):
        agree_features(_sites(("a", _spec()), ("a", _spec())))


def _swap_joints(dataset: Path) -> None:
    """Rewrite the dataset's info.json on disk: state and action joints in another order."""
    info_path = dataset / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    for key in ("observation.state", "action"):
        names = info["features"][key]["names"]
        names[0], names[1] = names[1], names[0]
    info_path.write_text(json.dumps(info, indent=2))


class Noticed(SyntheticSites):
    """Synthetic sites that note the exclusion notices the server sends (the real ClientApp
    answers them, logging the reason)."""

    def __init__(self):
        super().__init__()
        self.notices: list[tuple[str, str]] = []

    def __call__(self, msg, context):
        from common.protocol import EXCLUDED_NOTICE, NOTICE

        reply = super().__call__(msg, context)
        if msg.metadata.message_type == EXCLUDED_NOTICE:
            record = msg.content.config_records[NOTICE]
            self.notices.append((context.node_config["site-name"], str(record["reason"])))
            assert not reply.has_error()
        return reply


def test_an_odd_site_is_left_out_and_told_why_while_the_others_go_on(demo_root, tmp_path):
    odd = tmp_path / "odd-lab"
    shutil.copytree(demo_root / "site-2", odd)
    _swap_joints(odd)
    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}")}
             for i in range(2)] + [{"site-name": "odd-lab", "dataset-root": str(odd)}]
    config = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 1, "min-sites": 2,
        "output-dir": str(tmp_path / "runs")}).to_flwr()
    app = Noticed()
    run_dir = run_inprocess(config, nodes, 51, client_app=app)

    meta = json.loads((run_dir / "run.json").read_text())
    assert set(meta["sites"]) == {"site-0", "site-1"} and meta["status"] == "completed"
    reason = meta["excluded_sites"]["odd-lab"]
    assert "same names in another order" in reason and "'observation.state'" in reason
    assert app.notices == [("odd-lab", reason)]
    assert {site for site, _ in app.trained} == {"site-0", "site-1"}
    events = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]
    assert any(e["event"] == "site_excluded" and e["site"] == "odd-lab" for e in events)
    # in one process the site's own log lines land in the same log
    assert any(e["event"] == "excluded_from_federation" and e["reason"] == reason
               for e in events)


def test_joint_names_wrapped_differently_agree_and_never_stop_stage_0():
    """{"motors": [...]} and a plain list of the same joints are the same joints (this raised
    StopIteration, which no caller caught, and ended stage 0 for every site)."""
    wrapped = _spec()
    wrapped["action"]["names"] = {"motors": list(JOINTS)}
    compare_specs("lab", wrapped, _spec())
    _, _, excluded = agree_features(_sites(("a", wrapped), ("b", _spec())))
    assert excluded == {}
    swapped = _spec()
    swapped["action"]["names"] = {"motors": [JOINTS[1], JOINTS[0], *JOINTS[2:]]}
    with pytest.raises(FeatureMismatchError, match="same names in another order"):
        compare_specs("lab", swapped, _spec())


def test_fps_is_part_of_the_agreement():
    sites = _sites(("a", _spec()), ("b", _spec()), ("c", _spec()))
    slow = {**sites, 103: sites[102].model_copy(update={"site_name": "d", "fps": 15.0})}
    _, fps, excluded = agree_features(slow)
    assert fps == 30.0 and list(excluded) == [103]
    assert "recorded at 15 fps, the federation's at 30 fps" in excluded[103]
    # a resumed run keeps the fps it started with, whatever the majority says now
    _, _, excluded = agree_features(sites, federation=_spec(), fps=15.0)
    assert sorted(excluded) == [100, 101, 102]


class StageZeroLiars(Noticed):
    """Sites that alter their stage-0 reply and sign it with their own key, as a misconfigured
    or dishonest site could: site-1 writes its joints as {"motors": [...]} (honest: the same
    joints), site-2 declares 10x the frames its statistics count, site-3 says its data is
    recorded at 15 fps, site-4 sends statistics with a NaN."""

    def __call__(self, msg, context):
        from common.packing import unpack
        from common.protocol import MOMENTS, SITE, STATS_QUERY, SiteInfo

        reply = super().__call__(msg, context)
        name = context.node_config["site-name"]
        if msg.metadata.message_type != STATS_QUERY or name == "site-0":
            return reply
        reply.content = unpack(reply.content)  # alter the content, not its wire packing
        info = SiteInfo.from_record(reply.content[SITE])
        if name == "site-1":
            features = {**info.features, "action": {**info.features["action"], "names": {
                "motors": info.features["action"]["names"]}}}
            info = info.model_copy(update={"features": features})
        if name == "site-2":
            info = info.model_copy(update={"train_frames": 10 * info.train_frames})
        if name == "site-3":
            info = info.model_copy(update={"fps": 15.0})
        if name == "site-4":
            moments = reply.content[MOMENTS]
            broken = moments["action/sum"].numpy().copy()
            broken[2] = np.nan
            moments["action/sum"] = Array(broken)
        reply.content[SITE] = info.to_record()
        return _resign(reply, msg, context)


def _resign(reply, msg, context):
    from common import signing
    from common.settings import NodeConfig
    from supernode.authenticity import sign_reply

    node = NodeConfig.parse(context.node_config, "site")
    sign_reply(reply, msg, context, node, signing.load_private_key(node.site_key))
    return reply


def test_a_site_whose_statistics_fail_is_left_out_and_told_why(demo_root, tmp_path):
    """Per-site stage-0 exclusion: statistics that do not count the declared frames, or hold
    NaN, and data at another fps leave that site out (told why); the others' statistics alone
    are merged and the run goes on."""
    from common.norm_stats import Moments, merge_all
    from superlink import server_state
    from superlink.checkpoints import checkpoint_dir
    from supernode.local_site import Site

    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i % 4}")}
             for i in range(5)]
    config = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "num-server-rounds": 1, "min-sites": 2,
        "output-dir": str(tmp_path / "runs")}).to_flwr()
    app = StageZeroLiars()
    run_dir = run_inprocess(config, nodes, 52, client_app=app)

    meta = json.loads((run_dir / "run.json").read_text())
    assert set(meta["sites"]) == {"site-0", "site-1"} and meta["status"] == "completed"
    assert meta["fps"] == 30.0
    excluded = meta["excluded_sites"]
    assert set(excluded) == {"site-2", "site-3", "site-4"}
    assert "count" in excluded["site-2"] and "declared" in excluded["site-2"]
    assert "15 fps" in excluded["site-3"]
    assert "NaN" in excluded["site-4"] and "'action'" in excluded["site-4"]
    assert dict(app.notices) == excluded  # each told why, in its own log
    assert {site for site, _ in app.trained} == {"site-0", "site-1"}
    # the federation's statistics are site-0's and site-1's alone
    state = server_state.read(checkpoint_dir(run_dir, 1) / server_state.STATE_FILE)
    parts = []
    for i in (0, 1):
        site = Site.open(nodes[i], config)
        parts.append(site.moments())
    merged: dict[str, Moments] = merge_all(parts)
    np.testing.assert_allclose(state.stats["action"]["mean"],
                               merged["action"].finalize()["mean"], rtol=1e-6)
    assert int(state.stats["action"]["count"][0]) == merged["action"].count
