"""``zk0 demo-data``: write the synthetic per-site datasets from the command line.

The ``zk0`` parser (:mod:`deploy.cli`) registers the subcommand: :func:`add_arguments`
declares its arguments and :func:`run_cli` acts on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from demo_data.conditions import SCENARIOS
from demo_data.spec import DemoSpec
from demo_data.writer import make_demo_datasets


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``demo-data``'s arguments on ``parser`` (defaults: :class:`DemoSpec`'s)."""
    d = DemoSpec()
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    parser.add_argument("--sites", type=int, default=d.num_sites,
                        help="sites, one dataset each (site-0, site-1, ...)")
    parser.add_argument("--episodes", type=int, default=d.episodes_per_site, help="per site")
    parser.add_argument("--frames", type=int, default=d.frames_per_episode, help="per episode")
    parser.add_argument(
        "--image-size", type=_image_size, default=(d.image_height, d.image_width), metavar="HxW",
        help="camera image height x width in pixels",
    )
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of every random draw (with the site index): positions, motions, "
                             "conditions")
    parser.add_argument("--video", action="store_true", help="store cameras as AV1 video")
    parser.add_argument(
        "--scenario", choices=SCENARIOS, default=d.scenario,
        help="four-tasks: a task of its own per site; shared-tasks: one task, each site with its "
             "own camera, light, objects, calibration and operator (default: %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing site folders")


def run_cli(args: argparse.Namespace) -> int:
    """Generate the datasets ``args`` describe: one line per site, then the total time.

    Exit status 2 for an invalid spec, 1 for a target that exists (without ``--overwrite``).
    """
    try:
        spec = DemoSpec(
            num_sites=args.sites,
            episodes_per_site=args.episodes,
            frames_per_episode=args.frames,
            image_height=args.image_size[0],
            image_width=args.image_size[1],
            seed=args.seed,
            use_videos=args.video,
            scenario=args.scenario,
        )
    except ValueError as err:
        print(f"demo-data: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        roots = make_demo_datasets(
            args.out, spec, overwrite=args.overwrite, progress=lambda line: print(line, flush=True)
        )
    except FileExistsError as err:
        print(f"demo-data: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(roots)} sites in {time.perf_counter() - start:.1f} s")
    return 0
