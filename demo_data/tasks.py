"""The sites' task archetypes: what each lab's operators do, as key poses of one episode.

Each archetype has its own objects (colours, where they lie), approach path, wrist roll and
gripper timing; that is what makes one lab's policy miss another lab's task. An archetype
draws its object positions from the episode's RNG, so every episode has its own goal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from demo_data.conditions import TABLES, SiteConditions
from demo_data.kinematics import HOME

SITE_TASKS: list[str] = [
    "pick the red cube and place it in the bowl",
    "stack the green block on the blue block",
    "push the yellow cube to the left",
    "open the drawer",
]


@dataclass(frozen=True)
class Plan:
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


def _plan_pick_place(rng: np.random.Generator, conditions: SiteConditions) -> Plan:
    """A cube (red, unless the site's is another colour) somewhere on the left, bowl on the
    right, each region moved by the site's shifts; wide grip, late release."""
    (dcx, dcy), (dbx, dby) = conditions.cube_shift, conditions.bowl_shift
    cx, cy = rng.uniform(-0.8 + dcx, -0.15 + dcx), rng.uniform(0.35 + dcy, 0.85 + dcy)
    bx, by = rng.uniform(0.35 + dbx, 0.75 + dbx), rng.uniform(0.3 + dby, 0.7 + dby)
    cube = conditions.cube_colour
    return Plan(
        keys=[
            (0.0, HOME),
            (0.22, _p(cx, cy, 0.45, 0.0, 85.0)),
            (0.36, _p(cx, cy, 0.05, 0.0, 85.0)),
            (0.44, _p(cx, cy, 0.05, 0.0, 5.0)),
            (0.56, _p(cx, cy, 0.5, 0.0, 5.0)),
            (0.78, _p(bx, by, 0.35, 0.0, 5.0)),
            (0.86, _p(bx, by, 0.35, 0.0, 85.0)),
            (1.0, _p(0.5 * bx, 0.3, 0.7, 0.0, 40.0)),
        ],
        objects={cube: np.array([cx, cy])},
        static={"bowl": np.array([bx, by])},
        carried=cube,
        carry_window=(0.44, 0.86),
    )


def _plan_stack(rng: np.random.Generator, conditions: SiteConditions) -> Plan:
    """Green block on the right onto a blue block at the back left; wrist rolled 45 degrees."""
    gx, gy = rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.6)
    bx, by = rng.uniform(-0.7, 0.0), rng.uniform(0.5, 0.9)
    roll = 45.0
    return Plan(
        keys=[
            (0.0, HOME),
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


def _plan_push(rng: np.random.Generator, conditions: SiteConditions) -> Plan:
    """Yellow cube pushed leftwards by a closed gripper held low, wrist rolled -60 degrees."""
    cx, cy = rng.uniform(-0.2, 0.6), rng.uniform(0.3, 0.9)
    roll = -60.0
    return Plan(
        keys=[
            (0.0, HOME),
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


def _plan_drawer(rng: np.random.Generator, conditions: SiteConditions) -> Plan:
    """Drawer handle far away; grasp with the wrist rolled 90 degrees, pull straight back."""
    hx, hy = rng.uniform(-0.5, 0.5), rng.uniform(0.75, 0.95)
    roll = 90.0
    return Plan(
        keys=[
            (0.0, HOME),
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


# One planner per entry of SITE_TASKS, in the same order. Only pick-and-place reads the site's
# conditions (the shared-tasks scenario's task); the others are fixed per archetype.
PLANNERS: list[Callable[[np.random.Generator, SiteConditions], Plan]] = [
    _plan_pick_place,
    _plan_stack,
    _plan_push,
    _plan_drawer,
]


assert len(PLANNERS) == len(TABLES), "one table per archetype (demo_data.conditions.TABLES)"


def archetype(site_index: int) -> int:
    """The archetype a site runs (they repeat when there are more sites than archetypes)."""
    return site_index % len(PLANNERS)


def site_task(site_index: int) -> str:
    """The task string of a site in the four-tasks scenario (archetypes repeat when there are
    more sites than tasks)."""
    return SITE_TASKS[site_index % len(SITE_TASKS)]


def task_text(conditions: SiteConditions) -> str:
    """The task string of a site's episodes: its archetype's, naming the site's cube colour."""
    if conditions.archetype == 0:
        return f"pick the {conditions.cube_colour} cube and place it in the bowl"
    return SITE_TASKS[conditions.archetype]
