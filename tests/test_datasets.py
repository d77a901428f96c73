"""Site datasets: episode split, refusal of missing/odd datasets, feature agreement."""

from __future__ import annotations

import json
import shutil

import pytest

from common import features as feat
from common.settings import NodeConfig
from supernode import site_dataset as ds


def test_split_is_seeded_disjoint_and_complete():
    a = ds.split_episodes(12, 2, seed=0)
    assert a == ds.split_episodes(12, 2, seed=0)
    assert a != ds.split_episodes(12, 2, seed=1)
    assert len(a.eval) == 2 and len(a.train) == 10
    assert sorted(a.train + a.eval) == list(range(12))
    assert not set(a.train) & set(a.eval)


def test_split_needs_a_training_episode():
    with pytest.raises(ds.DatasetError, match=r"need at least 3"):
        ds.split_episodes(2, 2, seed=0)


def test_missing_root_is_named(tmp_path):
    node = NodeConfig(site_name="a", dataset_root=str(tmp_path / "nope"))
    with pytest.raises(ds.DatasetError, match=r"nope.*does not exist"):
        ds.open_metadata(node)


def test_folder_that_is_not_a_dataset_is_named(tmp_path):
    node = NodeConfig(site_name="a", dataset_root=str(tmp_path))
    with pytest.raises(ds.DatasetError, match=r"info.json is missing"):
        ds.open_metadata(node)


def test_old_format_is_refused(demo_root, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(demo_root / "site-0", copy)
    info = json.loads((copy / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    (copy / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ds.DatasetError, match=r"v2.1.*v3"):
        ds.open_metadata(NodeConfig(site_name="a", dataset_root=str(copy)))


def test_feature_spec_and_comparison(demo_root):
    meta = ds.open_metadata(NodeConfig(site_name="a", dataset_root=str(demo_root / "site-0")))
    spec = feat.feature_spec(meta.features)
    assert set(spec) == {"observation.state", "action", "observation.images.top",
                         "observation.images.wrist"}
    assert feat.numeric_keys(spec) == ["action", "observation.state"]
    feat.compare_specs("a", spec, spec)
    wider = json.loads(json.dumps(spec))
    wider["action"]["shape"] = [7]
    mismatch = feat.FeatureMismatchError
    with pytest.raises(mismatch, match=r"'action': float32\[6\].*expects float32\[7\]"):
        feat.compare_specs("lab-b", spec, wider)
    no_wrist = {k: v for k, v in spec.items() if k != "observation.images.wrist"}
    with pytest.raises(mismatch, match=r"lab-b.*extra feature 'observation.images.wrist'"):
        feat.compare_specs("lab-b", spec, no_wrist)
    other_res = json.loads(json.dumps(spec))
    other_res["observation.images.top"]["shape"] = [480, 640, 3]
    feat.compare_specs("a", spec, other_res)  # camera resolutions may differ: SmolVLA resizes
