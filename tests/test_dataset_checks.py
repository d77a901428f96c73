"""``zk0 check-dataset`` and the launcher's dataset check on real, damaged LeRobot datasets.

The three datasets a lab operator once got past ``zk0 supernode --check`` (a 7-D state,
duplicated timestamps, an undecodable stretch of video) are made on disk here and must each
be refused with a line naming the file, episode, frame and key; more faults (joint order, fps,
frame indices, NaN, missing files, too few episodes) are caught the same way, and what training
survives is a warning saying what it will skip.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from broken_datasets import (
    copy_site,
    corrupt_video_frames,
    duplicate_timestamps,
    edit_info,
    set_value,
    video_file,
    widen_state,
)

from deploy.cli import build_parser
from deploy.lab import launcher
from supernode.dataset_checks.check import check_dataset
from supernode.dataset_checks.expectation import Expectation

TOP = "observation.images.top"
DATA = "data/chunk-000/file-000.parquet"
TOP_MP4 = "videos/observation.images.top/chunk-000/file-000.mp4"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["check-dataset", *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _only(report, check: str):
    found = [f for f in report.errors if f.check == check]
    assert len(found) == 1, [f.line() for f in report.findings]
    return found[0]


# -- the three datasets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def seven_d_state(demo_root, tmp_path_factory) -> Path:
    root = copy_site(demo_root / "site-0", tmp_path_factory.mktemp("7d") / "site")
    widen_state(root)
    return root


@pytest.fixture(scope="module")
def duplicated_timestamps(demo_root, tmp_path_factory) -> Path:
    root = copy_site(demo_root / "site-0", tmp_path_factory.mktemp("dup") / "site")
    duplicate_timestamps(root, episode=2, frame=13)
    return root


@pytest.fixture(scope="module")
def broken_video(video_demo_root, tmp_path_factory) -> Path:
    """Every frame of episode 3's top camera undecodable: 20 % of the frames, past 10 %."""
    root = copy_site(video_demo_root / "site-0", tmp_path_factory.mktemp("vid") / "site")
    corrupt_video_frames(root, TOP, episode=3, frames=range(30))
    return root


def test_seven_d_state_is_refused_against_the_so100_federation(seven_d_state, capsys):
    report = check_dataset(seven_d_state, expect=Expectation.so100())
    finding = _only(report, "federation")
    assert finding.key == "observation.state" and finding.file == "meta/info.json"
    assert "float32[7], expected float32[6]" in finding.message
    code, out, _ = _cli(capsys, str(seven_d_state))
    assert code == 1
    assert "ERROR [federation] meta/info.json, key observation.state: float32[7]" in out
    assert "FAILED" in out


def test_duplicated_timestamps_are_refused_at_their_frame(duplicated_timestamps, capsys):
    report = check_dataset(duplicated_timestamps, expect=Expectation.so100())
    finding = _only(report, "timestamps")
    assert (finding.file, finding.episode, finding.frame, finding.key) == (
        DATA, 2, 13, "timestamp")
    assert "duplicated timestamp 0.4000" in finding.message
    assert "expected 0.4333" in finding.message
    code, out, _ = _cli(capsys, str(duplicated_timestamps))
    assert code == 1
    assert f"ERROR [timestamps] {DATA}, episode 2, frame 13, key timestamp" in out


def test_undecodable_video_is_found_by_the_deep_check(broken_video, capsys):
    quick = check_dataset(broken_video, expect=Expectation.so100())
    deep = check_dataset(broken_video, expect=Expectation.so100(), deep=True)
    assert deep.decoded_frames >= 2 * 150 - 30  # every frame of both cameras was decoded
    # LeRobot decodes from the keyframe before a frame: the frames next to the damage, at the
    # end of episode 2 and the start of episode 4, fail in training too and are reported.
    by_episode = {f.episode: f for f in deep.errors}
    assert set(by_episode) <= {2, 3, 4} and 3 in by_episode
    assert {f.check for f in deep.errors} == {"video"}
    finding = by_episode[3]
    assert (finding.file, finding.episode, finding.frame, finding.key) == (TOP_MP4, 3, 0, TOP)
    count = int(re.search(r"(\d+) frame\(s\) cannot be decoded", finding.message).group(1))
    assert 20 <= count <= 30  # noise packets: a few may still decode as (garbage) frames
    assert "% of the frames are unreadable, more than max-bad-sample-share=0.1" in (
        finding.message)
    code, out, _ = _cli(capsys, str(broken_video), "--deep")
    assert code == 1 and f"ERROR [video] {TOP_MP4}, episode 3, frame 0, key {TOP}" in out
    # the quick check decodes only first/middle/last frames of each episode: it sees episode 3
    assert 3 in [f.episode for f in quick.findings if f.check == "video"]


def test_a_short_undecodable_stretch_is_a_warning_saying_what_will_be_skipped(
    video_demo_root, tmp_path, capsys
):
    root = copy_site(video_demo_root / "site-1", tmp_path / "site")
    corrupt_video_frames(root, TOP, episode=1, frames=range(12, 15))
    code, out, _ = _cli(capsys, str(root), "--deep", "--eval-episodes", "1")
    assert code == 0, out
    [line] = [x for x in out.splitlines() if x.startswith("WARNING")]
    assert f"WARNING [video] {TOP_MP4}, episode 1, frame" in line and f"key {TOP}" in line
    assert "training and evaluation will skip them" in line
    assert out.splitlines()[-1].startswith("OK: ")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    from certs import ensure_federation_certs

    return ensure_federation_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1"], ["lab-a"])


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("seven_d_state", "ERROR [federation] meta/info.json, key observation.state"),
        ("duplicated_timestamps", f"ERROR [timestamps] {DATA}, episode 2, frame 13, key "
                                  "timestamp"),
        ("broken_video", f"ERROR [video] {TOP_MP4}, episode 3, frame 0, key {TOP}"),
    ],
)
def test_supernode_check_refuses_each_of_the_three(
    dataset, expected, request, fed, tmp_path, monkeypatch, capsys
):
    """``zk0 supernode --check`` (which decodes every frame) refuses to start on each."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    root = request.getfixturevalue(dataset)
    args = build_parser().parse_args([
        "supernode", "--check", "--superlink", "127.0.0.1:8000",
        "--ca-cert", str(fed.ca_cert), "--site-key", str(fed.site_keys["lab-a"][0]),
        "--site-name", "lab-a", "--dataset-root", str(root), "--work-dir", str(tmp_path / "w"),
    ])  # fmt: skip
    code = launcher.run_cli(args)
    err = capsys.readouterr().err
    assert code == launcher.EXIT_CONFIG_ERROR, err
    assert "refusing to start" in err and expected in err


# -- more faults ---------------------------------------------------------------------------


def test_a_clean_dataset_passes_quick_and_deep(video_demo_root, capsys):
    for extra in ((), ("--deep",)):
        code, out, _ = _cli(capsys, str(video_demo_root / "site-0"), "--eval-episodes", "1",
                            *extra)
        assert code == 0 and out.startswith("OK: "), out


def test_joint_order_and_fps_against_a_published_expectation(demo_root, tmp_path, capsys):
    expectation = tmp_path / "federation.json"
    code, _, err = _cli(capsys, str(demo_root / "site-1"), "--write-expectation",
                        str(expectation))
    assert code == 0 and "wrote the federation's expectation" in err
    published = json.loads(expectation.read_text())
    assert published["fps"] == 30 and "observation.state" in published["features"]

    root = copy_site(demo_root / "site-0", tmp_path / "site")

    def swap_and_slow(info: dict) -> None:
        names = info["features"]["action"]["names"]
        names[0], names[1] = names[1], names[0]
        info["fps"] = 15

    edit_info(root, swap_and_slow)
    report = check_dataset(root, expect=Expectation.from_file(expectation))
    order = _only(report, "federation")
    assert order.key == "action"
    assert "joint order differs: position 0 is 'shoulder_lift.pos', expected " in order.message
    fps = [f for f in report.errors if f.check == "fps"]
    assert fps and "dataset fps 15, expected 30" in fps[0].message
    code, out, _ = _cli(capsys, str(root), "--expect", str(expectation))
    assert code == 1 and "joint order differs" in out


def test_frame_index_nan_and_split_problems(demo_root, tmp_path):
    root = copy_site(demo_root / "site-2", tmp_path / "site")
    set_value(root, 4, 7, "frame_index", 6)  # the same frame twice
    set_value(root, 1, 20, "action", lambda v: [math.nan, *v[1:]])
    report = check_dataset(root, expect=Expectation.so100(), eval_episodes=6)
    index = _only(report, "index")
    assert (index.episode, index.frame, index.key) == (4, 6, "frame_index")
    assert "duplicated frame_index" in index.message
    values = _only(report, "values")
    assert (values.episode, values.frame, values.key) == (1, 20, "action")
    assert "NaN" in values.message
    split = _only(report, "split")
    assert "6 episode(s); need at least 7" in split.message


def test_missing_video_file_and_bad_expect_file(video_demo_root, tmp_path, capsys):
    root = copy_site(video_demo_root / "site-0", tmp_path / "site")
    video_file(root, TOP).unlink()
    report = check_dataset(root, expect=Expectation.so100())
    finding = _only(report, "video")
    assert finding.file == TOP_MP4 and finding.key == TOP
    assert "video file missing: episodes 0, 1, 2, 3, 4 (150 frames)" in finding.message
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = _cli(capsys, str(root), "--expect", str(tmp_path / "bad.json"))
    assert code == 2 and "expected a JSON object with a 'features' object" in err
