"""The trajectory as it travels: its settings, its records, and what the SuperLink refuses."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, RecordDict

from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, TRAJECTORY, TRAJECTORY_INFO, SiteReport
from common.settings import NodeConfig, RunConfig, SettingsError
from common.trajectory import Trajectory, TrajectoryError, joint_names, joint_unit
from harness.inprocess_grid import server_context
from superlink.strategy import TRAIN, make_strategy

NAMES = ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos",
         "wrist_roll.pos", "gripper.pos")


def _trajectory(frames: int = 12, dims: int = 6) -> Trajectory:
    rng = np.random.default_rng(0)
    names = NAMES[:dims]
    return Trajectory(
        episode=4, fps=30.0, names=names, units=tuple(joint_unit(n) for n in names),
        frame_index=np.arange(frames), recorded=rng.normal(size=(frames, dims)).astype("f4"),
        predicted=rng.normal(size=(frames, dims)).astype("f4"),
        chunk_starts=np.arange(0, frames, 5),
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("trajectory-every", -1), ("trajectory-every", "2"), ("trajectory-frames", 1),
     ("trajectory-frames", 10_000), ("tracking", "mlflow"), ("wandb-project", 3)],
)
def test_trajectory_and_tracking_keys_are_checked_by_name(key, value):
    with pytest.raises(SettingsError, match=f"key '{key}'"):
        RunConfig.with_overrides({key: value})


def test_share_trajectories_is_a_checked_node_key():
    node = {"site-name": "a", "dataset-root": "/d"}
    assert NodeConfig.parse(node, "node config").share_trajectories is True
    with pytest.raises(SettingsError, match="share-trajectories"):
        NodeConfig.parse({**node, "share-trajectories": "no"}, "node config")
    off = NodeConfig(site_name="a", dataset_root="/d", share_trajectories=False)
    from flwr.common.config import parse_config_args

    assert NodeConfig.parse(parse_config_args([off.to_flwr_arg()]), "n") == off


def test_which_models_are_plotted():
    run = RunConfig.with_overrides({"num-server-rounds": 9, "eval-every": 2,
                                    "trajectory-every": 2})
    # evaluated: 0, 2, 4, 6, 8, 9; every 2nd evaluated one after round 0, plus 0 and the last
    assert [r for r in range(10) if run.is_trajectory_round(r)] == [0, 4, 8, 9]
    every = RunConfig.with_overrides({"num-server-rounds": 3})
    assert [r for r in range(4) if every.is_trajectory_round(r)] == [0, 1, 2, 3]
    off = RunConfig.with_overrides({"num-server-rounds": 3, "trajectory-every": 0})
    assert not any(off.is_trajectory_round(r) for r in range(4))


def test_joint_names_and_units():
    assert joint_names({"motors": list(NAMES)}, 6) == NAMES
    assert joint_names(None, 2) == ("joint_0", "joint_1")
    assert joint_names(["a"], 2) == ("joint_0", "joint_1")  # wrong length: not trusted
    assert [joint_unit(n) for n in ("elbow_flex.pos", "gripper.pos", "x.vel")] == [
        "deg", "% of range", ""]


def test_records_round_trip_and_bounds():
    traj = _trajectory()
    arrays, info = traj.to_records()
    back = Trajectory.from_records(arrays, info, max_frames=12, dims=6)
    np.testing.assert_array_equal(back.predicted, traj.predicted)
    np.testing.assert_array_equal(back.frame_index, traj.frame_index)
    assert back.names == NAMES and back.episode == 4
    with pytest.raises(TrajectoryError, match=r"12 frames \(expected 1..11\)"):
        Trajectory.from_records(arrays, info, max_frames=11, dims=6)
    with pytest.raises(TrajectoryError, match=r"expected \(12, 7\)"):
        Trajectory.from_records(arrays, info, max_frames=12, dims=7)
    bad = _trajectory()
    bad.predicted[3, 2] = np.nan
    with pytest.raises(TrajectoryError, match="non-finite"):
        Trajectory.from_records(*bad.to_records(), max_frames=12, dims=6)
    with pytest.raises(TrajectoryError, match="unreadable"):
        Trajectory.from_records(ArrayRecord(), info, max_frames=12, dims=6)


def test_a_trajectory_out_of_bounds_refuses_the_reply():
    """A site that sends more than the server asked for (here 40 frames, trajectory-frames is
    12) is misbehaving: its reply is refused with the reason, as any malformed record is; the
    others' updates and plots go on."""
    run = RunConfig.with_overrides({"wire-dtype": "float32", "min-sites": 1,
                                    "trajectory-frames": 12})
    server_context({}, run_id=3)  # Message() needs a ServerApp's task identity
    strategy = make_strategy(run, ArrayRecord(), {101: "lab-a", 202: "lab-b"}, action_dims=6)
    weights = {"w": np.zeros((4, 3), np.float32)}

    class Grid:
        def get_node_ids(self):
            return [101, 202]

    messages = strategy.configure_train(1, ArrayRecord({"w": codec.to_array(weights["w"])}),
                                        _instructions(), Grid())
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"m{i}"
    update = codec.encode({"w": np.full((4, 3), 0.1, np.float32)}, "float32", base=weights)
    good, broken = _trajectory(), _trajectory(frames=40)  # 40 frames > trajectory-frames

    def reply(msg, traj):
        arrays, info = traj.to_records()
        return Message(RecordDict({
            ARRAYS: update.arrays, CODEC: update.meta, TRAJECTORY: arrays, TRAJECTORY_INFO: info,
            METRICS: SiteReport(num_examples=5, train_loss=1.0).to_record(),
        }), reply_to=msg)

    by_node = {m.metadata.dst_node_id: m for m in messages}
    aggregated, _ = strategy.aggregate_train(1, [reply(by_node[101], good),
                                                 reply(by_node[202], broken)])
    judged = strategy.replies(TRAIN, 1)
    assert aggregated is not None and sorted(judged.reports) == ["lab-a"]
    [failure] = judged.failures
    assert (failure.site, failure.kind) == ("lab-b", "malformed")
    assert "40 frames (expected 1..12)" in failure.reason
    assert list(judged.trajectories) == ["lab-a"] and judged.trajectory_notes == {}


def _instructions():
    from common.protocol import RoundInstructions

    return RoundInstructions(server_round=1, proximal_mu=0.0, features={}, fingerprint="x",
                             evaluate=True, trajectory=True).to_record()


def test_a_lab_turns_sharing_off_at_its_launcher(tmp_path, monkeypatch):
    from deploy.cli import build_parser
    from deploy.lab import launcher

    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in ("ZK0_SHARE_TRAJECTORIES", "ZK0_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    parser = build_parser()
    base = ["supernode", "--superlink", "link:8000", "--ca-cert", "ca.crt", "--site-key", "k",
            "--site-name", "lab-a", "--dataset-root", str(tmp_path)]
    settings = launcher.settings_from_args(parser.parse_args(base))
    assert settings.node_config().share_trajectories is True
    args = parser.parse_args([*base, "--share-trajectories", "false"])
    node = launcher.settings_from_args(args).node_config()
    assert node.share_trajectories is False and "share-trajectories=false" in node.to_flwr_arg()
    monkeypatch.setenv("ZK0_SHARE_TRAJECTORIES", "false")
    assert launcher.settings_from_args(parser.parse_args(base)).node_config().share_trajectories \
        is False
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--share-trajectories", "nope"])
