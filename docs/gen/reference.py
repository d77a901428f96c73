"""The manual's reference, generated from the code that defines it.

Why: a table of settings written by hand next to the model it describes drifts from it (one
already had: a relay said it waits "up to a minute", the code waited 180 s). So the reference
pages hold only prose and markers; this module renders each marker's Markdown from the
definitions themselves, at every build (``hooks.py`` calls it from MkDocs):

- the run config, node config and ``zk0 supernode`` / ``zk0 site-container`` settings from their
  pydantic models (``Field(description=...)``, types, defaults, constraints); a run's defaults
  are pyproject.toml's ``[tool.flwr.app.config]``;
- every ``zk0`` command's flags from the parser ``deploy/cli.py`` builds (``help=``);
- the Prometheus metrics from their definitions (:mod:`superlink.metrics`,
  :mod:`supernode.metrics`, :mod:`deploy.monitoring.metrics_export`) and the alert rules from
  ``deploy/monitoring/prometheus/rules/zk0-alerts.yml``.

:func:`undocumented` lists every setting, flag and metric without a description; a unit test
keeps it empty.
"""

from __future__ import annotations

import argparse
import functools
import html
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parents[2]
ALERT_RULES = REPO / "deploy" / "monitoring" / "prometheus" / "rules" / "zk0-alerts.yml"
PYPROJECT = REPO / "pyproject.toml"


# -- Markdown ----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")
_MD_SPECIAL_BUT_CODE = re.compile(r"([\\*_\[\]|#])")


def text(value: str, *, code_spans: bool = False) -> str:
    """Plain text (a help string, a description) as Markdown that renders it unchanged; with
    ``code_spans`` its `backticks` stay code (the alert rules' annotations use them)."""
    special = _MD_SPECIAL_BUT_CODE if code_spans else _MD_SPECIAL
    return special.sub(r"\\\1", html.escape(" ".join(value.split()), quote=False))


def code(value: object) -> str:
    """``value`` as an inline code span (backticks inside it get a longer fence)."""
    s = str(value)
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}".replace("|", "\\|")


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- pydantic settings -------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A field's type as a user writes the value: ``int``, ``path``, ``one of a, b``..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(code(a) for a in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in parts)
    if origin is dict:
        return "NAME=VALUE pairs"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"), (annotated_types.Lt, "lt", "<"),
)


def constraints(field: FieldInfo) -> str:
    """The field's bounds, length and pattern, e.g. ``> 0, ≤ 1``."""
    out = []
    for item in field.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(item, kind):
                out.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen):
            out.append(f"length ≥ {item.min_length}")
        if getattr(item, "pattern", None):
            out.append(f"matches {code(item.pattern)}")
    return ", ".join(out)


def toml_value(value: Any) -> str:
    """A default as written in TOML (run and node config) or ``-c key=value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def env_value(value: Any) -> str:
    """A default as written in a ``ZK0_*`` variable or a flag."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_default(field: FieldInfo, render: Callable[[Any], str]) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None or value == {}:
        return "(see description)"
    if value == "":
        return code('""') if render is toml_value else "(empty)"
    return code(render(value))


def kebab(name: str) -> str:
    return name.replace("_", "-")


def config_table(model: type[BaseModel], defaults: Mapping[str, Any] | None = None) -> str:
    """A Flower config model (kebab-case keys): key, type, default, allowed, description.
    ``defaults`` (kebab-case) override the model's (pyproject.toml's values for a run)."""
    rows = []
    for name, field in model.model_fields.items():
        key = kebab(name)
        if defaults is not None and key in defaults:
            default = code(toml_value(defaults[key]))
        else:
            default = field_default(field, toml_value)
        rows.append([
            f"{code(key)}{{ #{key} }}", type_name(field.annotation), default,
            constraints(field), text(field.description or ""),
        ])
    return table(["key", "type", "default", "allowed", "description"], rows)


def run_config_defaults(path: Path = PYPROJECT) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


# -- argparse ----------------------------------------------------------------------------------


@functools.cache
def zk0_parser() -> argparse.ArgumentParser:
    from deploy.cli import build_parser

    return build_parser()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def sub_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Sub-command name -> its one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's flags and positionals (not ``-h`` and not its sub-commands)."""
    return [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help as ``--help`` prints it (``%(default)s`` and friends expanded)."""
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


def action_default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return ""
    value = action.default
    if value is None or value is argparse.SUPPRESS or value == []:
        return ""
    if isinstance(value, tuple):
        value = "x".join(str(v) for v in value)
    return code(value)


def flags_table(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    rows = []
    for action in flag_actions(parser):
        invocation = formatter._format_action_invocation(action)
        rows.append([code(invocation), action_default(action),
                     text(action_help(parser, action))])
    return table(["flag", "default", "description"], rows) if rows else ""


def _first_paragraph(doc: str | None) -> str:
    para = (doc or "").strip().split("\n\n")[0]
    return text(para.replace("``", "`").replace("`", ""))


def command_sections(parser: argparse.ArgumentParser, path: list[str], level: int,
                     helps: Mapping[str, str]) -> Iterator[str]:
    name = " ".join(path)
    yield f"{'#' * level} {name}\n"
    if helps.get(path[-1]):
        yield f"{text(helps[path[-1]][:1].upper() + helps[path[-1]][1:])}.\n"
    if parser.description:
        yield _first_paragraph(parser.description) + "\n"
    usage = parser.format_usage().removeprefix("usage: ").strip()
    yield f"```text\n{usage}\n```\n"
    if flags := flags_table(parser):
        yield flags
    children = subparsers(parser)
    child_helps = sub_help(parser)
    for child, sub in children.items():
        yield from command_sections(sub, [*path, child], level + 1, child_helps)


def commands_overview() -> str:
    from deploy.cli import COMMANDS

    rows = [[f"[{code('zk0 ' + c.name)}](#zk0-{c.name})", text(c.help)] for c in COMMANDS]
    return table(["command", "what it does"], rows)


def commands_reference() -> str:
    parser = zk0_parser()
    helps = sub_help(parser)
    out = []
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "90"  # argparse wraps usage to the terminal: the same on every build
    try:
        for name, sub in subparsers(parser).items():
            out += command_sections(sub, ["zk0", name], 2, helps)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(out)


# -- settings with flags and variables (zk0 supernode, zk0 site-container) ---------------------


def settings_table(model: type[BaseModel], parser: argparse.ArgumentParser) -> str:
    """A pydantic-settings model: its flag (from ``parser``) and variable, type, default and
    description, one row per setting."""
    flags = {a.dest: a for a in flag_actions(parser) if a.option_strings}
    prefix = model.model_config.get("env_prefix", "")
    rows = []
    for name, field in model.model_fields.items():
        action = flags.get(name)
        flag = code(action.option_strings[-1]) if action is not None else "(no flag)"
        variable = f"{prefix}{name.upper()}"
        rows.append([
            f"{flag}<br>{code(variable)}{{ #{variable.lower()} }}", type_name(field.annotation),
            field_default(field, env_value),
            " ".join(filter(None, [text(field.description or ""), constraints(field)])),
        ])
    return table(["flag, variable", "type", "default", "description"], rows)


def supernode_settings() -> str:
    from deploy.lab.launcher import SiteSettings

    return settings_table(SiteSettings, subparsers(zk0_parser())["supernode"])


def site_container_settings() -> str:
    from deploy.containers.site_container_spec import SiteContainerSettings

    start = subparsers(subparsers(zk0_parser())["site-container"])["start"]
    return settings_table(SiteContainerSettings, start)


def run_config() -> str:
    from common.settings import RunConfig

    return config_table(RunConfig, run_config_defaults())


def node_config() -> str:
    from common.settings import NodeConfig

    return config_table(NodeConfig)


# -- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDoc:
    name: str  # as exposed (a counter's ``_total`` included)
    type: str
    labels: tuple[str, ...]
    documentation: str


def _metric_docs(module: types.ModuleType, families: Iterable[Any]) -> list[MetricDoc]:
    from prometheus_client.metrics import MetricWrapperBase

    out = []
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            suffix = "_total" if value._type == "counter" else ""
            out.append(MetricDoc(value._name + suffix, value._type, tuple(value._labelnames),
                                 value._documentation))
    for f in families:
        suffix = "_total" if f.type == "counter" else ""
        out.append(MetricDoc(f.name + suffix, f.type, tuple(f.labels), f.documentation))
    return out


def coordinator_metric_docs() -> list[MetricDoc]:
    from deploy.monitoring import metrics_export
    from superlink import metrics

    return _metric_docs(metrics, metrics_export.COORDINATOR_FAMILIES)


def site_metric_docs() -> list[MetricDoc]:
    from deploy.monitoring import metrics_export
    from supernode import metrics

    return _metric_docs(metrics, metrics_export.SITE_FAMILIES)


def metrics_table(docs: list[MetricDoc]) -> str:
    rows = [[f"{code(d.name)}{{ #{d.name} }}", d.type, ", ".join(code(x) for x in d.labels),
             text(d.documentation)] for d in docs]
    return table(["metric", "type", "labels", "description"], rows)


def coordinator_metrics() -> str:
    return metrics_table(coordinator_metric_docs())


def site_metrics() -> str:
    return metrics_table(site_metric_docs())


# -- alert rules -------------------------------------------------------------------------------


def alert_rules(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def alerts() -> str:
    out = []
    for rule in alert_rules():
        notes = rule.get("annotations", {})
        severity = rule.get("labels", {}).get("severity", "")
        pending = rule.get("for", "")
        out.append(f"### {rule['alert']}\n")
        out.append(f"**Severity** {code(severity)} · **fires after** "
                   f"{code(pending) if pending else 'the first evaluation that matches'}\n")
        summary, description = (text(notes.get(k, ""), code_spans=True)
                                for k in ("summary", "description"))
        out.append(f"{summary}. {description}\n")
        out.append(f"```promql\n{rule['expr'].strip()}\n```\n")
    return "\n".join(out)


# -- what the pages use, and what has no description ---------------------------------------

SECTIONS: dict[str, Callable[[], str]] = {
    "run-config": run_config,
    "node-config": node_config,
    "supernode-settings": supernode_settings,
    "site-container-settings": site_container_settings,
    "commands-overview": commands_overview,
    "commands": commands_reference,
    "coordinator-metrics": coordinator_metrics,
    "site-metrics": site_metrics,
    "alerts": alerts,
}


def undocumented_fields(model: type[BaseModel], what: str) -> list[str]:
    return [f"{what} {name}: no description" for name, field in model.model_fields.items()
            if not (field.description or "").strip()]


def undocumented_flags(parser: argparse.ArgumentParser, path: str = "zk0") -> list[str]:
    out = []
    for action in flag_actions(parser):
        if not (action.help or "").strip() or action.help is argparse.SUPPRESS:
            name = "/".join(action.option_strings) or action.dest
            out.append(f"{path} {name}: no help")
    for name, sub in subparsers(parser).items():
        out += undocumented_flags(sub, f"{path} {name}")
    return out


def undocumented_metrics(docs: Iterable[MetricDoc]) -> list[str]:
    return [f"metric {d.name}: no description" for d in docs if not d.documentation.strip()]


def undocumented() -> list[str]:
    """Every run-config key, node-config key, ``zk0 supernode`` / ``site-container`` setting,
    ``zk0`` flag and metric that has no description."""
    from common.settings import NodeConfig, RunConfig
    from deploy.containers.site_container_spec import SiteContainerSettings
    from deploy.lab.launcher import SiteSettings

    return [
        *undocumented_fields(RunConfig, "run config"),
        *undocumented_fields(NodeConfig, "node config"),
        *undocumented_fields(SiteSettings, "zk0 supernode setting"),
        *undocumented_fields(SiteContainerSettings, "zk0 site-container setting"),
        *undocumented_flags(zk0_parser()),
        *undocumented_metrics([*coordinator_metric_docs(), *site_metric_docs()]),
    ]
