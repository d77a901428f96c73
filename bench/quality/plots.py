"""The study's curves: held-out MSE against steps per site, one PNG per scenario.

Left: the site mean of every row (line: mean over seeds; band: the seeds' range), on a log
scale, so the references and the federated variants read against each other at every budget.
Right: one small panel per site. A personalized run's curve is its global model's, with one
last point where each site fine-tuned it to the full budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.plotting import new_figure, save_figure


def curves_png(curves: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    sites = sorted({s for c in curves.values() for s in c["per_site"]})
    cols = 2 if len(sites) > 1 else 1
    rows = (len(sites) + cols - 1) // cols
    fig = new_figure(13.0, max(4.5, 2.6 * rows))
    grid = fig.add_gridspec(rows, 1 + cols, width_ratios=[2.2] + [1.0] * cols)
    main = fig.add_subplot(grid[:, 0])
    colours = {}
    for name, c in curves.items():
        line = main.plot(c["steps"], c["site_mean"], marker="o", ms=3, lw=1.6, label=name)[0]
        colours[name] = line.get_color()
        main.fill_between(c["steps"], c["site_mean_min"], c["site_mean_max"],
                          color=line.get_color(), alpha=0.15, lw=0)
    main.set_yscale("log")
    main.set_xlabel("optimizer steps per site")
    main.set_ylabel("held-out action MSE, site mean")
    main.set_title(title, fontsize=10)
    main.grid(True, which="both", alpha=0.3)
    main.legend(fontsize=7, loc="upper right")
    for i, site in enumerate(sites):
        ax = fig.add_subplot(grid[i // cols, 1 + i % cols])
        for name, c in curves.items():
            if site in c["per_site"]:
                ax.plot(c["steps"], c["per_site"][site], lw=1.2, color=colours[name])
        ax.set_yscale("log")
        ax.set_title(site, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.09, top=0.93, wspace=0.3, hspace=0.45)
    return save_figure(fig, path)
