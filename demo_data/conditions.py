"""What differs between labs besides their task: camera, light, objects, calibration, operator.

Two scenarios (``DemoSpec.scenario``):

- ``four-tasks``: every site runs its own task archetype (:mod:`demo_data.tasks`) under neutral
  conditions: the case where sharing helps a site's own task least (a specialist wins it).
- ``shared-tasks``: every site runs the same pick-and-place task, under conditions of its own,
  as labs that work on the same problem with different set-ups do: the top camera mounted a
  little differently (shifted, rolled, zoomed), other lighting and table, another cube colour,
  objects in another part of the table, joint calibration offsets of a few degrees (what the
  encoders report is off by a fixed amount per joint; the cameras see the true arm), and an
  operator who finishes the task sooner or later within the episode and then holds. Each site
  alone has little data of one set-up; together they cover the variation: the case
  federations exist for.

A site's conditions are drawn from their own RNG, seeded by (spec seed, site, a constant), so
the episodes' own draws (object positions, timing jitter, noise) keep their order, and the
``four-tasks`` data stays byte-identical to what the generator made before scenarios existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Scenario = Literal["four-tasks", "shared-tasks"]
SCENARIOS: tuple[Scenario, ...] = ("four-tasks", "shared-tasks")

# Each lab has its own table and lighting in the four-tasks scenario: one per task archetype
# (demo_data.tasks.PLANNERS, which checks the two lists have the same length).
TABLES: list[tuple[int, int, int]] = [
    (190, 165, 130),
    (160, 165, 175),
    (165, 185, 160),
    (185, 175, 195),
]
# The cube colours of the shared pick-and-place task, one per site in turn.
CUBE_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
_CONDITIONS_STREAM = 0x5EED  # third element of a site's conditions seed


@dataclass(frozen=True)
class Camera:
    """How a site's top camera differs from the reference mount, in image space: a roll about
    the image centre (degrees), a zoom, then a shift (fractions of the image height/width)."""

    roll_deg: float = 0.0
    zoom: float = 1.0
    shift_rows: float = 0.0
    shift_cols: float = 0.0

    @property
    def is_reference(self) -> bool:
        return (self.roll_deg, self.zoom, self.shift_rows, self.shift_cols) == (0.0, 1.0, 0.0, 0.0)

    def to_pixels(self, height: int, width: int, row: float, col: float) -> tuple[float, float]:
        """Where a point the reference camera sees at (row, col) appears in this camera."""
        if self.is_reference:
            return row, col
        cr, cc = (height - 1) / 2.0, (width - 1) / 2.0
        a = math.radians(self.roll_deg)
        dr, dc = (row - cr) * self.zoom, (col - cc) * self.zoom
        r = cr + math.cos(a) * dr - math.sin(a) * dc + self.shift_rows * height
        c = cc + math.sin(a) * dr + math.cos(a) * dc + self.shift_cols * width
        return r, c


@dataclass(frozen=True)
class SiteConditions:
    """Everything about one site's recordings except the episodes' own random draws."""

    archetype: int  # which task (demo_data.tasks.PLANNERS)
    table: tuple[int, int, int]
    camera: Camera = Camera()
    light_gain: float = 1.0  # brightness of both cameras' images
    light_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per RGB channel
    cube_colour: str = "red"  # shared task: the colour of the cube to pick
    cube_shift: tuple[float, float] = (0.0, 0.0)  # where on the table the cube lies (x, y)
    bowl_shift: tuple[float, float] = (0.0, 0.0)
    # Joint calibration offsets (degrees): what the encoders and the leader arm report is off by
    # this much per joint; the gripper's 0..100 range is calibrated by its end stops (0 offset).
    calibration: tuple[float, ...] = field(default=(0.0,) * 6)
    speed: float = 1.0  # share of the episode the operator needs for the task (then holds)

    @property
    def neutral_light(self) -> bool:
        return self.light_gain == 1.0 and self.light_tint == (1.0, 1.0, 1.0)

    def light(self, image: np.ndarray) -> np.ndarray:
        """An image (uint8, HxWx3) under this site's lighting."""
        if self.neutral_light:
            return image
        scale = self.light_gain * np.asarray(self.light_tint)
        return np.clip(image.astype(np.float64) * scale, 0, 255).astype(np.uint8)


def site_conditions(site_index: int, scenario: Scenario, seed: int) -> SiteConditions:
    """The conditions of site ``site_index`` in ``scenario`` (same inputs, same conditions)."""
    if scenario == "four-tasks":
        kind = site_index % len(TABLES)  # one table per archetype: they repeat alike
        return SiteConditions(archetype=kind, table=TABLES[kind])
    if scenario != "shared-tasks":
        raise ValueError(f"scenario {scenario!r}: expected one of {list(SCENARIOS)}")
    rng = np.random.default_rng([seed, site_index, _CONDITIONS_STREAM])
    base = np.array(TABLES[site_index % len(TABLES)], dtype=np.float64)
    table = tuple(int(v) for v in np.clip(base + rng.normal(0.0, 8.0, 3), 60, 235))
    return SiteConditions(
        archetype=0,  # every site picks and places
        table=table,  # type: ignore[arg-type]
        camera=Camera(
            roll_deg=float(rng.uniform(-8.0, 8.0)),
            zoom=float(rng.uniform(0.9, 1.1)),
            shift_rows=float(rng.uniform(-0.05, 0.05)),
            shift_cols=float(rng.uniform(-0.05, 0.05)),
        ),
        light_gain=float(rng.uniform(0.75, 1.2)),
        light_tint=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)),  # type: ignore[arg-type]
        cube_colour=CUBE_COLOURS[site_index % len(CUBE_COLOURS)],
        cube_shift=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.1, 0.1))),
        bowl_shift=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.1, 0.1))),
        calibration=(*(float(v) for v in rng.normal(0.0, 3.0, 5)), 0.0),
        speed=float(rng.uniform(0.7, 1.0)),
    )
