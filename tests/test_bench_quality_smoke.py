"""Smoke test of the learning-quality study (bench/quality/), at a size that runs in seconds.

Two tiny sites, one seed, one round of two local steps: far too short to say anything about
learning, but every variant goes through the same code as the real study (the unchanged
ServerApp loop and ClientApp in-process, the pooled and local-only baselines), and the report
must come out complete: a finite positive MSE for every variant and site, every variant in the
table. No timing asserts: the machines are shared.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from bench import quality
from demo_data import DemoSpec

SITES = ("site-0", "site-1")


def _labels(variants) -> list[str]:
    """Table rows: one per variant, the local-only baseline twice (own and others' data)."""
    out = []
    for v in variants:
        out += ["local (own)", "local (others)"] if v.kind == "local" else [v.name]
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    report = quality.run_quality(
        out / "work",
        seeds=(0,),
        rounds=1,
        local_steps=2,
        sites=len(SITES),
        demo_spec=DemoSpec(episodes_per_site=4, frames_per_episode=20, image_height=32,
                           image_width=32),
        eval_samples=8,
        workers=0,
        results_dir=out / "results",
    )
    return out, report


def test_json_has_a_finite_positive_mse_for_every_variant_and_site(study):
    out, report = study
    saved = json.loads((out / "results" / quality.JSON_NAME).read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    rows = saved["summary"]["rows"]
    assert sorted(rows) == sorted(_labels(quality.DEFAULT_VARIANTS))
    for label, row in rows.items():
        assert sorted(row["per_site"]) == list(SITES), label
        for site, mse in row["per_site"].items():
            assert math.isfinite(mse) and mse > 0, (label, site, mse)
        assert math.isfinite(row["mean"]) and row["mean"] > 0, label
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, label
    untrained = saved["summary"]["untrained"]
    assert math.isfinite(untrained["mean"]) and untrained["mean"] > 0
    # Every federated run and the centralized baseline start from the same model and score the
    # same frames: their round-0 MSEs agree up to the float16 downlink.
    assert untrained["max_relative_spread_within_seed"] < 0.02
    assert saved["machine"]["cores"] >= 1 and saved["config"]["total_steps"] == 4


def _job_results(out) -> dict[tuple[str, str], dict]:
    """Every job's saved result, by (variant, engine), read from the job files themselves."""
    found = [json.loads(p.read_text()) for p in (out / "work" / "jobs").glob("*.json")]
    return {(r["variant"], r["engine"]): r for r in found}


def test_rows_and_ratios_follow_from_the_job_results(study):
    """The table is recomputed here from the per-job files, not taken from the summary: a
    federated variant's ratio is its site-mean MSE over centralized's (same seed), the
    local-only rows are the diagonal and the off-diagonal means of the local job's matrix."""
    out, report = study
    rows = report["summary"]["rows"]
    jobs = _job_results(out)
    central_job = jobs[("centralized", "inprocess")]
    central = statistics.fmean(central_job["per_site"].values())
    untrained = statistics.fmean(central_job["untrained"].values())
    # Four optimizer steps already move the pooled policy below the untrained model.
    assert math.isfinite(central) and 0 < central < untrained, (central, untrained)
    assert rows["centralized"]["mean"] == pytest.approx(central)
    federated = [v.name for v in quality.DEFAULT_VARIANTS if v.kind == "federated"]
    for name in federated:
        site_mean = statistics.fmean(jobs[(name, "inprocess")]["per_site"].values())
        assert rows[name]["mean"] == pytest.approx(site_mean), name
        assert rows[name]["ratio"] == pytest.approx(site_mean / central), name
        assert rows[name]["within_goal"] == (site_mean / central <= quality.GOAL_RATIO), name
    matrix = jobs[("local", "inprocess")]["matrix"]
    assert sorted(matrix) == list(SITES) and all(sorted(m) == list(SITES) for m in matrix.values())
    own = {s: matrix[s][s] for s in SITES}
    others = {s: statistics.fmean(matrix[m][s] for m in SITES if m != s) for s in SITES}
    assert rows["local (own)"]["per_site"] == pytest.approx(own)
    assert rows["local (others)"]["per_site"] == pytest.approx(others)
    local_own = statistics.fmean(own.values())
    assert rows["local (own)"]["ratio"] == pytest.approx(local_own / central)
    for name in federated:
        assert rows[name]["beats_local"] == (rows[name]["mean"] < local_own), name


def test_markdown_lists_every_variant(study):
    out, _ = study
    table = (out / "results" / quality.MARKDOWN_NAME).read_text()
    for label in _labels(quality.DEFAULT_VARIANTS):
        assert f"| {label} |" in table, label
    assert "Ratio to centralized" in table


def test_a_finished_job_is_reused_not_rerun(study):
    """The cache is what lets a long study be resumed or extended without redoing work."""
    out, report = study
    done = next(r for r in report["results"] if r["variant"] == "fedavg")
    work = (out / "work").resolve()
    job = quality.Job(quality.Study(str(work), str(work / "data"), 1, 2,
                                    len(SITES), eval_samples=8, eval_every=1),
                      quality.VARIANTS["fedavg"], 0)
    saved = job.result_path.stat().st_mtime_ns
    assert quality.run_job(job) == done
    assert job.result_path.stat().st_mtime_ns == saved  # read, not rewritten


def test_custom_variants_parse_like_flwr_overrides():
    v = quality.parse_variant("fedavgm-m0.5:strategy=fedavgm,server-momentum=0.5")
    assert v.overrides == {"strategy": "fedavgm", "server-momentum": 0.5}
    assert quality.parse_variant("fedavg") is quality.VARIANTS["fedavg"]
