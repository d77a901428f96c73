"""Predicted against recorded actions on one held-out episode: what a per-joint plot shows.

A site computes it (``supernode/trajectory.py``) and either sends it to the SuperLink, which
plots it, or plots it itself and keeps it (node config ``share-trajectories = false``). This
module is the one description both sides use: the numbers, their units, and their Flower
records (``TRAJECTORY`` arrays + ``TRAJECTORY_INFO`` config, see :mod:`common.protocol`).

Units follow LeRobot's SO-100/SO-101 follower (``lerobot.robots.so_follower``, default
``use_degrees=True``): every ``<joint>.pos`` is in degrees, except the gripper, which LeRobot
normalizes to 0..100 % of its calibrated range (``MotorNormMode.RANGE_0_100``). zk0's demo data
writes the same (``demo_data``: joints in degrees, gripper 0..100). LeRobot datasets carry no
unit field, so a name that matches neither pattern is plotted without a unit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from pydantic import BeforeValidator, Field

from common.records import (
    MAX_COUNT,
    MAX_MAGNITUDE,
    RecordError,
    RecordModel,
    check_record_type,
    parse_json,
    read_array,
)

DEGREES = "deg"
GRIPPER_RANGE = "% of range"


class TrajectoryError(ValueError):
    """A trajectory record that does not describe a plottable trajectory."""


_Labels = Annotated[list[Annotated[str, Field(max_length=200)]], BeforeValidator(parse_json),
                    Field(max_length=64)]


class TrajectoryInfo(RecordModel):
    """The ``TRAJECTORY_INFO`` record next to the trajectory's arrays."""

    episode: int = Field(ge=0, le=2**40)
    fps: float = Field(gt=0.0, le=1000.0)
    names: _Labels  # JSON list of the action's element names
    units: _Labels  # JSON list, one unit per name


class KeptAtSite(RecordModel):
    """The ``TRAJECTORY_INFO`` record of a site that plotted its trajectory itself."""

    kept_at_site: Literal[True]


#: The trajectory's arrays: (dtype, dimensions) of each.
TRAJECTORY_ARRAYS = {"predicted": ("float32", 2), "recorded": ("float32", 2),
                     "frame-index": ("int64", 1), "chunk-starts": ("int64", 1)}


def joint_names(names: Any, dims: int) -> tuple[str, ...]:
    """The action feature's ``names`` (a list, or LeRobot's ``{"motors": [...]}``), or
    ``joint_0..`` when the dataset names none."""
    if isinstance(names, Mapping):
        names = next(iter(names.values()), None)
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) == dims:
        return tuple(str(n) for n in names)
    return tuple(f"joint_{i}" for i in range(dims))


def joint_unit(name: str) -> str:
    """LeRobot's SO-100 convention (module docstring); "" when the name does not say."""
    if "gripper" in name.lower():
        return GRIPPER_RANGE
    if name.endswith(".pos"):
        return DEGREES
    return ""


@dataclass(frozen=True)
class Trajectory:
    """The first frames of one held-out episode: recorded actions and the policy's.

    ``predicted[t]`` is what the policy would have commanded at frame ``t`` when run as LeRobot
    runs it: a chunk predicted at each of ``chunk_starts`` (from that frame's recorded
    observation) and executed open-loop for ``n_action_steps`` frames.
    """

    episode: int  # the dataset's episode index
    fps: float
    names: tuple[str, ...]
    units: tuple[str, ...]
    frame_index: np.ndarray  # (T,) frame numbers within the episode
    recorded: np.ndarray  # (T, D) recorded actions, real units
    predicted: np.ndarray  # (T, D) the policy's actions, real units
    chunk_starts: np.ndarray  # (K,) frames at which a chunk was predicted

    @property
    def frames(self) -> int:
        return len(self.frame_index)

    def mse_per_joint(self) -> np.ndarray:
        diff = self.predicted.astype(np.float64) - self.recorded.astype(np.float64)
        return (diff**2).mean(axis=0)

    # -- records (what travels) --------------------------------------------------------------

    def to_records(self) -> tuple[ArrayRecord, ConfigRecord]:
        arrays = ArrayRecord(
            {
                "predicted": Array(np.ascontiguousarray(self.predicted, dtype=np.float32)),
                "recorded": Array(np.ascontiguousarray(self.recorded, dtype=np.float32)),
                "frame-index": Array(np.ascontiguousarray(self.frame_index, dtype=np.int64)),
                "chunk-starts": Array(np.ascontiguousarray(self.chunk_starts, dtype=np.int64)),
            }
        )
        info = ConfigRecord(
            {
                "episode": int(self.episode),
                "fps": float(self.fps),
                "names": json.dumps(list(self.names)),
                "units": json.dumps(list(self.units)),
            }
        )
        return arrays, info

    @classmethod
    def from_records(
        cls, arrays: ArrayRecord, info: ConfigRecord, max_frames: int, dims: int
    ) -> Trajectory:
        """Read and check a site's trajectory; :class:`TrajectoryError` says what is wrong.

        ``max_frames`` and ``dims`` are what the server asked for and what the federation's
        action feature has: a reply cannot make the SuperLink plot (or store) more than that.
        """
        try:
            meta = info if isinstance(info, TrajectoryInfo) else TrajectoryInfo.from_record(
                info, "trajectory-info")
            check_record_type(arrays, ArrayRecord, "trajectory")
            if sorted(arrays.keys()) != sorted(TRAJECTORY_ARRAYS):
                raise RecordError(f"record 'trajectory': arrays {sorted(arrays.keys())}, "
                                  f"expected {sorted(TRAJECTORY_ARRAYS)}")
            values = {k: np.array(read_array(arrays[k], f"record 'trajectory' array {k!r}", *spec))
                      for k, spec in TRAJECTORY_ARRAYS.items()}
        except RecordError as err:
            raise TrajectoryError(f"unreadable trajectory record: {err}") from None
        traj = cls(meta.episode, meta.fps, tuple(meta.names), tuple(meta.units),
                   values["frame-index"], values["recorded"], values["predicted"],
                   values["chunk-starts"])
        traj.check(max_frames, dims)
        return traj

    def check(self, max_frames: int, dims: int) -> None:
        t = self.frames
        problems = []
        if not 1 <= t <= max_frames:
            problems.append(f"{t} frames (expected 1..{max_frames})")
        for key in ("recorded", "predicted"):
            value = getattr(self, key)
            if value.shape != (t, dims):
                problems.append(f"{key} has shape {value.shape}, expected ({t}, {dims})")
            elif not np.isfinite(value).all():
                problems.append(f"{key} has non-finite values")
            elif value.size and np.abs(value).max() > MAX_MAGNITUDE:
                problems.append(f"{key} has values beyond +-{MAX_MAGNITUDE:g}")
        if len(self.names) != dims or len(self.units) != dims:
            problems.append(f"{len(self.names)} names / {len(self.units)} units for {dims} dims")
        frames = self.frame_index
        if frames.shape != (t,) or (t > 1 and np.any(np.diff(frames) <= 0)) or (
                t and (frames[0] < 0 or frames[-1] > MAX_COUNT)):
            problems.append(f"frame-index is not increasing within 0..{MAX_COUNT}")
        if not (np.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps {self.fps}")
        starts = self.chunk_starts
        if starts.ndim != 1 or len(starts) > t or (
                len(starts) and frames.shape == (t,) and t
                and (starts.min() < frames[0] or starts.max() > frames[-1])):
            problems.append("chunk-starts malformed (more than the frames, or outside them)")
        if problems:
            raise TrajectoryError("; ".join(problems))

    # -- JSON (what the run folder keeps) ----------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        mse = self.mse_per_joint()
        return {
            "episode": self.episode,
            "fps": self.fps,
            "names": list(self.names),
            "units": list(self.units),
            "frame_index": self.frame_index.tolist(),
            "chunk_starts": self.chunk_starts.tolist(),
            "recorded": self.recorded.tolist(),
            "predicted": self.predicted.tolist(),
            "mse_per_joint": dict(zip(self.names, mse.tolist(), strict=True)),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Trajectory:
        return cls(
            episode=int(value["episode"]),
            fps=float(value["fps"]),
            names=tuple(value["names"]),
            units=tuple(value["units"]),
            frame_index=np.asarray(value["frame_index"], dtype=np.int64),
            recorded=np.asarray(value["recorded"], dtype=np.float32),
            predicted=np.asarray(value["predicted"], dtype=np.float32),
            chunk_starts=np.asarray(value["chunk_starts"], dtype=np.int64),
        )
