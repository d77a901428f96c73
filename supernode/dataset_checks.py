"""Is a LeRobotDataset fit to join the federation? Every problem named by file, episode, frame
and key, with what was expected.

A site that joins with a broken dataset fails (or, worse, trains on garbage) in every round,
an hour apart, on the coordinator's console. These checks run on the lab's box before its
SuperNode connects (``zk0 check-dataset``, ``zk0 supernode``, ``zk0 supernode --check``) and
in the ClientApp's reach (nothing here imports the deploy side):

- against the **policy**: ``observation.state`` and ``action`` present, 1-D, at most SmolVLA's
  32 dims, float; at least one camera of shape (H, W, 3);
- against the **federation** (:class:`Expectation`: a features JSON the coordinator publishes,
  or the SO-100 defaults): feature names, joint names and their order, shapes, dtypes, cameras,
  fps;
- the **tables** (:mod:`supernode.table_checks`): episode and frame indices, timestamps
  increasing and on the fps grid, duplicated timestamps or frames, non-finite values;
- the **media** (:mod:`supernode.media_checks`): every video file there, its frames present
  for each episode; a few frames of each episode decoded, or every frame with ``deep``;
- the **split**: enough episodes to hold ``eval_episodes`` out and train on the rest.

An error makes the check fail (exit 1); a warning is what training survives, and says what it
will skip: unreadable frames or episodes with a missing file are skipped and counted in each
round (:mod:`supernode.sample_guard`), up to ``max-bad-sample-share`` of the data, past which
they are errors here too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common import features as feat
from supernode import site_dataset as ds

# SmolVLA pads state and action vectors to 32 dims (max_state_dim / max_action_dim).
MAX_STATE_DIM = 32
MAX_ACTION_DIM = 32
_FLOAT_DTYPES = ("float32", "float64", "float16")

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, which check, where (file, episode, frame, key), and what was
    expected."""

    severity: Severity
    check: str  # layout | features | federation | fps | tables | timestamps | index | values
    #             | video | images | split
    message: str
    file: str | None = None  # relative to the dataset root
    episode: int | None = None
    frame: int | None = None
    key: str | None = None

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.episode is not None:
            parts.append(f"episode {self.episode}")
        if self.frame is not None:
            parts.append(f"frame {self.frame}")
        if self.key:
            parts.append(f"key {self.key}")
        return ", ".join(parts)

    def line(self) -> str:
        where = self.where()
        return f"{self.severity.upper()} [{self.check}] " + (
            f"{where}: {self.message}" if where else self.message
        )


def error(check: str, message: str, **where: Any) -> Finding:
    return Finding("error", check, message, **where)


def warning(check: str, message: str, **where: Any) -> Finding:
    return Finding("warning", check, message, **where)


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


@dataclass
class DatasetReport:
    """Everything one check found, with the dataset's size and what was decoded."""

    root: str
    findings: list[Finding] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    fps: int = 0
    decoded_frames: int = 0
    seconds: float = 0.0
    meta: Any = None  # LeRobotDatasetMetadata, when it could be read

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{verdict}: {self.root}: {self.episodes} episodes, {self.frames} frames at "
            f"{self.fps} fps; {len(self.errors)} error(s), {len(self.warnings)} warning(s); "
            f"{self.decoded_frames} frames decoded in {self.seconds:.1f} s"
        )


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


# -- the whole check -----------------------------------------------------------------------


def check_dataset(
    root: Path,
    *,
    expect: Expectation | None = None,
    eval_episodes: int = 2,
    deep: bool = False,
    max_bad_share: float = 0.1,
    repo_id: str = "local/check",
    video_backend: str = "pyav",
) -> DatasetReport:
    """Run every check on the LeRobotDataset at ``root``; never raises for a data problem."""
    from supernode import media_checks, table_checks

    start = time.perf_counter()
    root = Path(root).expanduser()
    report = DatasetReport(str(root))
    expect = expect or Expectation()
    try:
        meta = ds.read_metadata(root, repo_id)
    except ds.DatasetError as err:
        report.findings.append(error("layout", str(err)))
        report.seconds = time.perf_counter() - start
        return report
    report.meta = meta
    report.episodes, report.frames = int(meta.total_episodes), int(meta.total_frames)
    report.fps = int(meta.fps)
    spec = feat.feature_spec(meta.features)
    report.findings += check_policy_fit(spec)
    report.findings += check_federation_fit(spec, expect)
    report.findings += check_fps(meta, expect)
    report.findings += check_split(meta, eval_episodes)
    report.findings += table_checks.check_tables(root, meta)
    media = media_checks.check_media(root, meta, deep=deep, max_bad_share=max_bad_share,
                                     video_backend=video_backend)
    report.findings += media.findings
    report.decoded_frames = media.decoded_frames
    readable = [e for e in range(report.episodes) if e not in media.missing_episodes]
    if report.ok and readable:
        report.findings += _smoke_read(root, repo_id, readable[0], video_backend)
    report.seconds = time.perf_counter() - start
    return report


def _smoke_read(root: Path, repo_id: str, episode: int, video_backend: str) -> list[Finding]:
    """Read one frame through LeRobot itself, as training will (catches what the checks above
    do not model, e.g. a table whose schema disagrees with info.json)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        dataset = LeRobotDataset(repo_id, root=root, episodes=[episode],
                                 video_backend=video_backend)
        dataset[0]
    except Exception as err:  # LeRobot, datasets, PyArrow and PyAV raise many kinds
        return [error("layout", f"LeRobot cannot read the episode's first frame: "
                      f"{type(err).__name__}: {err}", episode=episode, frame=0)]
    return []
