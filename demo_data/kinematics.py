"""The robot every site shares: end-effector pose <-> joints, and how operators move it.

A pose is ``(x, y, h, roll, grip)``: lateral position, reach, height, wrist roll, gripper
opening. Every site runs the same arm, so these functions are the structure that pooling the
labs' data can learn once for all of them.
"""

from __future__ import annotations

import numpy as np

# Home pose (x, y, h, roll, grip): every episode starts here, at every site.
HOME = np.array([0.0, 0.15, 0.8, 0.0, 20.0])


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


def min_jerk(s: np.ndarray) -> np.ndarray:
    """Minimum-jerk time scaling: how people move between two poses (zero end velocities)."""
    return s**3 * (10.0 - 15.0 * s + 6.0 * s**2)


def interpolate(keys: list[tuple[float, np.ndarray]], times: np.ndarray) -> np.ndarray:
    """Poses at ``times`` (fractions of the episode) along minimum-jerk segments between keys."""
    kt = np.array([k[0] for k in keys])
    kp = np.stack([k[1] for k in keys])
    seg = np.clip(np.searchsorted(kt, times, side="right") - 1, 0, len(kt) - 2)
    t0, t1 = kt[seg], kt[seg + 1]
    s = np.clip((times - t0) / np.maximum(t1 - t0, 1e-9), 0.0, 1.0)
    w = min_jerk(s)[:, None]
    return kp[seg] * (1.0 - w) + kp[seg + 1] * w
