"""A site's preflight checks refuse broken datasets with messages that name the problem."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from common.settings import NodeConfig
from supernode.preflight import SiteCheckError, check_site


def _node(root, **kw) -> NodeConfig:
    return NodeConfig(site_name="lab-a", dataset_root=str(root), **kw)


def test_good_site_summary(demo_root):
    summary = check_site(_node(demo_root / "site-1"))
    assert summary.episodes == 6 and summary.frames == 180 and summary.fps == 30
    assert summary.cameras == ["observation.images.top", "observation.images.wrist"]
    assert len(summary.eval_episodes) == 2 and len(summary.train_episodes) == 4
    assert "lab-a" in summary.describe() and "hold out" in summary.describe()


def test_missing_root(tmp_path):
    with pytest.raises(SiteCheckError, match=r"(?s)lab-a.*missing-dir.*does not exist"):
        check_site(_node(tmp_path / "missing-dir"))


def test_too_few_episodes(demo_root):
    with pytest.raises(SiteCheckError, match=r"(?s)6 episode.*eval-episodes=6"):
        check_site(_node(demo_root / "site-0", eval_episodes=6))


def test_missing_data_file(demo_root, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(demo_root / "site-0", copy)
    for f in (copy / "data").rglob("*.parquet"):
        f.unlink()
    with pytest.raises(SiteCheckError, match=r"lab-a"):
        check_site(_node(copy))


def test_dataset_without_camera(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "nocam"
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (6,), "names": None},
    }
    d = LeRobotDataset.create(repo_id="local/nocam", fps=30, features=features, root=root,
                              robot_type="so100", use_videos=False)
    for _ in range(3):
        for _ in range(5):
            d.add_frame({"observation.state": np.zeros(6, np.float32),
                         "action": np.zeros(6, np.float32), "task": "t"})
        d.save_episode()
    d.finalize()
    with pytest.raises(SiteCheckError, match=r"no camera feature"):
        check_site(_node(root, eval_episodes=1))
