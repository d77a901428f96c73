"""One demonstration, simulated: the operator's commands, the follower's joints, the frames.

An episode draws the object positions from the site's archetype, interpolates its key poses
with minimum-jerk segments (the operator's commands), and the follower arm tracks the commands
with a lag plus noise. ``action[t]`` is the command for step t+1, ``observation.state[t]`` the
measured joints. Every random draw comes from one RNG seeded by (spec seed, site), in a fixed
order: changing that order changes every dataset generated so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo_data.conditions import SiteConditions, site_conditions
from demo_data.kinematics import HOME, interpolate, joints_to_pose, pose_to_joints
from demo_data.rendering import Canvas, render_top, render_wrist
from demo_data.spec import DemoSpec
from demo_data.tasks import PLANNERS, task_text


@dataclass(frozen=True)
class DemoEpisode:
    """One simulated demonstration, ready for ``add_frame``."""

    task: str
    state: np.ndarray  # (T, 6) float32, measured joints
    action: np.ndarray  # (T, 6) float32, commanded next joints
    top: np.ndarray  # (T, H, W, 3) uint8
    wrist: np.ndarray  # (T, H, W, 3) uint8


def _simulate_episode(
    conditions: SiteConditions, spec: DemoSpec, rng: np.random.Generator
) -> DemoEpisode:
    plan = PLANNERS[conditions.archetype](rng, conditions)
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
    if conditions.speed != 1.0:  # a quicker operator: done at `speed` of the episode, then holds
        keys = [(t * conditions.speed, p) for t, p in keys] + [(1.0, keys[-1][1])]
    ref = pose_to_joints(interpolate(keys, np.arange(n + 1) / n))
    # The command at t is the reference for t+1, plus leader-arm tremor.
    action = ref[1:] + rng.normal(0.0, 0.4, (n, 6))
    action[:, 5] = np.clip(action[:, 5], 0.0, 100.0)

    # The follower tracks the command with a first-order lag plus motor noise; a gripper that
    # holds something stops at the object's width whatever the command says.
    carry_t0, carry_t1 = (t * conditions.speed for t in plan.carry_window)
    state = np.empty((n, 6))
    state[0] = pose_to_joints(HOME) + rng.normal(0.0, 1.0, 6)
    for t in range(1, n):
        state[t] = state[t - 1] + 0.55 * (action[t - 1] - state[t - 1]) + rng.normal(0.0, 0.25, 6)
        holding = plan.grasps and carry_t0 <= t / n < carry_t1
        state[t, 5] = np.clip(state[t, 5], 12.0 if holding else 0.0, 100.0)

    canvas = Canvas(spec.image_height, spec.image_width)
    table, camera = conditions.table, conditions.camera
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
        tops.append(conditions.light(render_top(canvas, table, scene, drawer_closed_y, ee, camera)))
        wrists.append(conditions.light(render_wrist(canvas, table, scene, ee)))
    # Camera sensor noise, so that no two frames are pixel-identical.
    top = np.stack(tops).astype(np.int16) + rng.integers(-4, 5, (n, *tops[0].shape), np.int16)
    wrist = np.stack(wrists).astype(np.int16) + rng.integers(-4, 5, (n, *wrists[0].shape), np.int16)
    # What the encoders report: the true joints plus the site's calibration offsets (the
    # cameras above saw the true arm). The leader arm is calibrated the same way.
    if any(conditions.calibration):
        state = state + np.asarray(conditions.calibration)
        action = action + np.asarray(conditions.calibration)
    return DemoEpisode(
        task=task_text(conditions),
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
    conditions = site_conditions(site_index, spec.scenario, spec.seed)
    return [_simulate_episode(conditions, spec, rng) for _ in range(spec.episodes_per_site)]
