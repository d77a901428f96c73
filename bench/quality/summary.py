"""From job results to one scenario's table rows, curves and goals.

Every ratio and gain is taken seed by seed (same data order, same eval frames, same starting
model) before averaging over seeds, because absolute MSEs depend on the data and the budget:

- ``ratio_same_clock``: a row's site-mean MSE over ``pooled, same clock``'s (the drift a
  federated run adds to pooled training at the same sequential steps and samples);
- ``ratio_all``: over ``pooled, all the time``'s (information: 4x the sequential steps);
- ``gain`` per site: how much lower the row's MSE is than that site alone, as a share of
  alone's (what joining pays that site; negative: it loses).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.quality.variants import Variant

DRIFT_GOAL = 1.05  # every federated default within 5 % of pooled training at the same clock
ALONE, ALONE_OTHERS = "alone", "alone (others)"
SAME_CLOCK, ALL_THE_TIME = "pooled, same clock", "pooled, all the time"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _labelled(variants: Sequence[Variant]) -> list[tuple[str, Variant, str]]:
    """(row label, variant, result field) for every row the variants make."""
    out = []
    for v in variants:
        if v.kind == "alone":
            out += [(ALONE, v, "per_site"), (ALONE_OTHERS, v, "others")]
        else:
            out.append((v.name, v, "per_site"))
            if v.kind == "federated" and v.overrides.get("personalize-steps"):
                out.append((f"{v.name} (personalized)", v, "personalized"))
    return out


def summarize(results: Sequence[Mapping[str, Any]], variants: Sequence[Variant],
              engine: str = "inprocess") -> dict[str, Any]:
    """One scenario's rows (per-site mean/std over seeds, ratios, gains), curves and goals."""
    by = {(r["variant"], r["seed"]): r for r in results
          if r["engine"] == engine or r["kind"] != "federated"}
    seeds = sorted({r["seed"] for r in results})
    rows: dict[str, dict[str, Any]] = {}
    for label, v, field_name in _labelled(variants):
        per_seed = {s: by[(v.name, s)][field_name] for s in seeds
                    if (v.name, s) in by and by[(v.name, s)].get(field_name)}
        if per_seed:
            moved = {s: by[(v.name, s)].get("bytes") for s in per_seed}
            rows[label] = _row(v, field_name, per_seed, moved)
    for row in rows.values():
        for key, reference in (("ratio_same_clock", SAME_CLOCK), ("ratio_all", ALL_THE_TIME)):
            ref = rows.get(reference)
            ratios = [row["site_mean_per_seed"][s] / ref["site_mean_per_seed"][s]
                      for s in row["seeds"] if ref and s in ref["site_mean_per_seed"]]
            row[key], row[f"{key}_std"] = _mean_std(ratios) if ratios else (None, None)
        if ALONE in rows and row["field"] != "others":
            row["gain"] = _gains(row, rows[ALONE])
            row["beats_alone_everywhere"] = bool(row["gain"]) and all(
                g > 0 for g in row["gain"].values())
        if row["kind"] == "federated" and row["field"] == "per_site":
            row["within_drift_goal"] = (row.get("ratio_same_clock") is not None
                                        and row["ratio_same_clock"] <= DRIFT_GOAL)
    return {"rows": rows, "seeds": seeds, "untrained": _untrained(results),
            "curves": curves(results, variants, seeds, by)}


def _row(variant: Variant, field_name: str, per_seed: Mapping[int, Mapping[str, float]],
         bytes_per_seed: Mapping[int, Mapping[str, int] | None]) -> dict[str, Any]:
    """One table row: per-site mean/std over seeds, the site mean per seed, and the bytes a
    federated run moved (the mean over seeds, which all move the same)."""
    sites = sorted(next(iter(per_seed.values())))
    means = {s: statistics.fmean(v.values()) for s, v in per_seed.items()}
    moved = [b["total"] for b in bytes_per_seed.values() if b]
    stats = {site: _mean_std([v[site] for v in per_seed.values()]) for site in sites}
    mean, std = _mean_std(means.values())
    return {
        "variant": variant.name, "kind": variant.kind, "field": field_name,
        "seeds": sorted(per_seed), "per_seed": per_seed, "site_mean_per_seed": means,
        "per_site": {site: m for site, (m, _) in stats.items()},
        "per_site_std": {site: sd for site, (_, sd) in stats.items()},
        "mean": mean, "std": std,
        "bytes_per_run": statistics.fmean(moved) if moved else None,
    }


def _gains(row: Mapping[str, Any], alone: Mapping[str, Any]) -> dict[str, float]:
    """Per site, mean over seeds of (alone - row) / alone: the share of alone's MSE saved."""
    seeds = [s for s in row["seeds"] if s in alone["per_seed"]]
    sites = sorted(row["per_site"])
    return {site: statistics.fmean(
        (alone["per_seed"][s][site] - row["per_seed"][s][site]) / alone["per_seed"][s][site]
        for s in seeds) for site in sites} if seeds else {}


def curves(results: Sequence[Mapping[str, Any]], variants: Sequence[Variant],
           seeds: Sequence[int], by: Mapping[tuple[str, int], Mapping[str, Any]]
           ) -> dict[str, dict[str, Any]]:
    """Per variant: held-out MSE against steps per site (site mean and per site), mean and
    range over seeds, at every step all seeds evaluated; a personalized run adds its last
    point (global model at R x K steps, fine-tuned to the full budget)."""
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        runs = [by[(v.name, s)] for s in seeds if (v.name, s) in by]
        if not runs:
            continue
        points = [{int(k): p for k, p in r["curve"].items()} for r in runs]
        if v.kind == "federated":
            for r, p in zip(runs, points, strict=True):
                if r.get("personalized"):
                    p[max(p) + int(r["personalize_steps"])] = r["personalized"]
        steps = sorted(set.intersection(*(set(p) for p in points)))
        sites = sorted(points[0][steps[0]]) if steps else []
        means = [[statistics.fmean(p[k].values()) for p in points] for k in steps]
        out[v.name] = {
            "steps": steps,
            "site_mean": [statistics.fmean(m) for m in means],
            "site_mean_min": [min(m) for m in means],
            "site_mean_max": [max(m) for m in means],
            "per_site": {site: [statistics.fmean(p[k][site] for p in points) for k in steps]
                         for site in sites},
        }
    return out


def plateau(curve: Mapping[str, Any]) -> dict[str, Any]:
    """Where a curve's site mean is lowest, and how its last quarter moved: "turned up" (the
    last point above the best by more than 2 %), "plateaued" (the last quarter improved by
    less than 5 %) or "still falling"."""
    steps, values = curve["steps"], curve["site_mean"]
    best = min(range(len(values)), key=values.__getitem__)
    quarter = values[max(0, len(values) - 1 - max(1, len(values) // 4))]
    change = (values[-1] - quarter) / quarter
    if values[-1] > values[best] * 1.02:
        verdict = "turned up"
    elif change > -0.05:
        verdict = "plateaued"
    else:
        verdict = "still falling"
    return {"best_step": steps[best], "best": values[best], "last": values[-1],
            "last_quarter_change": change, "verdict": verdict}


def _untrained(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The starting model's MSE (mean over seeds). Every run of one seed starts from the same
    model and scores the same frames, so their copies should agree: the spread says how well.
    (Alone scores each site with its own stats' model: it is left out.)"""
    by_seed: dict[int, list[Mapping[str, float]]] = {}
    for r in results:
        if r.get("untrained") and r["kind"] != "alone":
            by_seed.setdefault(r["seed"], []).append(r["untrained"])
    if not by_seed:
        return {}
    sites = sorted(next(iter(by_seed.values()))[0])
    first = {seed: found[0] for seed, found in by_seed.items()}
    spread = max(abs(f[s] - first[seed][s]) / first[seed][s]
                 for seed, found in by_seed.items() for f in found for s in sites)
    per_site = {s: statistics.fmean(first[seed][s] for seed in first) for s in sites}
    return {"per_site": per_site, "mean": statistics.fmean(per_site.values()),
            "max_relative_spread_within_seed": spread}


def goals(scenario: str, summary: Mapping[str, Any], defaults: Sequence[str]) -> list[dict]:
    """The issue's goals for this scenario, each with the measured value and a verdict.

    ``defaults``: the rows of the federated defaults (global model; personalized rows too).
    """
    rows = summary["rows"]
    out = []
    for name in defaults:
        row = rows.get(name)
        if row is None or row["field"] != "per_site":
            continue
        ratio = row.get("ratio_same_clock")
        out.append({"goal": f"{name}: within {DRIFT_GOAL:g}x of pooled, same clock",
                    "measured": None if ratio is None else f"{ratio:.3f}x",
                    "met": ratio is not None and ratio <= DRIFT_GOAL})
    if scenario == "shared-tasks":
        for name in defaults:
            row = rows.get(name)
            if row is None or row["field"] != "per_site" or "gain" not in row:
                continue
            out.append({"goal": f"{name}: the global model beats alone at every site",
                        "measured": _gain_text(row["gain"]),
                        "met": row["beats_alone_everywhere"]})
    if scenario == "four-tasks":
        for name in defaults:
            row = rows.get(name)
            if row is None or row["field"] != "personalized" or "gain" not in row:
                continue
            out.append({"goal": f"{name}: at least as good as alone at every site",
                        "measured": _gain_text(row["gain"]),
                        "met": all(g >= 0 for g in row["gain"].values())})
        others = rows.get(ALONE_OTHERS)
        for name in defaults:
            row = rows.get(name)
            if row is None or row["field"] != "per_site" or others is None:
                continue
            better = others["mean"] / row["mean"]
            out.append({"goal": f"{name}: the global model far better than a site's own model "
                                "on the other sites' data",
                        "measured": f"{better:.1f}x lower MSE",
                        "met": better >= 2.0})
    return out


def _gain_text(gain: Mapping[str, float]) -> str:
    return ", ".join(f"{site} {100 * g:+.0f} %" for site, g in sorted(gain.items()))


def cluster_check(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each variant x seed run both in-process and through the cluster, side by side."""
    inproc = {(r["scenario"], r["variant"], r["seed"]): r for r in results
              if r["engine"] == "inprocess"}
    out = []
    for r in results:
        twin = inproc.get((r["scenario"], r["variant"], r["seed"]))
        if r["engine"] != "cluster" or twin is None:
            continue
        a, b = statistics.fmean(twin["per_site"].values()), statistics.fmean(r["per_site"].values())
        out.append({
            "scenario": r["scenario"], "variant": r["variant"], "seed": r["seed"],
            "inprocess": twin["per_site"], "cluster": r["per_site"],
            "inprocess_mean": a, "cluster_mean": b, "relative_difference": (b - a) / a,
            "inprocess_seconds": twin["seconds"], "cluster_seconds": r["seconds"],
        })
    return out
