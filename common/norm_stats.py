"""Federated normalization statistics: exact global mean/std/min/max without pooling any data.

Federating a LeRobot policy naively lets every site normalize with its own dataset's stats and
then averages weights trained under different normalizations. Here each site sends only sufficient
statistics per numeric feature (count, sum, sum of squares, min, max, per dimension, float64),
the SuperLink merges them exactly, and the resulting stats are used by every site and stored in
the global checkpoint's processor files. Cameras use LeRobot's ImageNet statistics, as
``lerobot-train`` does by default (SmolVLA does not normalize images at all).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from common import features as feat
from common.records import MAX_COUNT, MAX_MAGNITUDE, RecordError, check_record_type, read_array

_FIELDS = ("count", "sum", "sumsq", "min", "max")
#: Relative slack of the consistency checks (float64 sums over up to MAX_COUNT frames).
_SLACK = 1e-6


class StatsError(ValueError):
    """A site's statistics that cannot be what it says they are (named feature and why)."""


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


def from_record(record: Any, name: str = "moments") -> dict[str, Moments]:
    """A site's moments (:func:`to_record`), or :class:`RecordError`: keys
    ``<feature>/<field>`` with exactly the five fields per feature, each a 1-D float64 array,
    ``count`` one whole number of frames, the other four of one length."""
    check_record_type(record, ArrayRecord, name)
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key in record:
        feature, _, field = key.rpartition("/")
        if not feature or field not in _FIELDS:
            raise RecordError(f"record '{name}': key {key!r}: expected '<feature>/<field>' with "
                              f"field one of {list(_FIELDS)}")
        grouped.setdefault(feature, {})[field] = read_array(
            record[key], f"record '{name}' key {key!r}", "float64", 1)
    out = {}
    for feature, f in grouped.items():
        missing = sorted(set(_FIELDS) - set(f))
        if missing:
            raise RecordError(f"record '{name}': feature {feature!r} lacks {missing}")
        count = f["count"]
        if count.shape != (1,) or not (1 <= count[0] <= MAX_COUNT) or count[0] != int(count[0]):
            raise RecordError(f"record '{name}': feature {feature!r}: count {count.tolist()} is "
                              f"not one whole number of frames in 1..{MAX_COUNT}")
        dims = {f[k].shape for k in ("sum", "sumsq", "min", "max")}
        if len(dims) != 1 or f["sum"].size == 0:
            raise RecordError(f"record '{name}': feature {feature!r}: sum, sumsq, min and max "
                              f"have shapes {sorted(dims)}, expected one non-empty length")
        out[feature] = Moments(int(count[0]), *(np.array(f[k]) for k in _FIELDS[1:]))
    return out


def check(moments: Mapping[str, Moments], spec: Mapping[str, Any], frames: int) -> None:
    """Raise :class:`StatsError` unless ``moments`` can be statistics of ``frames`` frames of
    data with the features ``spec``: one entry per numeric feature with its size, every
    count equal to ``frames``, finite values, ``min <= mean <= max``, and a variance between 0
    and ``((max - min) / 2)^2`` (no spread wider than the range allows) in every dimension."""
    expected = feat.numeric_keys(spec)
    if sorted(moments) != expected:
        raise StatsError(f"statistics of {sorted(moments)}, the features' numeric ones are "
                         f"{expected}")
    for key, m in moments.items():
        dims = math.prod(spec[key]["shape"])
        problem = _problem(m, dims, frames)
        if problem:
            raise StatsError(f"statistics of {key!r}: {problem}")


def _problem(m: Moments, dims: int, frames: int) -> str:
    if m.sum.shape != (dims,):
        return f"{m.sum.shape[0]} dimensions, the feature has {dims}"
    if m.count != frames:
        return f"count {m.count}, but the site declared {frames} training frames"
    values = np.stack([m.sum, m.sumsq, m.min, m.max])
    if not np.isfinite(values).all():
        return "NaN or Inf values"
    if np.abs(m.min).max() > MAX_MAGNITUDE or np.abs(m.max).max() > MAX_MAGNITUDE:
        return f"values beyond +-{MAX_MAGNITUDE:g}"
    with np.errstate(over="ignore", invalid="ignore"):  # a huge sum: refused just below
        mean = m.sum / m.count
        var = m.sumsq / m.count - np.square(mean)
    scale = np.maximum(1.0, np.maximum(np.abs(m.min), np.abs(m.max)))
    checks = {
        "min > max": m.min > m.max,
        "mean outside [min, max]": (mean < m.min - _SLACK * scale)
        | (mean > m.max + _SLACK * scale),
        "negative variance": var < -_SLACK * np.square(scale),
        "variance wider than the range allows": var
        > np.square((m.max - m.min) / 2) + _SLACK * np.square(scale),
    }
    for what, bad in checks.items():
        if bad.any():
            return f"{what} in dimension {int(np.argmax(bad))}"
    return ""


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
