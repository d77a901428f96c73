"""What a site's data looks like to the policy, without the data: feature names, dtypes, shapes.

Sites describe their LeRobotDataset's features with :func:`feature_spec`; the SuperLink builds
the one global policy from that description and refuses sites whose description differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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


def signature(spec: Mapping[str, Mapping[str, Any]]) -> str:
    """What must be equal for two sites to train one policy, as a canonical string: every
    feature's dtype, shape and names, except a camera's resolution (and names)."""
    canonical = {
        key: ("camera" if f["dtype"] in CAMERA_DTYPES
              else [f["dtype"], list(f["shape"]), f.get("names")])
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
