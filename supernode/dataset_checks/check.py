"""Every check on a LeRobotDataset, one report: what ``zk0 check-dataset``, ``zk0 supernode``
and the site's preflight call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import features as feat
from supernode import site_dataset as ds
from supernode.dataset_checks.expectation import Expectation
from supernode.dataset_checks.findings import Finding, error
from supernode.dataset_checks.media import check_media
from supernode.dataset_checks.metadata import (
    check_federation_fit,
    check_fps,
    check_policy_fit,
    check_split,
)
from supernode.dataset_checks.tables import check_tables


@dataclass
class DatasetReport:
    """Everything one check found, with the dataset's size and what was decoded."""

    root: str
    findings: list[Finding] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    fps: int = 0
    decoded_frames: int = 0
    seconds: float = 0.0
    meta: Any = None  # LeRobotDatasetMetadata, when it could be read

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{verdict}: {self.root}: {self.episodes} episodes, {self.frames} frames at "
            f"{self.fps} fps; {len(self.errors)} error(s), {len(self.warnings)} warning(s); "
            f"{self.decoded_frames} frames decoded in {self.seconds:.1f} s"
        )


# -- the whole check -----------------------------------------------------------------------


def check_dataset(
    root: Path,
    *,
    expect: Expectation | None = None,
    eval_episodes: int = 2,
    deep: bool = False,
    max_bad_share: float = 0.1,
    repo_id: str = "local/check",
    video_backend: str = "pyav",
) -> DatasetReport:
    """Run every check on the LeRobotDataset at ``root``; never raises for a data problem."""
    start = time.perf_counter()
    root = Path(root).expanduser()
    report = DatasetReport(str(root))
    expect = expect or Expectation()
    try:
        meta = ds.read_metadata(root, repo_id)
    except ds.DatasetError as err:
        report.findings.append(error("layout", str(err)))
        report.seconds = time.perf_counter() - start
        return report
    report.meta = meta
    report.episodes, report.frames = int(meta.total_episodes), int(meta.total_frames)
    report.fps = int(meta.fps)
    spec = feat.feature_spec(meta.features)
    report.findings += check_policy_fit(spec)
    report.findings += check_federation_fit(spec, expect)
    report.findings += check_fps(meta, expect)
    report.findings += check_split(meta, eval_episodes)
    report.findings += check_tables(root, meta)
    media = check_media(root, meta, deep=deep, max_bad_share=max_bad_share,
                        video_backend=video_backend)
    report.findings += media.findings
    report.decoded_frames = media.decoded_frames
    readable = [e for e in range(report.episodes) if e not in media.missing_episodes]
    if report.ok and readable:
        report.findings += _smoke_read(root, repo_id, readable[0], video_backend)
    report.seconds = time.perf_counter() - start
    return report


def _smoke_read(root: Path, repo_id: str, episode: int, video_backend: str) -> list[Finding]:
    """Read one frame through LeRobot itself, as training will (catches what the checks above
    do not model, e.g. a table whose schema disagrees with info.json)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        dataset = LeRobotDataset(repo_id, root=root, episodes=[episode],
                                 video_backend=video_backend)
        dataset[0]
    except Exception as err:  # LeRobot, datasets, PyArrow and PyAV raise many kinds
        return [error("layout", f"LeRobot cannot read the episode's first frame: "
                      f"{type(err).__name__}: {err}", episode=episode, frame=0)]
    return []
