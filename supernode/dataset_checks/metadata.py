"""The dataset's declared features and size (``meta/info.json``) against the policy, the
federation's expectation, its own videos' fps, and the train/eval split."""

from __future__ import annotations

from typing import Any

from common import features as feat
from supernode.dataset_checks.expectation import Expectation
from supernode.dataset_checks.findings import Finding, error, warning

# SmolVLA pads state and action vectors to 32 dims (max_state_dim / max_action_dim).
MAX_STATE_DIM = 32
MAX_ACTION_DIM = 32
_FLOAT_DTYPES = ("float32", "float64", "float16")

# -- features ------------------------------------------------------------------------------


def check_policy_fit(spec: dict[str, Any]) -> list[Finding]:
    """What any SmolVLA-style policy needs: state and action vectors, at least one camera."""
    out = []
    where = {"file": "meta/info.json"}
    for key, limit in (("observation.state", MAX_STATE_DIM), ("action", MAX_ACTION_DIM)):
        if key not in spec:
            out.append(error("features", f"feature {key!r} is missing", key=key, **where))
            continue
        shape, dtype = spec[key]["shape"], spec[key]["dtype"]
        if len(shape) != 1 or not 1 <= shape[0] <= limit:
            out.append(error("features", f"shape {shape}, expected (n,) with n <= {limit}",
                             key=key, **where))
        if dtype not in _FLOAT_DTYPES:
            out.append(error("features", f"dtype {dtype}, expected a float (float32)",
                             key=key, **where))
    cameras = feat.camera_keys(spec)
    if not cameras:
        out.append(error("features", "no camera feature (dtype image or video): a VLA policy "
                         "needs one", **where))
    for cam in cameras:
        shape = spec[cam]["shape"]
        if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
            out.append(error("features", f"shape {shape}, expected (H, W, 3)", key=cam,
                             **where))
    return out


def _first_difference(got: list, want: list) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"position {i} is {a!r}, expected {b!r}"
    return f"{len(got)} names, expected {len(want)}"


def check_federation_fit(spec: dict[str, Any], expect: Expectation) -> list[Finding]:
    """Feature names, joint names and order, shapes, dtypes and cameras against ``expect``."""
    if expect.features is None:
        return []
    out = []
    where = {"file": "meta/info.json"}
    src = f"(expected by {expect.source})"
    wanted = expect.features
    expected_cams = feat.camera_keys(wanted)
    for key in sorted(set(wanted) - set(spec)):
        out.append(error("federation", f"feature missing: expected {wanted[key]['dtype']}"
                         f"{wanted[key]['shape']} {src}", key=key, **where))
    # The SO-100 defaults name no cameras: then any camera set is fine. A published spec names
    # them, and the federation's policy has exactly those inputs.
    for key in sorted(set(spec) - set(wanted)):
        if spec[key]["dtype"] in feat.CAMERA_DTYPES and not expected_cams:
            continue
        out.append(error("federation", f"extra feature not in the federation's policy {src}",
                         key=key, **where))
    for key in sorted(set(spec) & set(wanted)):
        a, b = spec[key], wanted[key]
        if a["dtype"] in feat.CAMERA_DTYPES and b["dtype"] in feat.CAMERA_DTYPES:
            continue  # resolutions may differ between labs: the policy resizes every image
        if list(a["shape"]) != list(b["shape"]) or a["dtype"] != b["dtype"]:
            out.append(error("federation", f"{a['dtype']}{list(a['shape'])}, expected "
                             f"{b['dtype']}{list(b['shape'])} {src}", key=key, **where))
            continue
        got_names, want_names = a.get("names"), b.get("names")
        if want_names and not got_names:
            out.append(warning("federation", f"no names declared, so the joint order cannot be "
                               f"checked; expected {want_names} {src}", key=key, **where))
        elif want_names and list(got_names) != list(want_names):
            same_set = sorted(map(str, got_names)) == sorted(map(str, want_names))
            what = "joint order differs" if same_set else "joint names differ"
            first = _first_difference(list(got_names), list(want_names))
            out.append(error("federation", f"{what}: {first}; got {list(got_names)}, expected "
                             f"{list(want_names)} {src}", key=key, **where))
    return out


def check_fps(meta, expect: Expectation) -> list[Finding]:
    out = []
    fps = float(meta.fps)
    if expect.fps is not None and fps != expect.fps:
        out.append(error("fps", f"dataset fps {meta.fps}, expected {expect.fps} "
                         f"(expected by {expect.source})", file="meta/info.json"))
    for key in meta.video_keys:
        info = meta.features[key].get("info") or {}
        video_fps = info.get("video.fps")
        if video_fps is not None and float(video_fps) != fps:
            out.append(error("fps", f"video.fps {video_fps} differs from the dataset's fps "
                             f"{meta.fps}: frames would be fetched at the wrong times",
                             file="meta/info.json", key=key))
    return out


def check_split(meta, eval_episodes: int) -> list[Finding]:
    total = int(meta.total_episodes)
    if total < eval_episodes + 1:
        return [error("split", f"dataset has {total} episode(s); need at least "
                      f"{eval_episodes + 1} (eval-episodes={eval_episodes} held out + 1 to "
                      "train on)")]
    if total - eval_episodes < 2:
        return [warning("split", f"only {total - eval_episodes} episode(s) left to train on "
                        f"after holding out {eval_episodes}")]
    return []
