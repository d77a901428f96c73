"""Federated normalization statistics: exact global mean/std/min/max without pooling any data.

Federating a LeRobot policy naively lets every site normalize with its own dataset's stats and
then averages weights trained under different normalizations. Here each site sends only sufficient
statistics per numeric feature (count, sum, sum of squares, min, max, per dimension, float64),
the SuperLink merges them exactly, and the resulting stats are used by every site and stored in
the global checkpoint's processor files. Cameras use LeRobot's ImageNet statistics, as
``lerobot-train`` does by default (SmolVLA does not normalize images at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

_FIELDS = ("count", "sum", "sumsq", "min", "max")


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one feature over some frames (per dimension)."""

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        if len(x) == 0:
            raise ValueError("cannot compute statistics of zero frames")
        return cls(len(x), x.sum(0), np.square(x).sum(0), x.min(0), x.max(0))

    def merge(self, other: Moments) -> Moments:
        if self.sum.shape != other.sum.shape:
            raise ValueError(f"feature dims differ: {self.sum.shape} vs {other.sum.shape}")
        return Moments(
            self.count + other.count,
            self.sum + other.sum,
            self.sumsq + other.sumsq,
            np.minimum(self.min, other.min),
            np.maximum(self.max, other.max),
        )

    def finalize(self) -> dict[str, np.ndarray]:
        """LeRobot's stats dict (population std, as ``np.std`` in LeRobot's own stats)."""
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - np.square(mean), 0.0)
        return {
            "mean": mean.astype(np.float32),
            "std": np.sqrt(var).astype(np.float32),
            "min": self.min.astype(np.float32),
            "max": self.max.astype(np.float32),
            "count": np.array([self.count], dtype=np.int64),
        }


def merge_all(parts: Iterable[Mapping[str, Moments]]) -> dict[str, Moments]:
    """Merge per-site moments feature by feature; every site must report the same features."""
    merged: dict[str, Moments] = {}
    keys: set[str] | None = None
    for part in parts:
        if keys is not None and set(part) != keys:
            raise ValueError(f"sites report different numeric features: {sorted(keys)} vs "
                             f"{sorted(part)}")
        keys = set(part)
        for key, m in part.items():
            merged[key] = merged[key].merge(m) if key in merged else m
    return merged


def to_record(moments: Mapping[str, Moments]) -> ArrayRecord:
    """Moments as an ArrayRecord (keys ``<feature>/<field>``), float64 so merging stays exact."""
    record = ArrayRecord()
    for key, m in moments.items():
        for field in _FIELDS:
            value = np.asarray(getattr(m, field), dtype=np.float64).reshape(-1)
            record[f"{key}/{field}"] = Array(value)
    return record


def from_record(record: ArrayRecord) -> dict[str, Moments]:
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for name, array in record.items():
        key, field = name.rsplit("/", 1)
        grouped.setdefault(key, {})[field] = array.numpy()
    out = {}
    for key, f in grouped.items():
        missing = set(_FIELDS) - set(f)
        if missing:
            raise ValueError(f"stats for {key!r} lack {sorted(missing)}")
        out[key] = Moments(int(f["count"][0]), f["sum"], f["sumsq"], f["min"], f["max"])
    return out


def global_stats(
    moments: Mapping[str, Moments], camera_keys: Iterable[str]
) -> dict[str, dict[str, np.ndarray]]:
    """The stats every node normalizes with: merged moments + ImageNet stats for cameras."""
    from lerobot.utils.constants import IMAGENET_STATS

    stats = {key: m.finalize() for key, m in moments.items()}
    for cam in camera_keys:
        stats[cam] = {k: np.asarray(v, dtype=np.float32) for k, v in IMAGENET_STATS.items()}
    return stats


def stats_to_record(stats: Mapping[str, Mapping[str, np.ndarray]]) -> ArrayRecord:
    """Finalized stats for the train message (a few hundred bytes), keys ``<feature>/<stat>``."""
    record = ArrayRecord()
    for key, s in stats.items():
        for name, value in s.items():
            record[f"{key}/{name}"] = Array(np.asarray(value))
    return record


def stats_from_record(record: ArrayRecord) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, array in record.items():
        key, stat = name.rsplit("/", 1)
        out.setdefault(key, {})[stat] = array.numpy()
    return out
