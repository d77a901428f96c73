"""A site's bad data never kills a round: real damaged files, real LeRobot reads, real training.

Each test damages a copy of a generated video dataset on disk (packets of an AV1 stream
overwritten with noise, a video file deleted, a data table truncated) and checks that the site
skips what it cannot read, counts it and names it (file, episode, frame, camera key), goes on
while the bad share stays under ``max-bad-sample-share``, and past it stops that step with an
error naming the file instead of looping or dying with a bare ``InvalidDataError``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from broken_datasets import (
    copy_site,
    corrupt_video_frames,
    data_file,
    set_value,
    truncate,
    video_file,
)

from common.settings import RunConfig
from supernode.sample_guard import BadDataError, GuardedDataset, SampleProblem
from supernode.site_dataset import DatasetError, split_episodes

TOP = "observation.images.top"
EPISODES, FRAMES = 5, 30


def _run(tmp_path: Path, **over) -> dict:
    values = {"policy": "smolvla-tiny", "num-server-rounds": 1, "local-steps": 4,
              "batch-size": 4, "eval-samples": 8, "eval-batch-size": 4, "min-sites": 2,
              "output-dir": str(tmp_path / "runs"), **over}
    return RunConfig.with_overrides(values).to_flwr()


def _node(root: Path, name: str = "lab-v") -> dict:
    return {"site-name": name, "dataset-root": str(root), "eval-episodes": 1}


def _split():
    return split_episodes(EPISODES, 1, 0)  # NodeConfig's default split-seed


def _site(root: Path, run_config: dict):
    from supernode.local_site import Site

    return Site.open(_node(root), run_config)


def _policy(site):
    from common.norm_stats import global_stats

    stats = global_stats(site.moments(), [TOP, "observation.images.wrist"])
    return site.policy(site.spec, stats, None)


def test_unreadable_frames_are_named_by_file_episode_frame_and_key(video_demo_root, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = copy_site(video_demo_root / "site-0", tmp_path / "site")
    damaged = corrupt_video_frames(root, TOP, episode=2, frames=range(10, 15))
    dataset = GuardedDataset(LeRobotDataset("local/lab-v", root=root, video_backend="pyav"))
    items = [dataset[i] for i in range(len(dataset))]
    problems = [p for p in items if isinstance(p, SampleProblem)]
    assert problems, "the damaged packets must make some frames unreadable"
    assert len(problems) < 15  # a stretch, not the whole file
    assert {p.episode for p in problems} == {2}
    assert {p.key for p in problems} == {TOP}
    assert {p.file for p in problems} == {str(damaged.relative_to(root))}
    assert {10, 11, 12, 13, 14} & {p.frame for p in problems}
    assert all("InvalidDataError" in p.error or "FrameTimestampError" in p.error
               for p in problems)
    assert f"episode 2 frame {problems[0].frame} key {TOP}" in problems[0].describe()


def test_an_undecodable_stored_image_is_skipped_and_named(demo_root, tmp_path):
    """Image datasets keep each frame's PNG bytes in the data table: garbage bytes there are
    skipped like a bad video frame, and found by the deep check."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from supernode.dataset_checks.check import check_dataset

    root = copy_site(demo_root / "site-3", tmp_path / "site")
    set_value(root, 4, 9, TOP, lambda cell: {**cell, "bytes": b"\x89PNG garbage"})
    dataset = GuardedDataset(LeRobotDataset("local/lab-i", root=root, video_backend="pyav"))
    problems = [p for p in (dataset[i] for i in range(len(dataset)))
                if isinstance(p, SampleProblem)]
    assert [(p.episode, p.frame, p.key, p.file) for p in problems] == [
        (4, 9, TOP, "data/chunk-000/file-000.parquet")]
    [finding] = check_dataset(root, deep=True).warnings
    assert (finding.episode, finding.frame, finding.key) == (4, 9, TOP)
    assert "will skip" in finding.message


@pytest.fixture(scope="module")
def one_bad_episode(video_demo_root, tmp_path_factory) -> tuple[Path, int]:
    """site-0 with every frame of one training episode's top camera undecodable."""
    root = copy_site(video_demo_root / "site-0", tmp_path_factory.mktemp("bad1") / "site")
    episode = _split().train[1]
    corrupt_video_frames(root, TOP, episode=episode, frames=range(FRAMES))
    return root, episode


def test_training_skips_counts_and_names_bad_samples_and_finishes_the_round(
    one_bad_episode, tmp_path
):
    from supernode.training import train_round

    root, episode = one_bad_episode
    site = _site(root, _run(tmp_path, **{"max-bad-sample-share": 0.6}))
    bundle = _policy(site)
    tally = site.skip_tally("training", site.run.local_steps * site.run.batch_size)
    result = train_round(bundle, site.train_loader(1, tally), site.run, 1, 0.0, tally=tally)
    assert result.steps == 4  # every step was taken, on readable samples
    assert result.skipped > 0, "a quarter of the training frames are unreadable"
    assert result.samples + result.skipped >= 16  # skipped samples are left out, not padded
    assert f"episode {episode}" in result.skipped_summary
    assert f"key {TOP}" in result.skipped_summary
    assert str(video_file(root, TOP).relative_to(root)) in result.skipped_summary


def test_training_past_the_share_stops_with_the_file_episode_and_key(one_bad_episode, tmp_path):
    from supernode.training import train_round

    root, episode = one_bad_episode
    site = _site(root, _run(tmp_path, **{"max-bad-sample-share": 0.0}))
    bundle = _policy(site)
    tally = site.skip_tally("training", 16)
    with pytest.raises(BadDataError) as info:
        train_round(bundle, site.train_loader(1, tally), site.run, 1, 0.0, tally=tally)
    text = str(info.value)
    assert "max-bad-sample-share=0.0" in text and str(root) in text
    assert f"episode {episode}" in text and f"key {TOP}" in text
    assert "videos/observation.images.top/chunk-000/file-000.mp4" in text
    assert "zk0 check-dataset" in text


def test_missing_video_file_is_named_not_fetched_from_the_hub(video_demo_root, tmp_path):
    root = copy_site(video_demo_root / "site-0", tmp_path / "site")
    video_file(root, TOP).unlink()
    site = _site(root, _run(tmp_path))
    with pytest.raises(BadDataError, match=r"missing file.*videos/observation\.images\.top"):
        site.train_loader(1)
    from supernode.site_dataset import open_dataset

    with pytest.raises(DatasetError, match=r"videos/observation\.images\.top.*is missing"):
        open_dataset(site.node, [0])


def test_unreadable_data_table_is_named(video_demo_root, tmp_path):
    root = copy_site(video_demo_root / "site-0", tmp_path / "site")
    truncate(data_file(root))
    site = _site(root, _run(tmp_path))
    with pytest.raises(DatasetError, match=r"data/chunk-000/file-000\.parquet is unreadable"):
        site.train_loader(1)


def test_a_site_whose_training_data_is_broken_keeps_its_evaluation_and_the_round_goes_on(
    video_demo_root, one_bad_episode, tmp_path
):
    """site-0 skips the frames of one bad episode and trains. lab-x's training episodes are
    all broken: its training fails past the share, but its evaluation of the global model (on
    intact held-out episodes) is reported and recorded. lab-e's held-out episode is broken: its
    evaluation fails with the reason recorded, its training counts. The round aggregates."""
    from harness.inprocess_grid import run_inprocess

    good_root, bad_episode = one_bad_episode
    broken = copy_site(video_demo_root / "site-1", tmp_path / "lab-x")
    for ep in _split().train:
        corrupt_video_frames(broken, TOP, episode=ep, frames=range(FRAMES))
    no_eval = copy_site(video_demo_root / "site-1", tmp_path / "lab-e")
    corrupt_video_frames(no_eval, TOP, episode=_split().eval[0], frames=range(FRAMES))
    run_config = _run(tmp_path, **{"max-bad-sample-share": 0.6})
    nodes = [_node(good_root, "site-0"), _node(broken, "lab-x"), _node(no_eval, "lab-e")]
    run_dir = run_inprocess(run_config, nodes, run_id=81)

    entry = json.loads((run_dir / "rounds" / "round_001.json").read_text())
    assert entry["aggregated"] is True
    assert set(entry["sites"]) == {"site-0", "lab-e"}
    assert entry["sites"]["site-0"]["skipped_samples"] > 0
    notes = entry["notes"]["site-0"]["skipped"]
    assert f"episode {bad_episode}" in notes and TOP in notes
    [failure] = entry["failures"]
    assert failure["site"] == "lab-x" and failure["kind"] == "bad-data"
    assert "max-bad-sample-share=0.6" in failure["reason"]
    assert "videos/observation.images.top/chunk-000/file-000.mp4" in failure["reason"]
    assert failure["report"]["eval_action_mse"] >= 0  # its evaluation was not lost
    assert "evaluation stopped" in entry["notes"]["lab-e"]["eval_error"]
    assert entry["sites"]["lab-e"]["steps"] == 4 and entry["sites"]["lab-e"]["eval_samples"] == 0
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert history["rounds"] == [0, 1]
    assert history["per_site"]["lab-x"][0] == pytest.approx(failure["report"]["eval_action_mse"])
    assert all(v is not None for v in history["per_site"]["site-0"])
    assert "lab-e" not in history["per_site"]
    [before] = history["failures"]["0"]  # the model it received in round 1
    assert (before["site"], before["kind"]) == ("lab-e", "bad-data")
    [after] = history["failures"]["1"]  # the final model (an evaluate message: error reply)
    assert after["site"] == "lab-e" and "evaluation stopped" in after["reason"]
