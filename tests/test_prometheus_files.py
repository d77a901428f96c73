"""deploy/monitoring/prometheus and deploy/monitoring/grafana, checked by Prometheus's own tool
and Grafana's shapes.

``promtool check config`` / ``check rules`` / ``test rules`` on the project's files, the config
rendered for a cluster's ports, and every dashboard query parsed by promtool (as recording rules
of a generated rules file). Running them against data: tests/test_e2e_monitoring.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prometheus_tools import promtool

from deploy.monitoring import grafana_dashboards as gd
from deploy.monitoring.prometheus_server import CONFIG, PROMETHEUS_DIR, render_config, write_config

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "monitoring" / "grafana"


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_checks_the_config_and_its_rules():
    _ok(promtool("check", "config", str(CONFIG)))
    rules = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert rules
    _ok(promtool("check", "rules", *map(str, rules)))


def test_every_alert_rule_has_a_passing_promtool_unit_test():
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    result = promtool("test", "rules", *map(str, tests))
    _ok(result)
    alerts = {r["alert"] for f in (PROMETHEUS_DIR / "rules").glob("*.yml")
              for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for f in tests for group in yaml.safe_load(f.read_text())["tests"]
              for t in group.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alerts == tested, f"alerts without a firing unit test: {alerts - tested}"
    assert {"Zk0SiteFailingRepeatedly", "Zk0NoRoundCompleted", "Zk0HeldOutMseRising",
            "Zk0SiteAbsent", "Zk0SiteExporterDown", "Zk0SuperLinkDown"} <= alerts


def test_a_config_rendered_for_other_ports_is_valid_and_keeps_the_project_jobs(tmp_path):
    config = render_config("127.0.0.1:19400", {"a": "127.0.0.1:19401", "b": "127.0.0.1:19402"},
                           scrape_interval="1s")
    path = write_config(tmp_path / "prometheus.yml", config)
    _ok(promtool("check", "config", str(path)))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["zk0-coordinator"]["static_configs"] == [{"targets": ["127.0.0.1:19400"]}]
    assert jobs["zk0-sites"]["honor_labels"] is True
    assert jobs["zk0-sites"]["static_configs"][1] == {"targets": ["127.0.0.1:19402"],
                                                      "labels": {"site": "b"}}
    # the documented default names the ports `zk0 cluster --metrics-port 9400` uses
    default = yaml.safe_load(CONFIG.read_text())
    targets = [c["targets"][0] for j in default["scrape_configs"] for c in j["static_configs"]]
    assert targets == [f"127.0.0.1:{9400 + i}" for i in range(5)]


def test_dashboards_are_the_generated_json_and_grafana_provisioning_shaped():
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/zk0.yml").read_text())
    [source] = datasource["datasources"]
    assert source["uid"] == gd.DATASOURCE_UID and source["type"] == "prometheus"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/zk0.yml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"

    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert [f.name for f in files] == sorted(gd.DASHBOARDS)
    uids = set()
    for path in files:
        text = path.read_text()
        assert text == gd.render(gd.DASHBOARDS[path.name]), (
            f"{path} differs from deploy/monitoring/grafana_dashboards.py: run "
            "python -m deploy.monitoring.grafana_dashboards")
        board = json.loads(text)
        assert board["uid"] not in uids and board["title"] and board["schemaVersion"] >= 36
        uids.add(board["uid"])
        assert board["panels"], path
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids)
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0
            assert panel["targets"]
            for target in panel["targets"]:
                assert target["expr"] and target["refId"]
                assert target["datasource"]["uid"] == source["uid"]
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == source["uid"]
            assert variable["query"]["query"].startswith("label_values(")


def test_every_dashboard_query_parses_with_promtool(tmp_path):
    from prometheus_tools import grafana_to_promql

    rules = [
        {"record": f"zk0:dashboard_query_{i}", "expr": grafana_to_promql(expr, "site-0")}
        for i, expr in enumerate(e for b in gd.DASHBOARDS.values() for e in gd.expressions(b()))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    _ok(result)
    assert f"{len(rules)} rules found" in result.stdout
