"""From job results to the study's table rows: mean and std over seeds, ratio to centralized.

Ratios are taken seed by seed (same data order, same eval frames) before averaging, because
absolute MSEs depend on the data's scale and on how long anything trains.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.quality.variants import Engine, Variant

GOAL_RATIO = 1.10  # the goal: federated within 10% of centralized


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[Mapping[str, Any]], variants: Sequence[Variant],
              engine: Engine = "inprocess") -> dict[str, Any]:
    """Per variant: per-site MSE (mean/std over seeds), site mean, ratio to centralized.

    Ratios are taken seed by seed (same data order, same eval frames) before averaging; the
    the goals: ratio <= 1.10, and a site mean below local-only's on own data.
    """
    by = {(r["variant"], r["seed"]): r for r in results
          if r["engine"] == engine or r["kind"] != "federated"}
    seeds = sorted({r["seed"] for r in results})
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        fields = ({"per_site": "local (own)", "others": "local (others)"} if v.kind == "local"
                  else {"per_site": v.name})
        for field_name, label in fields.items():
            per_seed = {s: by[(v.name, s)][field_name] for s in seeds if (v.name, s) in by}
            if per_seed and all(per_seed.values()):
                moved = {s: by[(v.name, s)].get("bytes") for s in per_seed}
                rows[label] = _row(v, field_name, per_seed, moved)
    central = next((r for r in rows.values() if r["kind"] == "centralized"), None)
    local = rows.get("local (own)")
    for row in rows.values():
        if central is not None:
            ratios = [row["site_mean_per_seed"][s] / central["site_mean_per_seed"][s]
                      for s in row["seeds"] if s in central["site_mean_per_seed"]]
            row["ratio"], row["ratio_std"] = _mean_std(ratios) if ratios else (None, None)
        if row["kind"] == "federated":
            row["within_goal"] = row.get("ratio") is not None and row["ratio"] <= GOAL_RATIO
            if local is not None:
                row["beats_local"] = row["mean"] < local["mean"]
    return {"rows": rows, "untrained": _untrained(results), "seeds": seeds}


def _row(variant: Variant, field_name: str, per_seed: Mapping[int, Mapping[str, float]],
         bytes_per_seed: Mapping[int, Mapping[str, int] | None] | None = None
         ) -> dict[str, Any]:
    """One table row: per-site mean/std over seeds, the site mean per seed, and the bytes a
    run moved (federated only; the mean over seeds, which all move the same)."""
    sites = sorted(next(iter(per_seed.values())))
    means = {s: statistics.fmean(v.values()) for s, v in per_seed.items()}
    moved = [b["total"] for b in (bytes_per_seed or {}).values() if b]
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


def _untrained(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The starting model's MSE (mean over seeds). Every run of one seed starts from the same
    model and scores the same frames, so their copies should agree: the spread says how well."""
    by_seed: dict[int, list[Mapping[str, float]]] = {}
    for r in results:
        if r.get("untrained"):
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


def cluster_check(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each variant x seed run both in-process and through the cluster, side by side."""
    inproc = {(r["variant"], r["seed"]): r for r in results if r["engine"] == "inprocess"}
    out = []
    for r in results:
        twin = inproc.get((r["variant"], r["seed"]))
        if r["engine"] != "cluster" or twin is None:
            continue
        a, b = statistics.fmean(twin["per_site"].values()), statistics.fmean(r["per_site"].values())
        out.append({
            "variant": r["variant"], "seed": r["seed"],
            "inprocess": twin["per_site"], "cluster": r["per_site"],
            "inprocess_mean": a, "cluster_mean": b, "relative_difference": (b - a) / a,
            "inprocess_seconds": twin["seconds"], "cluster_seconds": r["seconds"],
        })
    return out

