"""Federated normalization statistics equal the statistics of the pooled data."""

from __future__ import annotations

import numpy as np
import pytest

from common import features as feat
from common.norm_stats import (
    Moments,
    from_record,
    global_stats,
    merge_all,
    stats_from_record,
    stats_to_record,
    to_record,
)
from supernode import site_dataset as ds
from supernode.local_site import Site


def test_merge_equals_pooled_on_random_parts():
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc=10 * i, scale=1 + i, size=(50 + 13 * i, 6)) for i in range(4)]
    merged = merge_all([{"x": Moments.of(p)} for p in parts])["x"].finalize()
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(merged["mean"], pooled.mean(0), rtol=1e-6)
    np.testing.assert_allclose(merged["std"], pooled.std(0), rtol=1e-5)
    np.testing.assert_array_equal(merged["min"], pooled.min(0).astype(np.float32))
    np.testing.assert_array_equal(merged["max"], pooled.max(0).astype(np.float32))
    assert int(merged["count"][0]) == len(pooled)


def test_record_round_trip_is_exact():
    m = {"action": Moments.of(np.arange(12.0).reshape(4, 3))}
    back = from_record(to_record(m))["action"]
    assert back.count == 4
    np.testing.assert_array_equal(back.sumsq, m["action"].sumsq)


def test_sites_with_different_features_are_refused():
    a = {"action": Moments.of(np.ones((2, 6)))}
    b = {"observation.state": Moments.of(np.ones((2, 6)))}
    with pytest.raises(ValueError, match=r"different numeric features"):
        merge_all([a, b])
    with pytest.raises(ValueError, match=r"dims differ"):
        Moments.of(np.ones((2, 6))).merge(Moments.of(np.ones((2, 5))))


def test_federated_stats_equal_pooled_stats_of_training_episodes(demo_root, tiny_run):
    """Each real site sends only moments of its training episodes; merged == pooled data."""
    sites = [
        Site.open({"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}")},
                  tiny_run.to_flwr())
        for i in range(4)
    ]
    merged = merge_all(from_record(to_record(s.moments())) for s in sites)
    pooled: dict[str, list[np.ndarray]] = {"action": [], "observation.state": []}
    for s in sites:
        frames = ds.open_dataset(s.node, s.split.train)
        for key in pooled:  # read frame by frame through LeRobot's own __getitem__
            pooled[key].append(np.stack([frames[i][key].numpy() for i in range(len(frames))]))
    cams = feat.camera_keys(sites[0].spec)
    stats = stats_from_record(stats_to_record(global_stats(merged, cams)))
    for key, chunks in pooled.items():
        data = np.concatenate(chunks).astype(np.float64)
        np.testing.assert_allclose(stats[key]["mean"], data.mean(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(stats[key]["std"], data.std(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stats[key]["min"], data.min(0), rtol=1e-6)
        np.testing.assert_allclose(stats[key]["max"], data.max(0), rtol=1e-6)
        assert int(stats[key]["count"][0]) == len(data)
    # held-out episodes are not in the stats: the count is train frames only
    assert int(stats["action"]["count"][0]) == sum(s.info().train_frames for s in sites)
    assert set(cams) == {"observation.images.top", "observation.images.wrist"}
    np.testing.assert_allclose(stats[cams[0]]["mean"].ravel(), [0.485, 0.456, 0.406])
