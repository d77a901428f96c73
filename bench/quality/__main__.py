"""``python -m bench.quality``: run or extend the learning study, print its tables."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import bench.quality
from bench.quality.report import RESULTS_DIR, to_markdown
from bench.quality.runner import run_quality
from bench.quality.variants import DEFAULT_VARIANTS, SCENARIO_PRESETS, VARIANTS, parse_variant


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.quality",
                                description=(bench.quality.__doc__ or "").split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(".zk0/quality"),
                   help="work folder: data, run folders, per-job results (cached)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR,
                   help="folder for quality.json, quality.md and the curves (default: %(default)s)")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIO_PRESETS), default=[],
                   help="repeatable (default: all of " + ", ".join(SCENARIO_PRESETS) + ")")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default: %(default)s)")
    p.add_argument("--steps-per-site", type=int, default=None,
                   help="the budget of every row (default: each scenario's preset)")
    p.add_argument("--eval-every-steps", type=int, default=150,
                   help="steps per site between evaluated models (default: %(default)s)")
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--engine", choices=("inprocess", "cluster"), default="inprocess")
    p.add_argument("--variant", action="append", type=parse_variant, default=[],
                   help="NAME or NAME:key=value,... (repeatable; default: all of "
                        + ", ".join(VARIANTS) + ")")
    p.add_argument("--explore", action="append", type=parse_variant, default=[],
                   help="NAME:key=value,...: a variant run only with --explore-seeds "
                        "(repeatable)")
    p.add_argument("--explore-seeds", default="0", help="(default: %(default)s)")
    p.add_argument("--cluster-check", default="", metavar="VARIANT",
                   help="also run this variant (first seed) through the real TLS cluster")
    p.add_argument("--workers", type=int, default=1,
                   help="jobs in parallel, each in its own process (0: inline)")
    p.add_argument("--cached-only", action="store_true",
                   help="run nothing: report the finished jobs and name the others")
    args = p.parse_args(argv)
    report = run_quality(
        args.out, tuple(args.scenario) or tuple(SCENARIO_PRESETS), _ints(args.seeds),
        args.sites, args.engine, tuple(args.variant) or DEFAULT_VARIANTS,
        steps_per_site=args.steps_per_site, eval_every_steps=args.eval_every_steps,
        workers=args.workers, cluster_variant=args.cluster_check,
        explore=tuple(args.explore), explore_seeds=_ints(args.explore_seeds),
        results_dir=args.results, command="python -m bench.quality " + shlex.join(argv),
        cached_only=args.cached_only,
    )
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
