"""What the federation expects of a site's data: a features JSON the coordinator publishes, a
reference dataset, or the SO-100 defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import features as feat


@dataclass(frozen=True)
class Expectation:
    """What the federation expects of a site's data (None: not checked)."""

    features: dict[str, dict[str, Any]] | None = None  # common.features.feature_spec form
    fps: int | None = None
    source: str = "policy only"

    @classmethod
    def so100(cls) -> Expectation:
        """An SO-100/SO-101 arm: 6 joints in LeRobot's order, at 30 fps, any cameras."""
        joints = {"dtype": "float32", "shape": [len(feat.SO100_JOINTS)],
                  "names": list(feat.SO100_JOINTS)}
        return cls({"observation.state": joints, "action": dict(joints)}, feat.SO100_FPS,
                   "SO-100 defaults")

    @classmethod
    def from_file(cls, path: Path) -> Expectation:
        """A features JSON: ``{"features": {...}, "fps": 30}`` as the coordinator publishes it
        (``zk0 check-dataset --write-expectation``), a run's ``run.json``, a reference
        dataset's ``meta/info.json``, or a bare feature spec."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"expectation file {path}: unreadable ({err})") from None
        spec = data.get("features", data) if isinstance(data, dict) else None
        if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
            raise ValueError(
                f"expectation file {path}: expected a JSON object with a 'features' object "
                "(key -> {dtype, shape, names}) and optionally 'fps'"
            )
        try:
            spec = feat.feature_spec(spec)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"expectation file {path}: bad feature entry ({err})") from None
        fps = data.get("fps")
        return cls(spec, int(fps) if isinstance(fps, int | float) else None, str(path))

    @classmethod
    def of_dataset(cls, meta, source: str) -> Expectation:
        """The expectation a reference dataset sets (its features, names and fps)."""
        return cls(feat.feature_spec(meta.features), int(meta.fps), source)

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "fps": self.fps}


def resolve_expectation(value: str | Path | None) -> Expectation:
    """``"so100"`` (default), ``"none"`` (policy only) or a path to a features JSON."""
    if value is None or str(value) == "so100":
        return Expectation.so100()
    if str(value) == "none":
        return Expectation()
    return Expectation.from_file(Path(value))
