"""Checks a lab runs before its SuperNode connects: is the dataset there, whole, and usable?

A SuperNode that joins with a broken dataset fails in every round, an hour apart, on the
coordinator's console. These checks run on the lab's box in seconds and refuse with a message
that names the path, key or value and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common import features as feat
from common.settings import NodeConfig, RunConfig
from supernode import site_dataset as ds
from supernode.dataset_checks.check import DatasetReport, check_dataset
from supernode.dataset_checks.expectation import Expectation


class SiteCheckError(ValueError):
    """The site's settings or dataset cannot take part in a federation."""


@dataclass(frozen=True)
class SiteSummary:
    site_name: str
    root: str
    episodes: int
    frames: int
    fps: int
    train_episodes: tuple[int, ...]
    eval_episodes: tuple[int, ...]
    features: dict[str, Any]
    cameras: list[str]
    warnings: list[str] = field(default_factory=list)  # what training survives and will skip

    def describe(self) -> str:
        state = self.features["observation.state"]["shape"]
        action = self.features["action"]["shape"]
        return (
            f"site {self.site_name}: {self.episodes} episodes, {self.frames} frames at "
            f"{self.fps} fps in {self.root}; state {state}, action {action}, cameras "
            f"{', '.join(self.cameras)}; train on {len(self.train_episodes)} episodes, hold "
            f"out {list(self.eval_episodes)}"
        )


def check_site(
    node: NodeConfig,
    expect: Expectation | None = None,
    *,
    deep: bool = False,
    max_bad_share: float | None = None,
) -> SiteSummary:
    """Check the site's dataset (:func:`supernode.dataset_checks.check.check_dataset`) against the
    policy and ``expect`` (default: policy only), then split it.

    Raises :class:`SiteCheckError` with one line per error (file, episode, frame, key, what was
    expected); warnings (what training survives) come back in the summary. ``max_bad_share``
    defaults to the run config's ``max-bad-sample-share`` default.
    """
    if max_bad_share is None:
        max_bad_share = RunConfig.model_fields["max_bad_sample_share"].default
    root = ds.dataset_root(node)
    where = root or node.repo_id
    if root is None:  # a Hub dataset: nothing local to check beyond what LeRobot reads
        try:
            meta = ds.open_metadata(node)
        except ds.DatasetError as err:
            raise SiteCheckError(f"site {node.site_name!r}: {err}") from None
        report = DatasetReport(str(where), meta=meta)
    else:
        report = check_dataset(
            root, expect=expect, eval_episodes=node.eval_episodes, deep=deep,
            max_bad_share=max_bad_share, repo_id=node.repo_id,
            video_backend=node.video_backend,
        )
    if report.errors:
        lines = "\n".join(f.line() for f in report.errors)
        raise SiteCheckError(
            f"site {node.site_name!r}: dataset {where} cannot take part "
            f"({len(report.errors)} error(s)):\n{lines}"
        )
    meta = report.meta
    split = ds.split_episodes(meta.total_episodes, node.eval_episodes, node.split_seed)
    spec = feat.feature_spec(meta.features)
    return SiteSummary(
        site_name=node.site_name,
        root=str(where),
        episodes=meta.total_episodes,
        frames=meta.total_frames,
        fps=int(meta.fps),
        train_episodes=split.train,
        eval_episodes=split.eval,
        features=spec,
        cameras=feat.camera_keys(spec),
        warnings=[f.line() for f in report.warnings],
    )
