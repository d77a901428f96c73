"""The two cameras: a fixed top view of the table and a wrist view that moves with the arm.

Objects are drawn at their positions in the top camera, so an episode's goal can be read from
the pixels; the wrist camera shows the objects relative to the gripper and the gripper jaws,
so it changes with the arm pose, the gripper and the progress of the task.
"""

from __future__ import annotations

import math

import numpy as np

from demo_data.conditions import Camera

REFERENCE = Camera()  # the reference mount: the four-tasks scenario's top camera

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
class Canvas:
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


def table_px(canvas: Canvas, x: float, y: float, camera: Camera = REFERENCE) -> tuple[float, float]:
    """Top camera projection: x in [-1, 1] left to right, y in [0, 1] from the robot base
    (bottom of the image) to the back of the table, as the site's ``camera`` sees it."""
    row, col = (0.95 - 0.85 * y) * (canvas.h - 1), (x + 1.0) / 2.0 * (canvas.w - 1)
    return camera.to_pixels(canvas.h, canvas.w, row, col)


def render_top(
    canvas: Canvas,
    table: tuple[int, int, int],
    objects: dict[str, np.ndarray],
    drawer_closed_y: float | None,
    ee: np.ndarray,
    camera: Camera = REFERENCE,
) -> np.ndarray:
    """The top camera: the arm, then the objects where they lie (or ride with the gripper)."""
    img = canvas.new(table)
    unit = canvas.w / 64.0 * camera.zoom  # sizes are designed at 64 px and scale with the image

    def px(x: float, y: float) -> tuple[float, float]:
        return table_px(canvas, x, y, camera)

    # The arm is drawn first: the camera looks from the front-top, so it never hides the objects.
    base = camera.to_pixels(canvas.h, canvas.w, canvas.h - 1.0, (canvas.w - 1) / 2.0)
    ee_px = px(ee[0], ee[1])
    canvas.segment(img, base, ee_px, 2.5 * unit, COLOURS["arm"])
    jaw = (1.0 + ee[4] / 25.0) * unit  # the jaws spread as the gripper opens
    for side in (-1.0, 1.0):
        canvas.disc(
            img, ee_px[0], ee_px[1] + side * jaw, (1.2 + 1.5 * ee[2]) * unit, COLOURS["gripper"]
        )
    if "drawer" in objects and drawer_closed_y is not None:
        hx, hy = objects["handle"]
        r_front, c = px(hx, hy + 0.03)
        r_back, _ = px(hx, drawer_closed_y + 0.25)
        canvas.rect(img, r_back, c - 9 * unit, r_front, c + 9 * unit, COLOURS["drawer"])
        # The opened part shows the drawer's dark inside: how far the task has progressed.
        r_closed, _ = px(hx, drawer_closed_y + 0.03)
        canvas.rect(img, r_closed, c - 7 * unit, r_front, c + 7 * unit, (70, 40, 20))
    if "bowl" in objects:
        r, c = px(*objects["bowl"])
        canvas.disc(img, r, c, 6.0 * unit, COLOURS["bowl"])
        canvas.disc(img, r, c, 3.5 * unit, (200, 200, 200))
    for name in ("blue", "red", "green", "yellow"):
        if name in objects:
            r, c = px(*objects[name])
            canvas.square(img, r, c, 2.5 * unit, COLOURS[name])
    if "handle" in objects:
        r, c = px(*objects["handle"])
        canvas.rect(img, r - 1 * unit, c - 4 * unit, r + 1 * unit, c + 4 * unit, COLOURS["handle"])
    return img


def render_wrist(
    canvas: Canvas,
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
