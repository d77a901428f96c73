"""``python -m bench``: run the named benchmarks, write results.json + results.md, print the table.

Adding a benchmark: write ``bench/<name>.py`` with ``run(ctx: BenchContext) -> list[Section]``
(see ``bench/payload.py`` for a small one) and list it in :data:`BENCHMARKS`. The default run
must stay a few minutes long on 2 CPU cores; longer ones (``overhead``: ~20 min through the real
cluster, three site paths, ``memory``: real-size training, ``wire``: a real-size round over a
shaped link, ``quality``: the stored study, see ``bench.quality``, ``image``: a cold Docker
build)
have ``default=False`` and run with ``--only <name>``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import DEFAULT_POLICY, QUICK_POLICY, BenchContext
from bench.results import (
    Section,
    build_report,
    peak_rss_bytes,
    reset_peak_rss,
    to_markdown,
    write_report,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: ``module:function`` taking a BenchContext, returning Sections."""

    target: str
    description: str
    default: bool = True  # part of a plain ``python -m bench``

    @property
    def module(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def load(self) -> Callable[[BenchContext], list[Section]]:
        module, function = self.target.split(":", 1)
        fn = getattr(importlib.import_module(module), function, None)
        if not callable(fn):
            raise SystemExit(f"{self.target}: {module} has no {function}(ctx) -> list[Section]")
        return fn


# Run in this order: those that need the full policy come before those that need its weights.
BENCHMARKS: dict[str, Benchmark] = {
    "payload": Benchmark(
        "bench.payload:run", "bytes on the wire per site per round vs the full fp32 model"
    ),
    "codec": Benchmark(
        "bench.codec_speed:run_codec", "encode+digest / decode+verify throughput vs memcpy"
    ),
    "aggregation": Benchmark(
        "bench.codec_speed:run_aggregation",
        "FedProx/FedAvg server aggregation of N sites vs a numpy weighted sum",
    ),
    # Long ones: --only <name>.
    "overhead": Benchmark(
        "bench.overhead:run", "federation overhead through the real cluster", default=False
    ),
    "quality": Benchmark("bench.quality:run", "learning quality", default=False),
    "reply-pull": Benchmark(
        "bench.reply_pull:run", "taking in a reply: zk0's bounded pull vs Flower's (real TLS)",
        default=False,
    ),
    "memory": Benchmark("bench.memory:run", "memory per node", default=False),
    "image": Benchmark("bench.image:run", "container image size and build time (Docker)",
                       default=False),
    "wire": Benchmark("bench.wire:run", "a real-size round over a shaped 100 Mbit/s, 40 ms link "
                      "(root)", default=False),
}


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"small model ({QUICK_POLICY}): seconds instead of minutes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="folder for results.json and results.md (default: %(default)s)")
    p.add_argument("--only", default="",
                   help="comma-separated benchmarks to run, from: " + ", ".join(BENCHMARKS)
                   + " (default: " + ", ".join(n for n, b in BENCHMARKS.items() if b.default)
                   + ")")
    p.add_argument("--repeats", type=int, default=3, help="best-of-N timings (default: 3)")
    p.add_argument("--sites", type=int, default=4, help="sites aggregated (default: 4)")
    p.add_argument("--policy", default="", help=f"policy preset (default: {DEFAULT_POLICY}, "
                   f"or {QUICK_POLICY} with --quick)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.sites < 1:
        p.error("--repeats and --sites must be >= 1")
    return args


def selected(only: str) -> list[str]:
    """Benchmark names to run: ``only`` (checked) or the default ones whose module exists."""
    if not only:
        return [name for name, b in BENCHMARKS.items() if b.default and b.available]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    missing = [n for n in names if not BENCHMARKS[n].available]
    if missing:
        modules = [BENCHMARKS[n].module for n in missing]
        raise SystemExit(f"--only: {missing} not written yet (no module {modules})")
    return [n for n in BENCHMARKS if n in names]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, write the files, print the table; return the report (as written to JSON)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built offline
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.list:
        for name, b in BENCHMARKS.items():
            state = ("default" if b.default else "--only") if b.available else "not written yet"
            print(f"{name:12} {b.description} [{state}]")
        return {}
    names = selected(args.only)
    policy = args.policy or (QUICK_POLICY if args.quick else DEFAULT_POLICY)
    ctx = BenchContext(policy=policy, repeats=args.repeats, sites=args.sites)

    started = time.perf_counter()
    sections: list[Section] = []
    run_peak = peak_rss_bytes()
    for name in names:
        print(f"[bench] {name}: {BENCHMARKS[name].description} ...", file=sys.stderr, flush=True)
        run_peak = max(run_peak, peak_rss_bytes())
        per_benchmark = reset_peak_rss()
        t0 = time.perf_counter()
        produced = BENCHMARKS[name].load()(ctx)
        seconds, peak = time.perf_counter() - t0, peak_rss_bytes()
        run_peak = max(run_peak, peak)
        for s in produced:
            s.seconds, s.peak_rss_bytes = seconds, peak if per_benchmark else 0
        sections.extend(produced)
        print(f"[bench] {name}: {seconds:.1f} s", file=sys.stderr, flush=True)

    config = {"benchmarks": names, "policy": policy, "repeats": args.repeats,
              "sites": args.sites, "quick": args.quick, **ctx.facts}
    report = build_report(
        sections, config, " ".join(["python -m bench", *argv]), time.perf_counter() - started,
        max(run_peak, peak_rss_bytes()),
    )
    json_path, md_path = write_report(report, args.out)
    print(to_markdown(report))
    print(f"[bench] wrote {json_path} and {md_path}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
