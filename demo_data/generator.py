"""Synthetic SO-100 demonstrations, one task archetype per site, written as LeRobot v3 datasets.

Real lab data cannot ship with the repo and the Hub is not always reachable, yet a federation
needs data with two properties to be worth testing: it must be *learnable* (the next actions
follow from what the policy observes) and *heterogeneous* (a policy trained on one lab's data
alone does badly on another lab's), while sharing enough structure (same robot, same dynamics)
that pooling the labs' knowledge helps.

The simulated world: a table seen from a fixed top camera, an SO-100 arm with a wrist camera.
The arm's joints are a fixed smooth function of an end-effector pose ``(x, y, h, roll, grip)``
(lateral position, reach, height, wrist roll, gripper opening) shared by every site. Each site
runs one task archetype: its objects (colours, where they lie), its key poses (approach path,
wrist roll, gripper timing) and its table colour differ. An episode draws the object positions
at random from the site's distribution, interpolates the site's key poses with minimum-jerk
segments (the operator's commands), and the follower arm tracks the commands with a lag plus
noise. ``action[t]`` is the command for step t+1, ``observation.state[t]`` the measured joints.
Objects are drawn at their positions in the top camera (and move once grasped, pushed or pulled),
so the goal can be read from the pixels; the wrist camera shows the objects relative to the
gripper and the gripper jaws, so it changes with the arm pose, the gripper and the progress.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FPS = 30
ROBOT_TYPE = "so100"
STATE_NAMES: list[str] = [
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
]
CAMERA_KEYS: tuple[str, str] = ("observation.images.top", "observation.images.wrist")
SITE_TASKS: list[str] = [
    "pick the red cube and place it in the bowl",
    "stack the green block on the blue block",
    "push the yellow cube to the left",
    "open the drawer",
]

# Colours (RGB) of the scene; tests and feature extractors find objects by these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 175, 50),
    "blue": (40, 70, 215),
    "yellow": (225, 205, 35),
    "bowl": (245, 245, 245),
    "drawer": (125, 75, 35),
    "handle": (20, 20, 20),
    "arm": (95, 95, 95),
    "gripper": (55, 55, 55),
}
# Each lab has its own table and lighting: the images differ even where the tasks look alike.
# PNG encoding releases the GIL: two writer threads overlap it with simulation (~20% faster).
_IMAGE_WRITER_THREADS = 2
_TABLES: list[tuple[int, int, int]] = [
    (190, 165, 130),
    (160, 165, 175),
    (165, 185, 160),
    (185, 175, 195),
]


@dataclass(frozen=True)
class DemoSpec:
    """Everything that shapes the generated data; same spec -> byte-identical frames."""

    num_sites: int = 4
    episodes_per_site: int = 12
    frames_per_episode: int = 60
    image_height: int = 64
    image_width: int = 64
    seed: int = 0
    use_videos: bool = False

    def __post_init__(self) -> None:
        if self.num_sites < 1 or self.episodes_per_site < 1:
            raise ValueError("num_sites and episodes_per_site must be >= 1")
        # Fewer frames than key poses would skip whole phases of the task.
        if self.frames_per_episode < 10:
            raise ValueError(f"frames_per_episode must be >= 10, got {self.frames_per_episode}")
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError("images must be at least 16x16 pixels for the objects to be visible")


# ---------------------------------------------------------------------------------------------
# Kinematics shared by every site (the same robot everywhere).

# Home pose (x, y, h, roll, grip): every episode starts here, at every site.
_HOME = np.array([0.0, 0.15, 0.8, 0.0, 20.0])


def pose_to_joints(pose: np.ndarray) -> np.ndarray:
    """Map end-effector poses ``(..., 5)`` to SO-100 joint positions ``(..., 6)`` in degrees.

    Not a faithful SO-100 model, but smooth, invertible and mildly nonlinear like real
    kinematics, with ranges similar to the real datasets (joints within about ±100 degrees,
    gripper 0..100).
    """
    x, y, h, roll, grip = np.moveaxis(np.asarray(pose, dtype=np.float64), -1, 0)
    pan = 60.0 * np.sin(0.9 * x)
    lift = -75.0 + 80.0 * y + 25.0 * h
    elbow = 75.0 - 70.0 * y + 35.0 * h
    wrist_flex = 55.0 - 20.0 * y - 45.0 * h
    return np.stack([pan, lift, elbow, wrist_flex, roll, grip], axis=-1)


def joints_to_pose(joints: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pose_to_joints` (wrist_flex is redundant and ignored): where the
    cameras see the arm is where the arm really is, not where it was commanded to be."""
    j = np.asarray(joints, dtype=np.float64)
    x = np.arcsin(np.clip(j[..., 0] / 60.0, -1.0, 1.0)) / 0.9
    # Solve [80 25; -70 35] @ [y, h] = [lift + 75, elbow - 75].
    a, b = j[..., 1] + 75.0, j[..., 2] - 75.0
    det = 80.0 * 35.0 + 70.0 * 25.0
    y = (35.0 * a - 25.0 * b) / det
    h = (70.0 * a + 80.0 * b) / det
    return np.stack([x, y, h, j[..., 4], j[..., 5]], axis=-1)


def _min_jerk(s: np.ndarray) -> np.ndarray:
    """Minimum-jerk time scaling: how people move between two poses (zero end velocities)."""
    return s**3 * (10.0 - 15.0 * s + 6.0 * s**2)


def _interpolate(keys: list[tuple[float, np.ndarray]], times: np.ndarray) -> np.ndarray:
    """Poses at ``times`` (fractions of the episode) along minimum-jerk segments between keys."""
    kt = np.array([k[0] for k in keys])
    kp = np.stack([k[1] for k in keys])
    seg = np.clip(np.searchsorted(kt, times, side="right") - 1, 0, len(kt) - 2)
    t0, t1 = kt[seg], kt[seg + 1]
    s = np.clip((times - t0) / np.maximum(t1 - t0, 1e-9), 0.0, 1.0)
    w = _min_jerk(s)[:, None]
    return kp[seg] * (1.0 - w) + kp[seg + 1] * w


# ---------------------------------------------------------------------------------------------
# Site archetypes.


@dataclass(frozen=True)
class _Plan:
    """One episode's script: key poses, and which object rides with the gripper when."""

    keys: list[tuple[float, np.ndarray]]
    objects: dict[str, np.ndarray]  # name -> (x, y) at the start
    carried: str | None = None
    carry_window: tuple[float, float] = (1.0, 1.0)
    carry_offset: tuple[float, float] = (0.0, 0.0)
    carry_axes: tuple[bool, bool] = (True, True)  # a drawer only moves along y
    static: dict[str, np.ndarray] = field(default_factory=dict)  # drawn but never moved
    grasps: bool = True  # the carried object sits between the jaws (not pushed)


def _p(x: float, y: float, h: float, roll: float, grip: float) -> np.ndarray:
    return np.array([x, y, h, roll, grip])


def _plan_pick_place(rng: np.random.Generator) -> _Plan:
    """Red cube somewhere on the left, bowl on the right; wide grip, late release."""
    cx, cy = rng.uniform(-0.8, -0.15), rng.uniform(0.35, 0.85)
    bx, by = rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.7)
    return _Plan(
        keys=[
            (0.0, _HOME),
            (0.22, _p(cx, cy, 0.45, 0.0, 85.0)),
            (0.36, _p(cx, cy, 0.05, 0.0, 85.0)),
            (0.44, _p(cx, cy, 0.05, 0.0, 5.0)),
            (0.56, _p(cx, cy, 0.5, 0.0, 5.0)),
            (0.78, _p(bx, by, 0.35, 0.0, 5.0)),
            (0.86, _p(bx, by, 0.35, 0.0, 85.0)),
            (1.0, _p(0.5 * bx, 0.3, 0.7, 0.0, 40.0)),
        ],
        objects={"red": np.array([cx, cy])},
        static={"bowl": np.array([bx, by])},
        carried="red",
        carry_window=(0.44, 0.86),
    )


def _plan_stack(rng: np.random.Generator) -> _Plan:
    """Green block on the right onto a blue block at the back left; wrist rolled 45 degrees."""
    gx, gy = rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.6)
    bx, by = rng.uniform(-0.7, 0.0), rng.uniform(0.5, 0.9)
    roll = 45.0
    return _Plan(
        keys=[
            (0.0, _HOME),
            (0.18, _p(gx, gy, 0.4, roll, 60.0)),
            (0.30, _p(gx, gy, 0.08, roll, 60.0)),
            (0.38, _p(gx, gy, 0.08, roll, 10.0)),
            (0.50, _p(gx, gy, 0.55, roll, 10.0)),
            (0.75, _p(bx, by, 0.25, roll, 10.0)),
            (0.82, _p(bx, by, 0.25, roll, 60.0)),
            (1.0, _p(bx, by, 0.8, 0.5 * roll, 30.0)),
        ],
        objects={"green": np.array([gx, gy])},
        static={"blue": np.array([bx, by])},
        carried="green",
        carry_window=(0.38, 0.82),
    )


def _plan_push(rng: np.random.Generator) -> _Plan:
    """Yellow cube pushed leftwards by a closed gripper held low, wrist rolled -60 degrees."""
    cx, cy = rng.uniform(-0.2, 0.6), rng.uniform(0.3, 0.9)
    roll = -60.0
    return _Plan(
        keys=[
            (0.0, _HOME),
            (0.15, _p(0.3 * cx, 0.3, 0.7, roll, 0.0)),
            (0.30, _p(cx + 0.25, cy, 0.3, roll, 0.0)),
            (0.42, _p(cx + 0.15, cy, 0.02, roll, 0.0)),
            (0.85, _p(cx - 0.45, cy, 0.02, roll, 0.0)),
            (1.0, _p(cx - 0.45, cy - 0.1, 0.4, roll, 0.0)),
        ],
        objects={"yellow": np.array([cx, cy])},
        carried="yellow",
        carry_window=(0.42, 0.85),
        carry_offset=(-0.15, 0.0),
        grasps=False,
    )


def _plan_drawer(rng: np.random.Generator) -> _Plan:
    """Drawer handle far away; grasp with the wrist rolled 90 degrees, pull straight back."""
    hx, hy = rng.uniform(-0.5, 0.5), rng.uniform(0.75, 0.95)
    roll = 90.0
    return _Plan(
        keys=[
            (0.0, _HOME),
            (0.25, _p(hx, hy - 0.15, 0.3, roll, 80.0)),
            (0.40, _p(hx, hy, 0.3, roll, 80.0)),
            (0.50, _p(hx, hy, 0.3, roll, 15.0)),
            (0.80, _p(hx, hy - 0.35, 0.3, roll, 15.0)),
            (0.88, _p(hx, hy - 0.35, 0.3, roll, 80.0)),
            (1.0, _p(hx, hy - 0.5, 0.55, roll, 80.0)),
        ],
        objects={"handle": np.array([hx, hy])},
        static={"drawer": np.array([hx, hy])},
        carried="handle",
        carry_window=(0.50, 0.88),
        carry_axes=(False, True),
    )


_PLANNERS: list[Callable[[np.random.Generator], _Plan]] = [
    _plan_pick_place,
    _plan_stack,
    _plan_push,
    _plan_drawer,
]


def site_task(site_index: int) -> str:
    """The task string of a site (archetypes repeat when there are more sites than tasks)."""
    return SITE_TASKS[site_index % len(SITE_TASKS)]


# ---------------------------------------------------------------------------------------------
# Rendering.


class _Canvas:
    """Tiny rasteriser: filled squares and discs on a uint8 image, clipped at the borders."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.rows, self.cols = np.mgrid[0:height, 0:width]

    def new(self, colour: tuple[int, int, int]) -> np.ndarray:
        img = np.empty((self.h, self.w, 3), dtype=np.uint8)
        img[:] = colour
        return img

    def rect(self, img: np.ndarray, r0: float, c0: float, r1: float, c1: float, colour) -> None:
        ra, rb = max(round(r0), 0), min(round(r1), self.h)
        ca, cb = max(round(c0), 0), min(round(c1), self.w)
        if ra < rb and ca < cb:
            img[ra:rb, ca:cb] = colour

    def square(self, img: np.ndarray, r: float, c: float, half: float, colour) -> None:
        self.rect(img, r - half, c - half, r + half + 1, c + half + 1, colour)

    def disc(self, img: np.ndarray, r: float, c: float, radius: float, colour) -> None:
        mask = (self.rows - r) ** 2 + (self.cols - c) ** 2 <= radius**2
        img[mask] = colour

    def segment(self, img: np.ndarray, p0, p1, width: float, colour) -> None:
        (r0, c0), (r1, c1) = p0, p1
        dr, dc = r1 - r0, c1 - c0
        length2 = max(dr * dr + dc * dc, 1e-9)
        s = np.clip(((self.rows - r0) * dr + (self.cols - c0) * dc) / length2, 0.0, 1.0)
        d2 = (self.rows - (r0 + s * dr)) ** 2 + (self.cols - (c0 + s * dc)) ** 2
        img[d2 <= (width / 2.0) ** 2] = colour


def _table_px(canvas: _Canvas, x: float, y: float) -> tuple[float, float]:
    """Top camera projection: x in [-1, 1] left to right, y in [0, 1] from the robot base
    (bottom of the image) to the back of the table."""
    return (0.95 - 0.85 * y) * (canvas.h - 1), (x + 1.0) / 2.0 * (canvas.w - 1)


def _render_top(
    canvas: _Canvas,
    table: tuple[int, int, int],
    objects: dict[str, np.ndarray],
    drawer_closed_y: float | None,
    ee: np.ndarray,
) -> np.ndarray:
    img = canvas.new(table)
    unit = canvas.w / 64.0  # sizes are designed at 64 px and scale with the image
    # The arm is drawn first: the camera looks from the front-top, so it never hides the objects.
    base = (canvas.h - 1.0, (canvas.w - 1) / 2.0)
    ee_px = _table_px(canvas, ee[0], ee[1])
    canvas.segment(img, base, ee_px, 2.5 * unit, COLOURS["arm"])
    jaw = (1.0 + ee[4] / 25.0) * unit  # the jaws spread as the gripper opens
    for side in (-1.0, 1.0):
        canvas.disc(
            img, ee_px[0], ee_px[1] + side * jaw, (1.2 + 1.5 * ee[2]) * unit, COLOURS["gripper"]
        )
    if "drawer" in objects and drawer_closed_y is not None:
        hx, hy = objects["handle"]
        r_front, c = _table_px(canvas, hx, hy + 0.03)
        r_back, _ = _table_px(canvas, hx, drawer_closed_y + 0.25)
        canvas.rect(img, r_back, c - 9 * unit, r_front, c + 9 * unit, COLOURS["drawer"])
        # The opened part shows the drawer's dark inside: how far the task has progressed.
        r_closed, _ = _table_px(canvas, hx, drawer_closed_y + 0.03)
        canvas.rect(img, r_closed, c - 7 * unit, r_front, c + 7 * unit, (70, 40, 20))
    if "bowl" in objects:
        r, c = _table_px(canvas, *objects["bowl"])
        canvas.disc(img, r, c, 6.0 * unit, COLOURS["bowl"])
        canvas.disc(img, r, c, 3.5 * unit, (200, 200, 200))
    for name in ("blue", "red", "green", "yellow"):
        if name in objects:
            r, c = _table_px(canvas, *objects[name])
            canvas.square(img, r, c, 2.5 * unit, COLOURS[name])
    if "handle" in objects:
        r, c = _table_px(canvas, *objects["handle"])
        canvas.rect(img, r - 1 * unit, c - 4 * unit, r + 1 * unit, c + 4 * unit, COLOURS["handle"])
    return img


def _render_wrist(
    canvas: _Canvas,
    table: tuple[int, int, int],
    objects: dict[str, np.ndarray],
    ee: np.ndarray,
) -> np.ndarray:
    """A camera on the gripper looking down: objects appear relative to the gripper, bigger as
    it descends, rotated by the wrist roll; the jaws at the bottom show the gripper opening."""
    shade = 0.55 + 0.45 * (1.0 - np.clip(ee[2], 0.0, 1.0))  # closer to the table = brighter
    img = canvas.new(tuple(int(v * shade) for v in table))
    unit = canvas.w / 64.0
    zoom = 1.0 / (0.25 + max(ee[2], 0.0))
    angle = math.radians(ee[3])
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    centre_r, centre_c = canvas.h * 0.45, canvas.w / 2.0
    for name in ("bowl", "drawer", "blue", "red", "green", "yellow", "handle"):
        if name not in objects:
            continue
        dx, dy = objects[name][0] - ee[0], objects[name][1] - ee[1]
        u = cos_a * dx - sin_a * dy
        v = sin_a * dx + cos_a * dy
        r = centre_r - v * 40.0 * zoom * unit
        c = centre_c + u * 40.0 * zoom * unit
        size = {"bowl": 5.0, "drawer": 8.0, "handle": 2.0}.get(name, 2.5) * zoom * unit
        if name == "bowl":
            canvas.disc(img, r, c, size, COLOURS[name])
        else:
            canvas.square(img, r, c, size, COLOURS[name])
    gap = (2.0 + ee[4] / 100.0 * 18.0) * unit
    jaw_top = canvas.h * 0.72
    canvas.rect(
        img, jaw_top, centre_c - gap - 5 * unit, canvas.h, centre_c - gap, COLOURS["gripper"]
    )
    canvas.rect(
        img, jaw_top, centre_c + gap, canvas.h, centre_c + gap + 5 * unit, COLOURS["gripper"]
    )
    return img


# ---------------------------------------------------------------------------------------------
# Episodes.


@dataclass(frozen=True)
class DemoEpisode:
    """One simulated demonstration, ready for ``add_frame``."""

    task: str
    state: np.ndarray  # (T, 6) float32, measured joints
    action: np.ndarray  # (T, 6) float32, commanded next joints
    top: np.ndarray  # (T, H, W, 3) uint8
    wrist: np.ndarray  # (T, H, W, 3) uint8


def _simulate_episode(site_index: int, spec: DemoSpec, rng: np.random.Generator) -> DemoEpisode:
    archetype = site_index % len(_PLANNERS)
    plan = _PLANNERS[archetype](rng)
    n = spec.frames_per_episode
    # Operators never hit the same timing twice: jitter the inner key times by about a frame.
    keys = list(plan.keys)
    inner = np.array([t for t, _ in keys[1:-1]]) + rng.normal(0.0, 0.012, len(keys) - 2)
    inner = np.clip(np.sort(inner), 0.02, 0.98)
    keys = [
        keys[0],
        *[(float(t), p) for t, (_, p) in zip(inner, keys[1:-1], strict=True)],
        keys[-1],
    ]
    ref = pose_to_joints(_interpolate(keys, np.arange(n + 1) / n))
    # The command at t is the reference for t+1, plus leader-arm tremor.
    action = ref[1:] + rng.normal(0.0, 0.4, (n, 6))
    action[:, 5] = np.clip(action[:, 5], 0.0, 100.0)

    # The follower tracks the command with a first-order lag plus motor noise; a gripper that
    # holds something stops at the object's width whatever the command says.
    carry_t0, carry_t1 = plan.carry_window
    state = np.empty((n, 6))
    state[0] = pose_to_joints(_HOME) + rng.normal(0.0, 1.0, 6)
    for t in range(1, n):
        state[t] = state[t - 1] + 0.55 * (action[t - 1] - state[t - 1]) + rng.normal(0.0, 0.25, 6)
        holding = plan.grasps and carry_t0 <= t / n < carry_t1
        state[t, 5] = np.clip(state[t, 5], 12.0 if holding else 0.0, 100.0)

    canvas = _Canvas(spec.image_height, spec.image_width)
    table = _TABLES[archetype]
    ee_poses = joints_to_pose(state)
    objects = {k: v.copy() for k, v in plan.objects.items()}
    offset = np.array(plan.carry_offset)
    axes = np.array(plan.carry_axes)
    drawer_closed_y = float(plan.static["drawer"][1]) if "drawer" in plan.static else None
    tops, wrists = [], []
    for t in range(n):
        ee = ee_poses[t]
        if plan.carried is not None and carry_t0 <= t / n < carry_t1:
            pos = objects[plan.carried]
            objects[plan.carried] = np.where(axes, ee[:2] + offset, pos)
        scene = {**plan.static, **objects}
        if "drawer" in scene:  # the drawer body slides out with its handle
            scene["drawer"] = objects["handle"] + np.array([0.0, 0.12])
        tops.append(_render_top(canvas, table, scene, drawer_closed_y, ee))
        wrists.append(_render_wrist(canvas, table, scene, ee))
    # Camera sensor noise, so that no two frames are pixel-identical.
    top = np.stack(tops).astype(np.int16) + rng.integers(-4, 5, (n, *tops[0].shape), np.int16)
    wrist = np.stack(wrists).astype(np.int16) + rng.integers(-4, 5, (n, *wrists[0].shape), np.int16)
    return DemoEpisode(
        task=site_task(site_index),
        state=state.astype(np.float32),
        action=action.astype(np.float32),
        top=np.clip(top, 0, 255).astype(np.uint8),
        wrist=np.clip(wrist, 0, 255).astype(np.uint8),
    )


def simulate_site(site_index: int, spec: DemoSpec) -> list[DemoEpisode]:
    """All episodes of one site, in memory. Seeded by (spec.seed, site_index) alone, so a site's
    data does not change when other sites are added or removed."""
    if site_index < 0:
        raise ValueError(f"site_index must be >= 0, got {site_index}")
    rng = np.random.default_rng([spec.seed, site_index])
    return [_simulate_episode(site_index, spec, rng) for _ in range(spec.episodes_per_site)]


# ---------------------------------------------------------------------------------------------
# Writing LeRobot datasets.


def demo_features(spec: DemoSpec) -> dict[str, dict]:
    """The LeRobot feature spec of the demo data (the same layout as the real SO-100 sets)."""
    image_dtype = "video" if spec.use_videos else "image"
    image = {
        "dtype": image_dtype,
        "shape": (spec.image_height, spec.image_width, 3),
        "names": ["height", "width", "channels"],
    }
    return {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": list(STATE_NAMES)},
        "action": {"dtype": "float32", "shape": (6,), "names": list(STATE_NAMES)},
        **{key: dict(image) for key in CAMERA_KEYS},
    }


def _prepare_target(root: Path, overwrite: bool) -> None:
    """Refuse to clobber data unless asked; fail before spending time generating."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{root} already exists and is not empty; pass overwrite=True (--overwrite) to "
            "replace it"
        )


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for sub in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(top.iterdir()):
        top.rmdir()


def make_demo_site(root: Path, site_index: int, spec: DemoSpec, overwrite: bool = False) -> Path:
    """Write site ``site_index`` as a LeRobotDataset (repo_id ``local/site-{i}``) at ``root``.

    The dataset is built in a temporary sibling folder and renamed into place only once
    finalised, so an interrupted run never leaves a half-written dataset that looks whole.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    _prepare_target(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        build = staging / root.name
        dataset = LeRobotDataset.create(
            repo_id=f"local/site-{site_index}",
            fps=FPS,
            features=demo_features(spec),
            root=build,
            robot_type=ROBOT_TYPE,
            use_videos=spec.use_videos,
            video_backend="pyav",  # the default probes torchcodec and may print a traceback
            image_writer_threads=_IMAGE_WRITER_THREADS,
        )
        try:
            for episode in simulate_site(site_index, spec):
                for t in range(len(episode.action)):
                    dataset.add_frame(
                        {
                            "observation.state": episode.state[t],
                            "action": episode.action[t],
                            CAMERA_KEYS[0]: episode.top[t],
                            CAMERA_KEYS[1]: episode.wrist[t],
                            "task": episode.task,
                        }
                    )
                # Encoding in-process: tiny clips gain nothing from forking a process that
                # runs image-writer threads (which risks deadlocks in the child).
                dataset.save_episode(parallel_encoding=False)
        except BaseException:
            dataset.writer.stop_image_writer()
            raise
        dataset.finalize()
        _remove_empty_dirs(build / "images")  # lerobot's per-frame scratch folders
        if root.exists():
            shutil.rmtree(root)
        build.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def make_demo_datasets(
    out_root: Path, spec: DemoSpec = DemoSpec(), overwrite: bool = False
) -> list[Path]:
    """Write every site to ``out_root/site-{i}``; returns the dataset roots in site order."""
    out_root = Path(out_root)
    roots = [out_root / f"site-{i}" for i in range(spec.num_sites)]
    for root in roots:  # check all targets first: failing at site 3 after minutes is worse
        _prepare_target(root, overwrite)
    return [make_demo_site(root, i, spec, overwrite) for i, root in enumerate(roots)]


# ---------------------------------------------------------------------------------------------
# Command line.


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}") from None
    return h, w


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo-data`` subcommand (as ``zk0`` does: :func:`deploy.cli.add_command`)."""
    from deploy.cli import add_command

    add_command(subparsers, "demo-data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zk0 demo-data`` flags (``deploy.cli`` makes the parser and calls this)."""
    d = DemoSpec()
    p.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    p.add_argument("--sites", type=int, default=d.num_sites)
    p.add_argument("--episodes", type=int, default=d.episodes_per_site, help="per site")
    p.add_argument("--frames", type=int, default=d.frames_per_episode, help="per episode")
    p.add_argument(
        "--image-size", type=_image_size, default=(d.image_height, d.image_width), metavar="HxW"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--video", action="store_true", help="store cameras as AV1 video")
    p.add_argument("--overwrite", action="store_true", help="replace existing site folders")


def run_cli(args: argparse.Namespace) -> int:
    try:
        spec = DemoSpec(
            num_sites=args.sites,
            episodes_per_site=args.episodes,
            frames_per_episode=args.frames,
            image_height=args.image_size[0],
            image_width=args.image_size[1],
            seed=args.seed,
            use_videos=args.video,
        )
    except ValueError as err:
        print(f"demo-data: {err}", file=sys.stderr)
        return 2
    import datasets

    # One progress bar per episode and camera is noise on a terminal.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    start = time.perf_counter()
    try:
        roots = make_demo_datasets(args.out, spec, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"demo-data: {err}", file=sys.stderr)
        return 1
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    elapsed = time.perf_counter() - start
    for i, root in enumerate(roots):
        print(f"site-{i}: {root}  ({spec.episodes_per_site} episodes, task: {site_task(i)!r})")
    print(f"wrote {len(roots)} sites in {elapsed:.1f} s")
    return 0
