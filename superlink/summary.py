"""``summary.html``: the run on one page, for a browser, rewritten after every round.

It shows what a lab member looks at first: the held-out MSE chart, the per-joint plots of the
latest plotted model, the per-site MSE table, the round table (loss, bytes, seconds) and every
failure. It is built only from the run folder's files (``run.json``, ``rounds/*.json``,
``eval_history.json``, PNGs), so it can be redrawn at any time, also for a run that failed.

One static file with no script and no external resource: images are embedded as data URIs,
so the page can be mailed or attached to an issue on its own; every text from the run (site
names, failure reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from common import atomic

SUMMARY = "summary.html"
REFERENCES = "references.json"  # per-site reference MSEs a learning study adds to a run folder
REFRESH_SECONDS = 30  # while the run is going

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1300px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid
#ddd;padding-bottom:4px}.status{font-weight:600}.ok{color:#1a7f37}.fail{color:#c62828}
.run{color:#9a6700}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
figure{margin:0}figcaption{font-size:13px;color:#555}.meta td{text-align:left}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:12px}
"""


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p>({escape(alt)}: not drawn yet)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f'<{tag}{" class=l" if i < left else ""}>{c}</{tag}>' for i, c in enumerate(row)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _status(meta: dict[str, Any], rounds_done: int) -> tuple[str, str, bool]:
    total = meta.get("run_config", {}).get("num-server-rounds", "?")
    if meta.get("failed"):
        return "fail", f"failed: {meta['failed']}", False
    if meta.get("finished"):
        return "ok", f"finished in {meta.get('seconds', 0):.0f} s", False
    return "run", f"running: {rounds_done} of {total} rounds done", True


def _overview(meta: dict[str, Any]) -> str:
    config = meta.get("run_config", {})
    started = meta.get("started")
    rows = [
        ("policy", config.get("policy")),
        ("strategy", config.get("strategy")),
        ("rounds x local steps", f"{config.get('num-server-rounds')} x "
                                 f"{config.get('local-steps')} (batch {config.get('batch-size')})"),
        ("wire dtype", config.get("wire-dtype")),
        ("parameters", "{trainable:,} trainable of {total:,}".format(**meta["parameters"])
         if "parameters" in meta else None),
        ("sites", ", ".join(f"{s} ({i.get('train_frames')} train frames, "
                            f"{i.get('eval_episodes')} held-out episodes)"
                            for s, i in sorted(meta.get("sites", {}).items()))),
        ("started", dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
         if started else None),
    ]
    return '<table class="meta">' + "".join(
        f"<tr><th class=l>{escape(k)}</th><td class=l>{escape(str(v))}</td></tr>"
        for k, v in rows if v is not None
    ) + "</table>"


def comparison_rows(
    history: Mapping[str, Any], references: Mapping[str, Any] | None
) -> list[tuple[str, Mapping[str, float], float | None]]:
    """Rows to read under the per-round MSEs, per site: the final model as each site
    personalized it (``personalize-steps``), and each reference a study gave the run folder
    in ``references.json`` (e.g. ``{"alone": {"per_site": {...}, "source": "..."}}``: each
    site trained alone for the same steps)."""
    rows: list[tuple[str, Mapping[str, float], float | None]] = []
    personal = history.get("personalized")
    if personal:
        rows.append((f"{personal['after_round']} personalized", personal["per_site"],
                     personal.get("weighted")))
    for name, ref in sorted((references or {}).items()):
        if isinstance(ref, Mapping) and isinstance(ref.get("per_site"), Mapping):
            rows.append((f"{name} (reference)", ref["per_site"], None))
    return rows


def load_references(run_dir: Path) -> dict[str, Any]:
    """The run folder's ``references.json`` (a learning study writes it), or nothing."""
    found = _load(run_dir / REFERENCES)
    return found if isinstance(found, dict) else {}


def _mse_table(history: dict[str, Any], references: Mapping[str, Any]) -> str:
    sites = list(history.get("per_site", {}))
    rows = []
    for i, r in enumerate(history.get("rounds", [])):
        values = [history["per_site"][s][i] for s in sites] + [history["weighted"][i]]
        rows.append([str(r), *(_num(v, "{:.2f}") for v in values)])
    for label, per_site, weighted in comparison_rows(history, references):
        values = [per_site.get(s) for s in sites] + [weighted]
        rows.append([escape(label), *(_num(v, "{:.2f}") for v in values)])
    return _table(["model after round", *map(escape, sites), "weighted"], rows)


def _round_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        evaluation = e.get("eval") or {}
        rows.append([
            str(e["round"]),
            str(len(e.get("sites", {}))),
            str(len(e.get("failures", []))),
            _num(e.get("train_loss"), "{:.4f}"),
            _num(e.get("uplink_bytes", 0) / 1e6, "{:.2f}"),
            _num(e.get("downlink_bytes", 0) / 1e6, "{:.2f}"),
            _num(e.get("seconds"), "{:.1f}"),
            _num(evaluation.get("action_mse_weighted"), "{:.2f}"),
        ])
    return _table(["round", "sites ok", "failed", "train loss", "uplink MB", "downlink MB",
                   "seconds", "held-out MSE after it"], rows)


def _failures(meta: dict[str, Any], entries: list[dict[str, Any]], evals: list[dict]) -> str:
    rows = [["stats", escape(str(node)), "error", escape(str(reason))]
            for node, reason in (meta.get("stats_failures") or {}).items()]
    for e in entries:
        rows += [[str(e["round"]), escape(f["site"]), escape(f["kind"]), escape(f["reason"])]
                 for f in e.get("failures", [])]
    for e in evals:
        rows += [[f"eval {e['after_round']}", escape(f["site"]), escape(f["kind"]),
                  escape(f["reason"])] for f in e.get("failures", [])]
    if not rows:
        return "<p>None.</p>"
    return _table(["round", "site", "kind", "reason"], rows, left=4)


def _plots(run_dir: Path, history: dict[str, Any]) -> str:
    plotted = history.get("trajectories", {})
    if not plotted:
        return "<p>No per-joint plot yet (run config <code>trajectory-every</code>).</p>"
    after = max(plotted, key=int)
    latest = plotted[after]
    parts = [f"<p>Global model after round {int(after)}: predicted (blue) and recorded (black) "
             "actions on each site's fixed held-out episode; dotted lines mark where the "
             "policy predicted a new chunk.</p><div class=plots>"]
    for site, rel in sorted(latest.get("plots", {}).items()):
        parts.append(f"<figure>{_img(run_dir / rel, f'{site} per-joint plot')}"
                     f"<figcaption>{escape(site)}: {escape(rel)}</figcaption></figure>")
    parts.append("</div>")
    for site, note in sorted(latest.get("notes", {}).items()):
        parts.append(f"<p>{escape(site)}: plot {escape(note)}.</p>")
    return "".join(parts)


def render_summary(run_dir: Path) -> str:
    """The page for the run folder ``run_dir`` as it is now."""
    meta = _load(run_dir / "run.json") or {}
    history = _load(run_dir / "eval_history.json") or {}
    entries = [e for e in (_load(p) for p in sorted((run_dir / "rounds").glob("round_*.json")))
               if isinstance(e, dict)]
    evals = [e["eval"] for e in entries if e.get("eval")]
    css_class, status, running = _status(meta, len(entries))
    title = f"zk0 run {meta.get('run_id', run_dir.name)}"
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if running else ""
    return "".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(title)}</title>{refresh}<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="status {css_class}">{escape(status)}</p>',
        _overview(meta),
        "<h2>Held-out action MSE (real units², lower is better)</h2>",
        _img(run_dir / "eval_mse.png", "held-out action MSE per round"),
        _mse_table(history, load_references(run_dir)),
        "<h2>Per-joint actions, latest plotted model</h2>",
        _plots(run_dir, history),
        "<h2>Rounds</h2>",
        _round_table(entries),
        "<h2>Failures</h2>",
        _failures(meta, entries, evals),
        f"<p><small>Folder {escape(str(run_dir))}: run.json, rounds/, eval_history.json, "
        "plots/, trajectories/, checkpoints/.</small></p>",
        "</body></html>\n",
    ])


def write_summary(run_dir: Path) -> Path:
    """(Re)write ``<run_dir>/summary.html`` atomically."""
    path = run_dir / SUMMARY
    atomic.write_bytes(path, render_summary(run_dir).encode())
    return path
