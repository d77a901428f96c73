"""The benchmark suite, in miniature: it runs end to end and reports a number for every metric.

Timings on shared CI machines mean nothing, so nothing here is timed; what is checked is that
every benchmark of the default run produces finite positive values and ratios, and that the
JSON and the Markdown table agree on what was measured.
"""

from __future__ import annotations

import json

import pytest

from bench.__main__ import BENCHMARKS, main, selected
from bench.results import JSON_NAME, MARKDOWN_NAME, all_metric_values, is_finite_positive


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    main(["--quick", "--only", "payload,codec,aggregation", "--repeats", "1", "--out", str(out)])
    return json.loads((out / JSON_NAME).read_text()), (out / MARKDOWN_NAME).read_text()


def test_every_metric_is_a_finite_positive_number(quick_report):
    report, _ = quick_report
    assert [s["name"] for s in report["sections"]] == ["payload", "codec", "aggregation"]
    values = all_metric_values(report)
    assert len(values) > 20
    assert [(k, v) for k, v in values if not is_finite_positive(v)] == []
    for section in report["sections"]:
        assert section["metrics"], section["name"]
        assert section["seconds"] > 0
    assert report["wall_seconds"] > 0 and report["peak_rss_bytes"] > 0


def test_markdown_table_names_every_metric(quick_report):
    report, markdown = quick_report
    for section in report["sections"]:
        assert f"## {section['title']}" in markdown
        for metric in section["metrics"]:
            assert f"| {metric['name']} |" in markdown


def test_report_says_where_it_ran_and_what_it_measured(quick_report):
    report, _ = quick_report
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["ram_bytes"] > 0
    assert {"torch", "flwr", "numpy"} <= set(machine["versions"]) and machine["date"]
    assert report["config"]["policy"] == "smolvla-tiny"
    assert report["config"]["trainable_parameters"] < report["config"]["parameters"]
    payload = next(s for s in report["sections"] if s["name"] == "payload")
    full = payload["details"]["full_model_fp32_bytes"]
    half = payload["details"]["wire"]["float16"]["downlink_bytes"]
    assert 0 < half < payload["details"]["wire"]["float32"]["downlink_bytes"] < full
    aggregation = next(s for s in report["sections"] if s["name"] == "aggregation")
    # zk0's path aggregated to what numpy computes (float32 rounding apart) before being timed
    assert aggregation["details"]["fedprox_max_abs_diff_vs_numpy"] < 1e-5


def test_registry_refuses_unknown_names_and_keeps_planned_ones_out_of_the_default_run():
    assert selected("") == ["payload", "codec", "aggregation"]
    assert {"overhead", "quality", "memory"} <= set(BENCHMARKS)
    with pytest.raises(SystemExit, match="unknown benchmark"):
        selected("payload,nope")
