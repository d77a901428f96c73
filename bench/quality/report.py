"""The study as files: ``quality.json`` (everything) and ``quality.md`` (the tables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.quality.summary import GOAL_RATIO
from bench.results import machine_line, write_files

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
JSON_NAME = "quality.json"
MARKDOWN_NAME = "quality.md"


def _fmt(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """The study as Markdown: machine, settings, one row per variant, the cluster check."""
    m, c, s = report["machine"], report["config"], report["summary"]
    rows = s["rows"]
    sites = sorted({site for r in rows.values() for site in r["per_site"]})
    lines = [
        "# zk0 learning quality: federated vs centralized vs local-only",
        "",
        machine_line(m),
        "",
        f"Command: `{report['command']}` · wall time {report['wall_seconds'] / 60:.1f} min "
        f"(the jobs, one after another: {report['job_seconds_total'] / 60:.1f} min; finished "
        "jobs are reused)",
        "",
        f"Policy `{c['policy']}` (lr {c['lr']:g}, cosine to 10% over the run), "
        f"{c['sites']} heterogeneous demo sites ({c['demo_spec']['episodes_per_site']} episodes "
        f"x {c['demo_spec']['frames_per_episode']} frames, {c['eval_episodes']} held out), "
        f"{c['rounds']} rounds x {c['local_steps']} local steps x batch {c['batch_size']}; "
        f"every variant {c['total_steps']} optimizer steps in total; seeds {s['seeds']}. "
        f"Held-out action MSE (real units², {c['eval_samples']} fixed frames per site, seed = "
        f"run seed), global model after the last round; mean ± std over seeds. Ratio: site mean "
        f"over centralized's site mean with the same seed. Untrained model: "
        f"{_fmt(s['untrained'].get('mean'))}.",
        "",
    ]
    lines += _table(rows, sites)
    lines += ["", "Variants: " + "; ".join(
        f"**{v['name']}**: {v['description']} {_overrides(v)}".strip()
        for v in report["variants"]) + "."]
    if report.get("explore"):
        e = report["explore"]
        lines += ["", f"## Exploration: more variants, seed(s) {e['seeds']} only", "",
                  "Every variant's runs with these seeds, the explored ones added; the ratio is "
                  "to centralized with the same seed.", ""]
        lines += _table(e["rows"], sites)
        lines += ["", "Explored: " + "; ".join(
            f"**{v['name']}** {_overrides(v)}" for v in report["explore_variants"]) + "."]
    if report.get("cluster_check"):
        lines += ["", "## Same configuration through the real TLS cluster", "",
                  "The same ServerApp and ClientApp code with the same seeds (every round is "
                  "seeded from run seed, round and site), once in one process and once as "
                  "SuperLink + SuperNodes over TLS, each ClientApp in its own process: what is "
                  "left is floating-point nondeterminism (thread counts differ). Times are wall "
                  "times on a shared machine.", "",
                  "| Variant | Seed | In-process site mean | Cluster site mean | Difference | "
                  "Largest per-site difference | In-process time | Cluster time |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k in report["cluster_check"]:
            site, worst = max(((x, k["cluster"][x] / v - 1) for x, v in k["inprocess"].items()),
                              key=lambda t: abs(t[1]))
            lines.append(
                f"| {k['variant']} | {k['seed']} | {_fmt(k['inprocess_mean'], 2)} | "
                f"{_fmt(k['cluster_mean'], 2)} | {100 * k['relative_difference']:+.2f}% | "
                f"{100 * worst:+.1f}% ({site}) | "
                f"{k['inprocess_seconds']:.0f} s | {k['cluster_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def _pm(value: float, std: float, several: bool, fmt: str = "{:,.1f}") -> str:
    """``value ± std`` over seeds, or the value alone for one seed (whose std means nothing)."""
    return fmt.format(value) + (f" ± {fmt.format(std)}" if several else "")


def _table(rows: Mapping[str, Mapping[str, Any]], sites: Sequence[str]) -> list[str]:
    """One Markdown row per variant: per-site and site-mean MSE, ratio, the goals."""
    lines = [
        "| Variant | " + " | ".join(sites) + " | Site mean | Ratio to centralized | "
        f"<= {GOAL_RATIO:g}x centralized | < local (own) | MB per run |",
        "|---|" + "---:|" * len(sites) + "---:|---:|---|---|---:|",
    ]
    for label, r in rows.items():
        several = len(r["seeds"]) > 1
        cells = [_pm(r["per_site"][x], r["per_site_std"][x], several) for x in sites]
        ratio = ("" if r.get("ratio") is None
                 else _pm(r["ratio"], r["ratio_std"], several, "{:.2f}x"))
        goal = "" if "within_goal" not in r else ("yes" if r["within_goal"] else "NO")
        local = "" if "beats_local" not in r else ("yes" if r["beats_local"] else "NO")
        moved = r.get("bytes_per_run")
        mb = "" if moved is None else f"{moved / 1e6:,.1f}"
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {_pm(r['mean'], r['std'], several)} | {ratio} | {goal} | {local} "
                     f"| {mb} |")
    return lines


def _overrides(variant: Mapping[str, Any]) -> str:
    o = variant["overrides"]
    return f"(`{', '.join(f'{k}={v}' for k, v in o.items())}`)" if o else ""


def write(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``quality.json`` (everything, per seed and per round) and ``quality.md`` (the table)."""
    return write_files(report, to_markdown(report), out_dir / JSON_NAME, out_dir / MARKDOWN_NAME)

