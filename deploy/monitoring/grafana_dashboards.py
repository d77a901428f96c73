"""zk0's Grafana dashboards, as code: ``python -m deploy.monitoring.grafana_dashboards`` writes
the JSON.

Two dashboards, provisioned from ``deploy/monitoring/grafana/dashboards/`` (see
``deploy/monitoring/grafana/provisioning/``), both on the datasource whose uid is
:data:`DATASOURCE_UID`:

- ``zk0-federation``: the coordinator's view: run state and round, SuperLink, per-site train
  loss and held-out MSE, failures by kind, bytes, round and aggregation times, site exporters;
- ``zk0-site``: a lab operator's view of one site's box: its training figures, messages,
  process CPU and memory by role, GPUs.

The committed JSON is what Grafana loads; a test keeps it equal to this code's output, and
checks every query against a real Prometheus after a real run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import atomic

DATASOURCE_UID = "zk0-prometheus"
DASHBOARD_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
WIDTH = 24  # Grafana's grid


@dataclass
class Panel:
    """One panel: a title, its queries (expr, legend), a unit and a size."""

    title: str
    queries: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | bargauge
    width: int = 12
    height: int = 8
    description: str = ""
    mappings: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        targets = [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
             "legendFormat": legend, "range": True, "instant": False}
            for i, (expr, legend) in enumerate(self.queries)
        ]
        options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom"},
                                   "tooltip": {"mode": "multi"}}
        if self.kind in ("stat", "bargauge"):
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                         "values": False},
                       "orientation": "auto", "textMode": "value_and_name",
                       "colorMode": "value", "graphMode": "none"}
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": self.unit, "mappings": self.mappings},
                            "overrides": []},
            "options": options,
        }


def _layout(panels: list[Panel]) -> list[dict[str, Any]]:
    """Left to right, wrapping at Grafana's 24 columns."""
    out, x, y, row_height = [], 0, 0, 0
    for i, panel in enumerate(panels, start=1):
        if x + panel.width > WIDTH:
            x, y, row_height = 0, y + row_height, 0
        out.append(panel.to_json(i, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return out


def _variable(name: str, label: str, query: str, *, multi: bool) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".+" if multi else None,
        "current": {},
        "options": [],
    }


def _dashboard(uid: str, title: str, description: str, panels: list[Panel],
               variables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["zk0"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [],
        "panels": _layout(panels),
    }


UP_DOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                         "1": {"text": "UP", "color": "green"}}}]
SITES = 'site=~"$site"'
RUNS = 'run=~"$run"'
RATE = "$__rate_interval"


def federation() -> dict[str, Any]:
    """The coordinator's dashboard: every site and every run."""
    panels = [
        Panel("Run state", [(f"max by (run, state) (zk0_run_state{{{RUNS}}} == 1)",
                             "run {{run}}: {{state}}")], kind="stat", width=6, height=5),
        Panel("Round", [(f"zk0_run_current_round{{{RUNS}}}", "run {{run}} round"),
                        (f"zk0_run_rounds{{{RUNS}}}", "run {{run}} of")],
              kind="stat", width=6, height=5),
        Panel("SuperLink", [("zk0_superlink_up", "/health")], kind="stat", width=4, height=5,
              mappings=UP_DOWN),
        Panel("Weighted held-out action MSE", [(f"zk0_run_eval_action_mse{{{RUNS}}}",
                                                "run {{run}}")],
              kind="stat", width=4, height=5),
        Panel("Sites sampled / replied (latest round)",
              [(f"zk0_run_sites_sampled{{{RUNS}}}", "sampled (run {{run}})"),
               (f"zk0_run_sites_replied{{{RUNS}}}", "replied (run {{run}})")],
              kind="stat", width=4, height=5),
        Panel("Train loss per site", [(f"zk0_site_train_loss{{{SITES}}}", "{{site}}")]),
        Panel("Held-out action MSE per site (global model)",
              [(f"zk0_site_eval_action_mse{{{SITES}}}", "{{site}}"),
               (f"zk0_run_eval_action_mse{{{RUNS}}}", "weighted (run {{run}})")],
              description="Real units squared; the weighted line is the run's federation-wide "
                          "figure (weights: eval samples)."),
        Panel("Failures per site, by kind",
              [(f"sum by (site, kind) (increase(zk0_site_failures_total{{{SITES}}}[{RATE}]))",
                "{{site}} {{kind}}")],
              description="Kinds: error (the site raised / was unreachable), timeout, "
                          "integrity (digest/shape), stats (stage 0), and any kind the "
                          "strategy's reply checks add.", width=8),
        Panel("Failures in a row", [(f"zk0_site_consecutive_failures{{{SITES}}}", "{{site}}")],
              width=8),
        Panel("Failures (total)", [(f"sum by (site, kind) (zk0_site_failures_total{{{SITES}}})",
                                    "{{site}} {{kind}}")], kind="bargauge", width=8),
        Panel("Uplink bytes per second (updates received)",
              [(f"rate(zk0_site_uplink_bytes_total{{{SITES}}}[{RATE}])", "{{site}}")],
              unit="Bps"),
        Panel("Downlink bytes per second (models sent)",
              [(f"rate(zk0_site_downlink_bytes_total{{{SITES}}}[{RATE}])", "{{site}}")],
              unit="Bps"),
        Panel("Round duration",
              [(f"histogram_quantile(0.5, sum by (le) (rate(zk0_round_duration_seconds_bucket"
                f"[{RATE}])))", "p50"),
               (f"histogram_quantile(0.9, sum by (le) (rate(zk0_round_duration_seconds_bucket"
                f"[{RATE}])))", "p90")], unit="s", width=8),
        Panel("Aggregation duration",
              [(f"histogram_quantile(0.9, sum by (le) (rate("
                f"zk0_aggregation_duration_seconds_bucket[{RATE}])))", "p90"),
               ("zk0_aggregation_duration_seconds_sum / zk0_aggregation_duration_seconds_count",
                "mean (all rounds)")], unit="s", width=8),
        Panel("Rounds", [("zk0_rounds_completed_total", "completed"),
                         ("zk0_rounds_failed_total", "failed")], kind="stat", width=8),
        Panel("Local training time share per site",
              [(f"rate(zk0_site_train_seconds_total{{{SITES}}}[{RATE}])", "{{site}} train"),
               (f"rate(zk0_site_eval_seconds_total{{{SITES}}}[{RATE}])", "{{site}} eval")],
              unit="percentunit", width=8,
              description="Seconds of local training / evaluation the site reported, per "
                          "second of wall time."),
        Panel("Training samples per second per site",
              [(f"rate(zk0_site_train_samples_total{{{SITES}}}[{RATE}])", "{{site}}"),
               (f"rate(zk0_site_skipped_samples_total{{{SITES}}}[{RATE}])",
                "{{site}} skipped")], width=8),
        Panel("Seconds since the last reply",
              [(f"time() - zk0_site_last_reply_timestamp_seconds{{{SITES}}}", "{{site}}")],
              unit="s", kind="bargauge", width=8),
        Panel("Site exporters", [('up{job="zk0-sites"}', "{{site}}")], kind="stat", width=12,
              height=5, mappings=UP_DOWN),
        Panel("Coordinator exporter", [('up{job="zk0-coordinator"}', "{{instance}}")],
              kind="stat", width=12, height=5, mappings=UP_DOWN),
    ]
    variables = [
        _variable("site", "Site", "label_values(zk0_site_last_reply_timestamp_seconds, site)",
                  multi=True),
        _variable("run", "Run", "label_values(zk0_run_state, run)", multi=True),
    ]
    return _dashboard(
        "zk0-federation", "zk0 federation",
        "Every site as the coordinator sees it, and every run (zk0 coordinator-metrics).",
        panels, variables)


ONE = 'site="$site"'


def site() -> dict[str, Any]:
    """A lab operator's dashboard: one site's box (zk0 supernode's endpoint)."""
    panels = [
        Panel("Exporter", [(f'up{{job="zk0-sites", {ONE}}}', "{{instance}}")], kind="stat",
              width=4, height=5, mappings=UP_DOWN),
        Panel("Last train loss", [(f"zk0_local_train_loss{{{ONE}}}", "loss")], kind="stat",
              width=5, height=5),
        Panel("Last held-out action MSE", [(f"zk0_local_eval_action_mse{{{ONE}}}", "MSE")],
              kind="stat", width=5, height=5),
        Panel("Samples per second (last round)",
              [(f"zk0_local_samples_per_second{{{ONE}}}", "samples/s")], kind="stat", width=5,
              height=5),
        Panel("Seconds since the last message",
              [(f"time() - max by (site) (zk0_local_last_task_timestamp_seconds{{{ONE}}})",
                "seconds")], kind="stat", unit="s", width=5, height=5),
        Panel("Train loss and held-out MSE",
              [(f"zk0_local_train_loss{{{ONE}}}", "train loss"),
               (f"zk0_local_eval_action_mse{{{ONE}}}", "held-out action MSE")]),
        Panel("Training throughput",
              [(f"rate(zk0_local_train_samples_total{{{ONE}}}[{RATE}])", "samples/s"),
               (f"rate(zk0_local_skipped_samples_total{{{ONE}}}[{RATE}])", "skipped/s"),
               (f"rate(zk0_local_train_steps_total{{{ONE}}}[{RATE}])", "steps/s")]),
        Panel("Messages handled / failed",
              [(f"sum by (task) (zk0_local_tasks_total{{{ONE}}})", "{{task}}"),
               (f"sum by (task) (zk0_local_task_failures_total{{{ONE}}})", "{{task}} failed")],
              kind="bargauge", width=8),
        Panel("Message duration (p50)",
              [(f"histogram_quantile(0.5, sum by (le, task) (rate("
                f"zk0_local_task_duration_seconds_bucket{{{ONE}}}[{RATE}])))", "{{task}}")],
              unit="s", width=8),
        Panel("Time in training / evaluation",
              [(f"rate(zk0_local_train_seconds_total{{{ONE}}}[{RATE}])", "train"),
               (f"rate(zk0_local_eval_seconds_total{{{ONE}}}[{RATE}])", "eval")],
              unit="percentunit", width=8),
        Panel("CPU by process role",
              [(f"rate(zk0_local_process_cpu_seconds_total{{{ONE}}}[{RATE}])", "{{role}}")],
              description="Cores in use: supernode, superexec, clientapp (Flower's per-message "
                          "app processes), launcher.", width=8),
        Panel("Memory by process role",
              [(f"zk0_local_process_resident_memory_bytes{{{ONE}}}", "{{role}}")],
              unit="bytes", width=8),
        Panel("Uplink bytes per second",
              [(f"rate(zk0_local_uplink_bytes_total{{{ONE}}}[{RATE}])", "updates sent")],
              unit="Bps", width=8),
        Panel("GPU utilisation", [(f"zk0_local_gpu_utilization_ratio{{{ONE}}}", "GPU {{gpu}}")],
              unit="percentunit", description="No data on a box without an NVIDIA GPU."),
        Panel("GPU memory",
              [(f"zk0_local_gpu_memory_used_bytes{{{ONE}}}", "GPU {{gpu}} used"),
               (f"zk0_local_gpu_memory_total_bytes{{{ONE}}}", "GPU {{gpu}} total")],
              unit="bytes"),
    ]
    variables = [_variable("site", "Site",
                           "label_values(zk0_local_process_resident_memory_bytes, site)",
                           multi=False)]
    return _dashboard(
        "zk0-site", "zk0 site",
        "One lab's box as its own exporter (zk0 supernode) sees it: training, messages, "
        "processes, GPUs.", panels, variables)


DASHBOARDS = {"zk0-federation.json": federation, "zk0-site.json": site}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def write(folder: Path = DASHBOARD_DIR) -> list[Path]:
    return [atomic.write_bytes(folder / name, render(build).encode())
            for name, build in DASHBOARDS.items()]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels (with Grafana's variables in it)."""
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


if __name__ == "__main__":
    for written in write():
        print(written, file=sys.stderr)
