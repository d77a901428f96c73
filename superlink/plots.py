"""The run folder's figures: the held-out MSE chart and the per-site, per-joint trajectories.

``eval_mse.png`` is redrawn whenever an evaluation arrives; ``plots/round_NNN/<site>.png`` is
drawn once per plotted model from the numbers the site sent (kept next to it as
``trajectories/round_NNN/<site>.json``, so a plot can be redrawn or compared later).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import atomic
from common.plotting import new_figure, render_trajectory, save_figure
from common.trajectory import Trajectory


def plot_path(after_round: int, site: str) -> str:
    """Run-folder-relative path of a site's trajectory plot."""
    return f"plots/round_{after_round:03d}/{site}.png"


def data_path(after_round: int, site: str) -> str:
    return f"trajectories/round_{after_round:03d}/{site}.json"


def trajectory_plots(
    run_dir: Path, after_round: int, trajectories: Mapping[str, Trajectory]
) -> dict[str, dict[str, Any]]:
    """Write each site's numbers and plot; return what the eval entry records per site."""
    out = {}
    for site, traj in sorted(trajectories.items()):
        data = traj.to_json()
        atomic.write_json(run_dir / data_path(after_round, site), data)
        render_trajectory(
            traj,
            run_dir / plot_path(after_round, site),
            f"{site}: global model after round {after_round}, held-out episode {traj.episode} "
            f"(first {traj.frames} frames)",
        )
        out[site] = {
            "plot": plot_path(after_round, site),
            "data": data_path(after_round, site),
            "episode": traj.episode,
            "frames": traj.frames,
            "mse_per_joint": data["mse_per_joint"],
        }
    return out


def mse_chart(history: Mapping[str, Any], path: Path) -> Path:
    """Held-out action MSE per site and weighted, per round, on a log scale."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(7, 4)
    ax = fig.subplots()
    rounds = history["rounds"]
    for site, values in history["per_site"].items():
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", lw=1, alpha=0.7, label=site)
    ax.plot(rounds, history["weighted"], color="black", lw=2.5, marker="s", label="weighted")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("global model after round")
    ax.set_ylabel("held-out action MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("zk0: held-out action MSE per site")
    fig.tight_layout()
    return save_figure(fig, path)
