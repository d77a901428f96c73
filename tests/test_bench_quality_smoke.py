"""Smoke test of the learning study (bench/quality/), at a size that runs in a minute.

Two tiny sites of the shared-tasks scenario, one seed, 4 steps per site evaluated every 2: far
too short to say anything about learning, but every row goes through the same code as the real
study (the unchanged ServerApp loop and ClientApp in-process, personalization at the sites, the
three references with their curves), and the report must come out complete and consistent with
the per-job files. No timing asserts: the machines are shared.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from bench import quality
from bench.quality.summary import ALL_THE_TIME, ALONE, ALONE_OTHERS, SAME_CLOCK

SITES = ("site-0", "site-1")
STEPS, EVERY = 4, 2
SCENARIO = "shared-tasks"
DEMO = {"episodes_per_site": 4, "frames_per_episode": 20, "image_height": 32, "image_width": 32}
VARIANTS = (
    *quality.REFERENCES,
    quality.Variant("fedavgm 2x2", overrides={"local-steps": 2}),
    quality.Variant("diloco 4x1", overrides={"strategy": "diloco", "server-lr": 0.7,
                                             "server-momentum": 0.9, "local-steps": 1}),
    quality.Variant("fedavgm 1x2 + personalize 2",
                    overrides={"local-steps": 2, "personalize-steps": 2}),
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    report = quality.run_quality(
        out / "work", scenarios=(SCENARIO,), seeds=(0,), sites=len(SITES), configs=VARIANTS,
        steps_per_site=STEPS, eval_every_steps=EVERY,
        demo=DEMO,
        eval_samples=8, workers=0, results_dir=out / "results",
    )
    return out, report


def _jobs(out) -> dict[str, dict]:
    """Every job's saved result by variant, read from the job files themselves."""
    found = [json.loads(p.read_text()) for p in (out / "work" / "jobs").glob("*.json")]
    return {r["variant"]: r for r in found}


def test_every_row_has_a_finite_positive_mse_for_every_site(study):
    out, _ = study
    saved = json.loads((out / "results" / quality.JSON_NAME).read_text())
    rows = saved["scenarios"][SCENARIO]["summary"]["rows"]
    expected = {ALONE, ALONE_OTHERS, SAME_CLOCK, ALL_THE_TIME, "fedavgm 2x2", "diloco 4x1",
                "fedavgm 1x2 + personalize 2", "fedavgm 1x2 + personalize 2 (personalized)"}
    assert set(rows) == expected
    for label, row in rows.items():
        assert sorted(row["per_site"]) == list(SITES), label
        assert all(math.isfinite(v) and v > 0 for v in row["per_site"].values()), label
        assert math.isfinite(row["ratio_same_clock"]) and row["ratio_same_clock"] > 0, label
    untrained = saved["scenarios"][SCENARIO]["summary"]["untrained"]
    # The federated runs and the pooled references start from the same model and score the
    # same frames: their round-0 MSEs agree up to the float16 downlink.
    assert untrained["max_relative_spread_within_seed"] < 0.02


def test_curves_follow_the_budget_in_steps_per_site(study):
    """Every row is evaluated at 0, 2 and 4 steps per site: the federated runs by rounds x
    local steps, pooled-all-the-time by its steps over the number of sites, the personalized
    run with its last point at the full budget."""
    out, report = study
    curves = report["scenarios"][SCENARIO]["summary"]["curves"]
    for name in ("alone", SAME_CLOCK, ALL_THE_TIME, "fedavgm 2x2", "diloco 4x1",
                 "fedavgm 1x2 + personalize 2"):
        assert curves[name]["steps"] == [0, 2, 4], name
    jobs = _jobs(out)
    personal = jobs["fedavgm 1x2 + personalize 2"]
    assert sorted(map(int, personal["curve"])) == [0, 2]  # the global model's rounds
    assert personal["personalize_steps"] == 2
    last = statistics.fmean(personal["personalized"].values())
    assert curves["fedavgm 1x2 + personalize 2"]["site_mean"][-1] == pytest.approx(last)
    assert sorted(map(int, jobs[ALL_THE_TIME]["curve"])) == [0, 2, 4]


def test_ratios_and_gains_follow_from_the_job_results(study):
    """Recomputed here from the per-job files: a row's drift ratio is its site mean over
    pooled-same-clock's, a site's gain is (alone - row) / alone, the alone rows are the
    diagonal and off-diagonal means of the alone job's matrix."""
    out, report = study
    rows = report["scenarios"][SCENARIO]["summary"]["rows"]
    jobs = _jobs(out)
    same_clock = statistics.fmean(jobs[SAME_CLOCK]["per_site"].values())
    for name in ("fedavgm 2x2", "diloco 4x1"):
        mean = statistics.fmean(jobs[name]["per_site"].values())
        assert rows[name]["ratio_same_clock"] == pytest.approx(mean / same_clock), name
        assert rows[name]["within_drift_goal"] == (mean / same_clock <= quality.DRIFT_GOAL)
    matrix = jobs["alone"]["matrix"]
    own = {s: matrix[s][s] for s in SITES}
    assert rows[ALONE]["per_site"] == pytest.approx(own)
    assert rows[ALONE_OTHERS]["per_site"] == pytest.approx(
        {s: statistics.fmean(matrix[m][s] for m in SITES if m != s) for s in SITES})
    personal = rows["fedavgm 1x2 + personalize 2 (personalized)"]
    tuned = jobs["fedavgm 1x2 + personalize 2"]["personalized"]
    for site in SITES:
        assert personal["gain"][site] == pytest.approx((own[site] - tuned[site]) / own[site])
    assert personal["beats_alone_everywhere"] == all(g > 0 for g in personal["gain"].values())


def test_markdown_png_and_run_folders(study):
    out, report = study
    table = (out / "results" / quality.MARKDOWN_NAME).read_text()
    for label in report["scenarios"][SCENARIO]["summary"]["rows"]:
        assert f"| {label} |" in table, label
    assert "Goals:" in table and "within 1.05x of pooled, same clock" in table
    png = out / "results" / f"quality-{SCENARIO}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each federated run folder got the same seed's alone reference: its summary shows it.
    run_dir = Path(_jobs(out)["fedavgm 1x2 + personalize 2"]["run_dir"])
    page = (run_dir / "summary.html").read_text()
    assert "alone (reference)" in page and "personalized" in page


def test_a_finished_job_is_reused_not_rerun(study):
    """The cache is what lets a long study be resumed or extended without redoing work."""
    out, report = study
    done = next(r for r in report["results"] if r["variant"] == "fedavgm 2x2")
    job = next(j for j in _study_jobs(out) if j.variant.name == "fedavgm 2x2")
    saved = job.result_path.stat().st_mtime_ns
    assert quality.run_job(job) == done
    assert job.result_path.stat().st_mtime_ns == saved  # read, not rewritten


def test_a_study_cut_short_reports_its_finished_jobs_and_names_the_rest(study, tmp_path):
    """--cached-only runs nothing: the finished jobs make the report, the others are named."""
    out, report = study
    extra = quality.Variant("fedavgm 4x1 (never run)", overrides={"local-steps": 1})
    cut = quality.run_quality(
        out / "work", scenarios=(SCENARIO,), seeds=(0,), sites=len(SITES),
        configs=(*VARIANTS, extra), steps_per_site=STEPS, eval_every_steps=EVERY,
        demo=DEMO,
        eval_samples=8, workers=0, results_dir=tmp_path, cached_only=True,
    )
    slug = next(j for j in _study_jobs(out, extra) if j.variant is extra).slug
    assert cut["left_out"] == [slug] and not (out / "work" / "jobs" / f"{slug}.json").exists()
    rows = cut["scenarios"][SCENARIO]["summary"]["rows"]
    assert extra.name not in rows
    assert rows == report["scenarios"][SCENARIO]["summary"]["rows"]
    assert f"`{slug}`" in (tmp_path / "quality.md").read_text()


def _study_jobs(out, *more):
    work = (out / "work").resolve()
    study = quality.make_study(work, SCENARIO, len(SITES), steps_per_site=STEPS,
                               demo=DEMO,
                               eval_samples=8, eval_every_steps=EVERY)
    return [quality.Job(study, v, 0) for v in (*VARIANTS, *more)]


def test_custom_variants_parse_like_flwr_overrides():
    v = quality.parse_variant("fedavgm-m0.5:strategy=fedavgm,server-momentum=0.5")
    assert v.overrides == {"strategy": "fedavgm", "server-momentum": 0.5}
    assert quality.parse_variant("alone") is quality.VARIANTS["alone"]
    with pytest.raises(Exception, match="num-server-rounds follows from"):
        quality.parse_variant("x:num-server-rounds=3")
