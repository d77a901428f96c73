"""``zk0 check-dataset ROOT``: is this LeRobotDataset fit to join the federation?

Checks the dataset against the policy (state/action vectors, cameras) and the federation
(``--expect``: SO-100 defaults, ``none``, or a features JSON the coordinator publishes): feature
names and joint order, shapes, dtypes, fps; the tables (episode and frame indices, timestamps
increasing and on the fps grid, duplicated timestamps or frames, NaN/Inf); every video file
there and a few frames of each episode decoded (``--deep``: every frame); enough episodes for
the held-out split. Each problem is printed with its file, episode, frame and key and what was
expected.

Exit status: 0 when nothing would stop training (warnings say what it will skip), 1 when the
dataset has errors, 2 when the command itself is misused (e.g. an unreadable ``--expect`` file).
The coordinator writes the federation's expectation from a reference dataset with
``--write-expectation FILE`` and hands that file to the labs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import atomic
from common.settings import RunConfig

EXIT_ERRORS = 1
EXIT_USAGE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zk0 check-dataset`` flags (the parser itself is made by :mod:`deploy.cli`)."""
    p.add_argument("root", type=Path, help="the LeRobotDataset folder (holds meta/info.json)")
    p.add_argument(
        "--expect", default="so100", metavar="so100|none|FILE",
        help="what the federation expects: SO-100 defaults (6 joints in LeRobot's order, 30 "
             "fps), none (the policy's needs only), or a features JSON from the coordinator "
             "(--write-expectation output, a run's run.json or a reference meta/info.json)",
    )
    p.add_argument("--eval-episodes", type=int, default=2,
                   help="episodes the site holds out for evaluation (default 2)")
    p.add_argument("--deep", action="store_true",
                   help="decode every video frame and image (default: a few per episode)")
    p.add_argument(
        "--max-bad-sample-share", type=float,
        default=RunConfig.model_fields["max_bad_sample_share"].default,
        help="unreadable frames up to this share of the dataset are warnings (training skips "
             "them), past it errors; the run config key of the same name (default %(default)s)",
    )
    p.add_argument("--write-expectation", type=Path, default=None, metavar="FILE",
                   help="if the dataset passes, write its features and fps to FILE as the "
                        "federation's expectation for the labs' --expect")
    p.add_argument("--json", action="store_true", help="print the findings as JSON lines")


def run_cli(args: argparse.Namespace) -> int:
    from supernode.dataset_checks.check import check_dataset
    from supernode.dataset_checks.expectation import resolve_expectation

    try:
        expect = resolve_expectation(args.expect)
    except ValueError as err:
        print(f"zk0 check-dataset: --expect: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not 0.0 <= args.max_bad_sample_share < 1.0:
        print("zk0 check-dataset: --max-bad-sample-share: expected 0 <= share < 1, got "
              f"{args.max_bad_sample_share}", file=sys.stderr)
        return EXIT_USAGE
    report = check_dataset(
        args.root, expect=expect, eval_episodes=args.eval_episodes, deep=args.deep,
        max_bad_share=args.max_bad_sample_share,
    )
    for finding in report.findings:
        if args.json:
            print(json.dumps({k: v for k, v in vars(finding).items() if v is not None}))
        else:
            print(finding.line())
    print(f"{report.summary()} (expected: {expect.source})",
          file=sys.stderr if args.json else sys.stdout)
    if not report.ok:
        return EXIT_ERRORS
    if args.write_expectation is not None:
        from supernode.dataset_checks.expectation import Expectation

        reference = Expectation.of_dataset(report.meta, str(args.root))
        atomic.write_json(args.write_expectation, reference.to_json())
        print(f"wrote the federation's expectation to {args.write_expectation}",
              file=sys.stderr)
    return 0
