"""The manual's reference is generated from the code (docs/gen/reference.py), so it lists every
setting, flag and metric there is, and each of them must carry its own description."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parent.parent


def _load_reference():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "docs/gen/reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


def test_every_setting_flag_and_metric_has_a_description():
    assert reference.undocumented() == []


def test_the_check_sees_a_setting_a_flag_and_a_metric_without_one():
    class Model(BaseModel):
        told: int = Field(1, description="has one")
        untold: int = 2

    parser = argparse.ArgumentParser(prog="zk0")
    sub = parser.add_subparsers().add_parser("thing")
    sub.add_argument("--told", help="has one")
    sub.add_argument("--untold")
    metrics = [reference.MetricDoc("zk0_x_total", "counter", (), "has one"),
               reference.MetricDoc("zk0_y", "gauge", ("site",), " ")]
    assert reference.undocumented_fields(Model, "run config") == [
        "run config untold: no description"]
    assert reference.undocumented_flags(parser) == ["zk0 thing --untold: no help"]
    assert reference.undocumented_metrics(metrics) == ["metric zk0_y: no description"]


def _rows(markdown: str) -> dict[str, str]:
    """First cell's code span -> the whole row, for each row of the generated tables."""
    return {m[1]: m[0] for m in re.finditer(r"^\| `([^`]+)`.*$", markdown, re.M)}


def test_the_run_config_reference_lists_every_pyproject_key_with_its_default():
    rows = _rows(reference.run_config())
    defaults = reference.run_config_defaults()
    assert set(defaults) <= set(rows), sorted(set(defaults) - set(rows))
    for key, value in defaults.items():
        assert f"| `{reference.toml_value(value)}` |" in rows[key], (key, rows[key])
    assert "| `40` |" in rows["num-server-rounds"]  # pyproject's value, not the model's 20


def test_the_run_and_node_config_references_list_every_model_field_in_kebab_case():
    from common.settings import NodeConfig, RunConfig

    for model, markdown in ((RunConfig, reference.run_config()),
                            (NodeConfig, reference.node_config())):
        rows = _rows(markdown)
        for name, field in model.model_fields.items():
            row = rows[name.replace("_", "-")]
            assert reference.text(field.description) in row


def test_the_supernode_settings_name_their_flag_and_variable():
    markdown = reference.supernode_settings()
    rows = {m[1]: m[0] for m in re.finditer(r"^\|.*?`(ZK0_[A-Z_]+)`.*$", markdown, re.M)}
    from deploy.lab.launcher import SiteSettings

    assert set(rows) == {f"ZK0_{name.upper()}" for name in SiteSettings.model_fields}
    assert rows["ZK0_SUPERLINK"].startswith("| `--superlink`<br>`ZK0_SUPERLINK`")
    assert rows["ZK0_WORKER"].startswith("| `--no-worker`<br>")
    assert rows["ZK0_STARTUP_TIMEOUT"].startswith("| (no flag)<br>")
    assert "| `9094` |" in rows["ZK0_RUNTIME_PORT"] and "≥ 1, ≤ 65535" in rows["ZK0_RUNTIME_PORT"]


def test_the_flag_help_is_the_settings_description():
    """One source: ``zk0 supernode --superlink``'s help is SiteSettings' description."""
    from deploy.lab.launcher import SiteSettings

    supernode = reference.subparsers(reference.zk0_parser())["supernode"]
    (action,) = [a for a in supernode._actions if a.dest == "superlink"]
    assert action.help.startswith(SiteSettings.model_fields["superlink"].description)


def test_the_commands_reference_has_every_command_and_flag():
    markdown = reference.commands_reference()
    for name, sub in reference.subparsers(reference.zk0_parser()).items():
        assert f"## zk0 {name}\n" in markdown
        for action in reference.flag_actions(sub):
            if action.option_strings:
                assert f"`{action.option_strings[0]}" in markdown, (name, action.option_strings)
    assert "### zk0 site register\n" in markdown and "### zk0 site-container start\n" in markdown


def _used_metric_names() -> set[str]:
    """Every zk0_* series the alert rules, their tests and the Grafana dashboards query."""
    monitoring = REPO / "deploy" / "monitoring"
    text = "".join(p.read_text() for p in [
        *monitoring.glob("prometheus/**/*.yml"), *monitoring.glob("grafana/dashboards/*.json")])
    # (a name followed by ".*" is a regex over a family of names, not a series)
    names = set(re.findall(r"\bzk0_[a-z0-9_]+(?![a-z0-9_.*])", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_the_metrics_reference_holds_every_series_the_alerts_and_dashboards_query():
    documented = {d.name for d in [*reference.coordinator_metric_docs(),
                                   *reference.site_metric_docs()]}
    used = _used_metric_names()
    assert used and used <= documented, sorted(used - documented)
    markdown = reference.coordinator_metrics() + reference.site_metrics()
    assert "| `zk0_site_train_steps_total`" in markdown  # a counter, as exposed
    assert "| `zk0_local_gpu_memory_used_bytes`" in markdown  # an exporter's family


def test_the_alerts_reference_has_every_rule():
    markdown = reference.alerts()
    rules = reference.alert_rules()
    assert len(rules) >= 7
    for rule in rules:
        assert f"### {rule['alert']}\n" in markdown
        assert rule["expr"].strip() in markdown


def test_markdown_specials_in_help_text_render_as_text():
    assert reference.text("a | b <c> *d* `e` [f]_g") == (
        r"a \| b &lt;c&gt; \*d\* \`e\` \[f\]\_g")
    assert reference.code("a|b") == r"`a\|b`"


@pytest.mark.parametrize("page", sorted((REPO / "docs").rglob("*.md")))
def test_no_hand_written_table_of_settings_flags_or_metrics(page):
    """Tables whose first column is a setting, a flag or a metric come from the generator."""
    heads = re.findall(r"^\| *([^|]+?) *\|", page.read_text(), re.M)
    assert not {h.strip("` ").lower() for h in heads} & {"key", "flag", "setting", "metric"}
    assert not re.search(r"^\| `--[a-z]", page.read_text(), re.M), "a flag table by hand"
    assert not re.search(r"^\| `zk0_[a-z_]+`", page.read_text(), re.M), "a metric table by hand"


def test_every_reference_marker_names_a_section():
    markers = {m for p in (REPO / "docs").rglob("*.md")
               for m in re.findall(r"^<!-- reference: ([a-z0-9-]+) -->$", p.read_text(), re.M)}
    assert markers == set(reference.SECTIONS)
