"""The study as files: ``quality.json`` (everything), ``quality.md`` (the tables and goals) and
one PNG of curves per scenario (``quality-<scenario>.png``) beside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.quality.plots import curves_png
from bench.quality.summary import ALL_THE_TIME, ALONE, DRIFT_GOAL, SAME_CLOCK
from bench.results import machine_line, write_files

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
JSON_NAME = "quality.json"
MARKDOWN_NAME = "quality.md"
SCENARIO_TEXT = {
    "four-tasks": "four unrelated tasks, one per site (a specialist's best case)",
    "shared-tasks": "one pick-and-place task, each site with its own camera mount, lighting, "
                    "table, cube colour and positions, joint calibration and operator speed, "
                    "few episodes each (the case federations exist for)",
}


def png_name(scenario: str) -> str:
    return f"quality-{scenario}.png"


def _fmt(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """The study as Markdown: machine, cost, then per scenario its curves, tables and goals."""
    m, c = report["machine"], report["config"]
    lines = [
        "# zk0 learning study: does joining pay?",
        "",
        machine_line(m),
        "",
        f"Command: `{report['command']}` · wall time {report['wall_seconds'] / 60:.1f} min; "
        f"the jobs one after another: {report['job_seconds_total'] / 3600:.1f} h on this "
        "machine (finished jobs are reused, so a rerun costs only what changed).",
        "",
        "Every row trains the same tiny SmolVLA (`smolvla-tiny`) from the same initial weights "
        f"with the sites' own training code (AdamW, cosine schedule over the run, batch "
        f"{c['batch_size']} per site), for the same **steps per site**, and is scored the same "
        f"way: held-out action MSE (real units², {c['eval_samples']} fixed frames of each "
        "site's held-out episodes, fixed denoising noise). References, same seeds, same frames: "
        f"**{ALONE}**: each site on its own data for the same steps; **{SAME_CLOCK}**: one "
        "trainer on the pooled data for the same steps with the sites' summed batch (the "
        f"drift-free reference of a federated run); **{ALL_THE_TIME}**: the pooled data for "
        "sites x the steps (the former 'centralized', information). Ratios and gains are taken "
        "seed by seed, then averaged; ± is the std over seeds.",
        "",
    ]
    if report.get("left_out"):
        lines += ["**Cut short**: these jobs had not run and are left out of every table and "
                  "curve: " + ", ".join(f"`{s}`" for s in report["left_out"]) + ".", ""]
    for scenario, data in report["scenarios"].items():
        lines += _scenario(scenario, data, report)
    if report.get("cluster_check"):
        lines += _cluster(report["cluster_check"])
    return "\n".join(lines) + "\n"


def _scenario(scenario: str, data: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    s, demo, st = data["summary"], data["demo_spec"], data["study"]
    rows = s["rows"]
    sites = sorted({site for r in rows.values() for site in r["per_site"]})
    lines = [
        f"## {scenario}: {SCENARIO_TEXT.get(scenario, '')}",
        "",
        f"{st['sites']} sites x {demo['episodes_per_site']} episodes x "
        f"{demo['frames_per_episode']} frames ({st['eval_episodes']} held out per site); "
        f"**{st['steps_per_site']} steps per site**, evaluated every "
        f"{st['eval_every_steps']}; lr {data['lr']:g}; seeds {s['seeds']}; untrained model "
        f"{_fmt(s['untrained'].get('mean'))}. Cost: {data['job_seconds'] / 3600:.1f} h of jobs.",
        "",
        f"![held-out MSE against steps per site]({png_name(scenario)})",
        "",
    ]
    lines += _table(rows, sites)
    lines += ["", "What joining pays each site: how much lower its held-out MSE is than the "
              "same site alone for the same steps (negative: worse than alone).", ""]
    lines += _gain_table(rows, sites)
    plateau = data.get("alone_plateau")
    if plateau:
        lines += ["", f"Alone's curve (site mean): best {_fmt(plateau['best'])} at step "
                  f"{plateau['best_step']}, {_fmt(plateau['last'])} at the end; last quarter "
                  f"{100 * plateau['last_quarter_change']:+.1f} %: **{plateau['verdict']}**."]
    lines += ["", "Goals:", ""]
    lines += [f"- {g['goal']}: {g['measured']} — **{'met' if g['met'] else 'NOT met'}**"
              for g in data["goals"]]
    lines += ["", "Variants: " + "; ".join(
        f"**{v['name']}**: {v['description']} {_overrides(v)}".strip()
        for v in report["variants"]) + "."]
    if data.get("explore"):
        e = data["explore"]
        lines += ["", f"### {scenario}: more variants, seed(s) {e['seeds']} only", ""]
        lines += _table(e["rows"], sites)
        lines += ["", "Explored: " + "; ".join(
            f"**{v['name']}** {_overrides(v)}" for v in report["explore_variants"]) + "."]
    return [*lines, ""]


def _pm(value: float | None, std: float | None, several: bool, fmt: str = "{:,.1f}") -> str:
    """``value ± std`` over seeds, or the value alone for one seed (whose std means nothing)."""
    if value is None:
        return ""
    return fmt.format(value) + (f" ± {fmt.format(std)}" if several and std is not None else "")


def _table(rows: Mapping[str, Mapping[str, Any]], sites: Sequence[str]) -> list[str]:
    """One Markdown row per variant: per-site and site-mean MSE, the ratios, the goals."""
    lines = [
        "| Row | " + " | ".join(sites) + f" | Site mean | Ratio to {SAME_CLOCK} (drift) | "
        f"<= {DRIFT_GOAL:g}x | Ratio to {ALL_THE_TIME} | Beats alone at every site | "
        "MB per run |",
        "|---|" + "---:|" * len(sites) + "---:|---:|---|---:|---|---:|",
    ]
    for label, r in rows.items():
        several = len(r["seeds"]) > 1
        cells = [_pm(r["per_site"][x], r["per_site_std"][x], several) for x in sites]
        drift = _pm(r.get("ratio_same_clock"), r.get("ratio_same_clock_std"), several, "{:.3f}x")
        goal = "" if "within_drift_goal" not in r else ("yes" if r["within_drift_goal"] else "NO")
        every = ("" if "beats_alone_everywhere" not in r or label == ALONE
                 else ("yes" if r["beats_alone_everywhere"] else "no"))
        moved = r.get("bytes_per_run")
        lines.append(
            f"| {label} | " + " | ".join(cells)
            + f" | {_pm(r['mean'], r['std'], several)} | {drift} | {goal} | "
            f"{_pm(r.get('ratio_all'), r.get('ratio_all_std'), several, '{:.2f}x')} | {every} | "
            f"{'' if moved is None else f'{moved / 1e6:,.1f}'} |")
    return lines


def _gain_table(rows: Mapping[str, Mapping[str, Any]], sites: Sequence[str]) -> list[str]:
    lines = ["| Row | " + " | ".join(sites) + " |", "|---|" + "---:|" * len(sites)]
    for label, r in rows.items():
        if label == ALONE or not r.get("gain"):
            continue
        lines.append(f"| {label} | " + " | ".join(f"{100 * r['gain'][x]:+.0f} %" for x in sites)
                     + " |")
    return lines


def _cluster(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Same configuration through the real TLS cluster", "",
             "The same ServerApp and ClientApp code with the same seeds, once in one process and "
             "once as SuperLink + SuperNodes over TLS: what is left is floating-point "
             "nondeterminism (thread counts differ).", "",
             "| Scenario | Variant | Seed | In-process site mean | Cluster site mean | "
             "Difference | In-process time | Cluster time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for k in checks:
        lines.append(
            f"| {k['scenario']} | {k['variant']} | {k['seed']} | {_fmt(k['inprocess_mean'], 2)} "
            f"| {_fmt(k['cluster_mean'], 2)} | {100 * k['relative_difference']:+.2f}% | "
            f"{k['inprocess_seconds']:.0f} s | {k['cluster_seconds']:.0f} s |")
    return [*lines, ""]


def _overrides(variant: Mapping[str, Any]) -> str:
    o = variant["overrides"]
    return f"(`{', '.join(f'{k}={v}' for k, v in o.items())}`)" if o else ""


def write(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``quality.json`` (everything, per seed and per evaluated model), ``quality.md`` (the
    tables) and ``quality-<scenario>.png`` (the curves) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for scenario, data in report["scenarios"].items():
        curves_png(data["summary"]["curves"], out_dir / png_name(scenario),
                   f"{scenario}: held-out action MSE, site mean (range over seeds)")
    return write_files(report, to_markdown(report), out_dir / JSON_NAME, out_dir / MARKDOWN_NAME)
