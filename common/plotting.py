"""PNG figures, written atomically: the per-joint trajectory plot (both sides draw it).

matplotlib's object API with the Agg canvas only (``matplotlib.figure.Figure``, never pyplot):
the SuperLink and the sites are headless servers, pyplot's global figure manager is not
thread-safe, and it doubled the time per plot (measured: ~2x with pyplot and ``tight_layout``
against fixed margins). A figure is rendered into memory and written with
:func:`common.atomic.write_bytes`, so a browser that opens the run's summary while a round
finishes never sees half a PNG.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from common import atomic
from common.trajectory import Trajectory


def new_figure(width: float, height: float):
    """A figure on the Agg canvas, owned by the caller (no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(fig, path: Path, dpi: int = 100, mode: int = 0o644) -> Path:
    """Render ``fig`` as PNG into ``path`` atomically (file mode ``mode``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic.write_bytes(path, buffer.getvalue(), mode=mode)
    return path


def render_trajectory(traj: Trajectory, path: Path, title: str, mode: int = 0o644) -> Path:
    """:func:`trajectory_figure` as a PNG file."""
    return save_figure(trajectory_figure(traj, title), path, mode=mode)


def trajectory_figure(traj: Trajectory, title: str):
    """One panel per joint: recorded (black) and predicted (blue) actions over time.

    Dotted verticals mark the frames where the policy predicted a chunk (it ran open-loop in
    between); each panel's title gives the joint's RMSE in its own unit.
    """
    dims = len(traj.names)
    cols = min(3, dims)
    rows = math.ceil(dims / cols)
    height = 2.6 * rows + 0.8
    fig = new_figure(4.2 * cols, height)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    seconds = traj.frame_index / traj.fps
    rmse = traj.mse_per_joint() ** 0.5
    for j, ax in enumerate(axes.flat):
        if j >= dims:
            ax.axis("off")
            continue
        for start in traj.chunk_starts:
            ax.axvline(start / traj.fps, color="0.85", lw=0.8, ls=":")
        ax.plot(seconds, traj.recorded[:, j], color="black", lw=1.6, label="recorded")
        ax.plot(seconds, traj.predicted[:, j], color="tab:blue", lw=1.3, label="predicted")
        unit = traj.units[j]
        ax.set_title(f"{traj.names[j]}  (RMSE {rmse[j]:.2f}{' ' + unit if unit else ''})",
                     fontsize=9)
        ax.set_ylabel(unit or "value", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
        if j >= dims - cols:
            ax.set_xlabel("time in episode [s]", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    # fixed margins in inches: tight_layout costs as much as drawing the panels
    fig.subplots_adjust(left=0.65 / (4.2 * cols), right=1 - 0.15 / (4.2 * cols),
                        top=1 - 0.65 / height, bottom=0.55 / height, hspace=0.35, wspace=0.25)
    return fig
