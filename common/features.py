"""What a site's data looks like to the policy, without the data: feature names, dtypes, shapes.

Sites describe their LeRobotDataset's features with :func:`feature_spec`; the SuperLink builds
the one global policy from that description and refuses sites whose description differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# The SO-100 / SO-101 arm as LeRobot records it (lerobot's so100_follower): five joints and the
# gripper, in this order, for observation.state and action, at 30 fps.
SO100_JOINTS: tuple[str, ...] = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)
SO100_FPS = 30

# Bookkeeping columns every LeRobotDataset has; they are never policy inputs.
_BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
CAMERA_DTYPES = ("image", "video")


class FeatureMismatchError(ValueError):
    """A site's dataset features differ from the federation's (names, dtypes, shapes)."""


class FeatureSpec(BaseModel):
    """One feature as :func:`feature_spec` describes it (what a site sends at stage 0)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    dtype: str = Field(min_length=1, max_length=32)
    shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(min_length=1, max_length=4)
    names: list[str] | dict[str, list[str]] | None = None


_SPEC = TypeAdapter(dict[Annotated[str, Field(min_length=1, max_length=200)], FeatureSpec])


def checked_spec(spec: Any) -> dict[str, dict[str, Any]]:
    """``spec`` as :func:`feature_spec` makes it, or ValueError: every feature a dtype, a shape
    of 1-4 positive sizes and optional element names, and an ``action`` of one dimension
    (the policy's output; every federation has one)."""
    try:
        parsed = _SPEC.validate_python(spec, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"feature {where!r}: {first['msg']}") from None
    if len(parsed) > 64:
        raise ValueError(f"{len(parsed)} features (at most 64)")
    action = parsed.get("action")
    if action is None or len(action.shape) != 1 or action.dtype in (*CAMERA_DTYPES, "string"):
        raise ValueError("no 'action' feature of one numeric dimension")
    return {key: f.model_dump() for key, f in parsed.items()}


def feature_spec(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The policy-relevant features (observations, actions) as JSON-able dicts."""
    spec = {}
    for key, ft in features.items():
        if key in _BOOKKEEPING or not (key.startswith("observation.") or key == "action"):
            continue
        spec[key] = {
            "dtype": str(ft["dtype"]),
            "shape": [int(s) for s in ft["shape"]],
            "names": ft.get("names"),
        }
    return spec


def camera_keys(spec: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(k for k, f in spec.items() if f["dtype"] in CAMERA_DTYPES)


def numeric_keys(spec: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(k for k, f in spec.items() if f["dtype"] not in (*CAMERA_DTYPES, "string"))


def names_problem(key: str, local: Any, expected: Any) -> str | None:
    """Why a feature's element names (joint names, in order) differ, or None if they agree.

    Two sites with 6-D state but joints in another order would otherwise be averaged
    element by element: shoulder into wrist, silently.
    """
    if local == expected:
        return None
    a, b = _name_list(local), _name_list(expected)
    if a is not None and a == b:  # the same names, wrapped differently ({"motors": [...]})
        return None
    if a is not None and b is not None and sorted(a) == sorted(b):
        at = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        return (f"feature {key!r}: same names in another order (position {at}: {a[at]!r}, "
                f"the federation has {b[at]!r}): {a} vs {b}")
    return f"feature {key!r}: names {local} but the federation has {expected}"


def _name_list(names: Any) -> list[str] | None:
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict) and len(names) == 1:  # e.g. {"motors": [...]}
        return _name_list(next(iter(names.values())))
    return None


def _canonical_names(names: Any) -> Any:
    """Element names as a plain list where they are one ({"motors": [...]} and [...] agree)."""
    flat = _name_list(names)
    return flat if flat is not None else names


def signature(spec: Mapping[str, Mapping[str, Any]]) -> str:
    """What must be equal for two sites to train one policy, as a canonical string: every
    feature's dtype, shape and names, except a camera's resolution (and names)."""
    canonical = {
        key: ("camera" if f["dtype"] in CAMERA_DTYPES
              else [f["dtype"], list(f["shape"]), _canonical_names(f.get("names"))])
        for key, f in spec.items()
    }
    return json.dumps(canonical, sort_keys=True)


def compare_specs(site: str, local: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a dataset whose features differ from the federation's (names, dtypes, shapes,
    and the element names of state/action: joint names in order).

    Camera resolutions may differ between labs (SmolVLA resizes every image); the set of
    cameras, and the state/action dimensions and joints, may not.
    """
    problems = []
    for key in sorted(set(expected) - set(local)):
        problems.append(f"missing feature {key!r} (expected {expected[key]['shape']})")
    for key in sorted(set(local) - set(expected)):
        problems.append(f"extra feature {key!r} not in the federation's policy")
    for key in sorted(set(local) & set(expected)):
        a, b = local[key], expected[key]
        is_cam = a["dtype"] in CAMERA_DTYPES and b["dtype"] in CAMERA_DTYPES
        if not is_cam and (a["dtype"] != b["dtype"] or list(a["shape"]) != list(b["shape"])):
            problems.append(
                f"feature {key!r}: {a['dtype']}{a['shape']} but the federation expects "
                f"{b['dtype']}{b['shape']}"
            )
        elif not is_cam and (problem := names_problem(key, a.get("names"), b.get("names"))):
            problems.append(problem)
    if problems:
        raise FeatureMismatchError(
            f"site {site!r}: dataset features do not match: " + "; ".join(problems)
        )
