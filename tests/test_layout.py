"""The tree keeps its shape: the app bundle holds only app code, no module borrows a name, and
``deploy/``'s rooms import one another only as their table allows, without cycles.

``common/``, ``superlink/`` and ``supernode/`` travel to every site inside Flower's app bundle
(FAB, ``fab-include`` in pyproject.toml); they must run there without the deployment tooling,
certificates, benchmarks or tests, so they may not import them.

``deploy/`` is one room (sub-package) per job; :data:`ROOM_IMPORTS` is which rooms each may
import, the same table ``deploy/__init__.py`` and each room's own docstring state. Only the
command table (``deploy/cli.py``) names every room; no room imports it.
"""

from __future__ import annotations

import ast
import graphlib
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APP_PACKAGES = ("common", "superlink", "supernode")
NOT_IN_THE_APP = {"deploy", "certs", "bench", "tests", "harness", "demo_data"}
OUR_PACKAGES = (*APP_PACKAGES, "deploy", "certs", "bench", "harness", "demo_data")

# room -> the rooms its modules may import (the graph must stay acyclic)
ROOM_IMPORTS: dict[str, set[str]] = {
    "flower": set(),
    "monitoring": {"flower"},
    "coordinator": {"flower", "monitoring"},
    "lab": {"flower", "monitoring"},
    "cluster": {"flower", "monitoring", "coordinator", "lab"},
    "containers": {"flower", "monitoring", "coordinator", "lab"},
}
COMMAND_TABLE = "cli"  # deploy/cli.py: imports (by name) any room; no room imports it


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth (lazy imports too)."""
    return {name.split(".")[0] for name in _imported_names(path)}


def _imported_names(path: Path, package: str = "") -> set[str]:
    """Dotted names ``path`` imports, at any depth (lazy imports too): ``from a.b import c``
    gives ``a.b`` and ``a.b.c`` (``c`` may be a module or a name in ``a.b``); relative imports
    are resolved against ``package``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _room_of(dotted: str) -> str | None:
    """The deploy room a dotted name is in (``deploy.lab.launcher`` -> ``lab``; the command
    table -> ``cli``); None outside ``deploy`` or for ``deploy`` itself."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == "deploy" and len(parts) > 1 else None


def room_violations(deploy: Path, rules: dict[str, set[str]]) -> list[str]:
    """Every import in ``deploy`` (a folder laid out as ``deploy/``) that its room may not make,
    every module outside a room, and every room the table does not know."""
    out = []
    rooms = {p.parent.name for p in deploy.glob("*/__init__.py")}
    out += [f"deploy/{r}/ is a room missing from the table" for r in sorted(rooms - set(rules))]
    for path in sorted(deploy.rglob("*.py")):
        rel = path.relative_to(deploy)
        if len(rel.parts) == 1:
            if path.stem not in ("__init__", COMMAND_TABLE):
                out.append(f"deploy/{rel} lives in no room")
            continue
        room = rel.parts[0]
        package = ".".join(["deploy", *rel.parts[:-1]])
        allowed = rules.get(room, set()) | {room}
        first: dict[str, str] = {}  # room -> the shortest name imported from it
        for name in sorted(_imported_names(path, package), key=len, reverse=True):
            if (other := _room_of(name)) not in (None, room):
                first[other] = name
        for other, name in sorted(first.items(), key=lambda item: item[1]):
            if other == COMMAND_TABLE:
                out.append(f"deploy/{rel} imports the command table ({name})")
            elif other in rules and other not in allowed:
                out.append(f"deploy/{rel} (room {room}) imports {name} (room {other})")
    return out


def room_graph(deploy: Path) -> dict[str, set[str]]:
    """Room -> the rooms its modules import, as they are (the command table left out)."""
    graph: dict[str, set[str]] = {}
    for path in deploy.glob("*/**/*.py"):
        rel = path.relative_to(deploy)
        room = rel.parts[0]
        package = ".".join(["deploy", *rel.parts[:-1]])
        graph.setdefault(room, set())
        graph[room] |= {r for n in _imported_names(path, package)
                        if (r := _room_of(n)) not in (None, room, COMMAND_TABLE)}
    return graph


def test_app_code_imports_no_deployment_bench_or_test_code():
    offences = []
    for package in APP_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            bad = _imported_modules(path) & NOT_IN_THE_APP
            offences += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(bad)]
    assert offences == []


def test_the_import_rule_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from deploy.flower.env import child_env\n    import bench\n")
    assert _imported_modules(module) >= {"deploy", "bench"}


def test_the_app_bundle_is_exactly_the_app_packages():
    with (REPO / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["flwr"]["app"]["fab-include"]
    assert sorted(include) == sorted(f"{p}/**/*.py" for p in APP_PACKAGES)


def test_no_module_or_package_shadows_a_stdlib_or_dependency_name():
    taken = set(sys.stdlib_module_names) | {
        name for name, dists in importlib.metadata.packages_distributions().items()
        if set(dists) != {"zk0"}
    }
    clashes = []
    for package in OUR_PACKAGES:
        assert package not in taken, f"package {package} shadows an installed module"
        for path in (REPO / package).rglob("*.py"):
            if path.stem in taken:
                clashes.append(str(path.relative_to(REPO)))
        for init in (REPO / package).rglob("*/__init__.py"):
            if init.parent.name in taken:
                clashes.append(str(init.parent.relative_to(REPO)))
    assert clashes == []


# -- deploy's rooms ---------------------------------------------------------------------------


def test_deploy_rooms_import_only_what_their_table_allows():
    assert room_violations(REPO / "deploy", ROOM_IMPORTS) == []


def test_the_room_rule_sees_a_forbidden_lazy_relative_or_command_table_import(tmp_path):
    deploy = tmp_path / "deploy"
    for room in ("flower", "lab", "coordinator", "extra"):
        (deploy / room).mkdir(parents=True)
        (deploy / room / "__init__.py").write_text("")
    (deploy / "cli.py").write_text("from deploy import lab\n")  # the command table may
    (deploy / "stray.py").write_text("")
    (deploy / "flower" / "env.py").write_text("def f():\n    from deploy.lab import launcher\n")
    (deploy / "lab" / "launcher.py").write_text("from ..coordinator.site_registry import x\n"
                                                "from deploy.flower import env\n")
    (deploy / "coordinator" / "site_registry.py").write_text("import deploy.cli\n")
    rules = {"flower": set(), "lab": {"flower"}, "coordinator": {"flower"}}
    assert room_violations(deploy, rules) == [
        "deploy/extra/ is a room missing from the table",
        "deploy/coordinator/site_registry.py imports the command table (deploy.cli)",
        "deploy/flower/env.py (room flower) imports deploy.lab (room lab)",
        "deploy/lab/launcher.py (room lab) imports deploy.coordinator.site_registry "
        "(room coordinator)",
        "deploy/stray.py lives in no room",
    ]


def test_no_import_cycle_between_rooms():
    graphlib.TopologicalSorter(ROOM_IMPORTS).prepare()  # the table itself
    graphlib.TopologicalSorter(room_graph(REPO / "deploy")).prepare()


def test_the_cycle_check_sees_a_cycle(tmp_path):
    deploy = tmp_path / "deploy"
    for room, imports in (("a", "deploy.b.m"), ("b", "deploy.a.m")):
        (deploy / room).mkdir(parents=True)
        (deploy / room / "m.py").write_text(f"import {imports}\n")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(room_graph(deploy)).prepare()


@pytest.mark.parametrize("room", sorted(ROOM_IMPORTS))
def test_each_room_says_what_it_may_import(room):
    """Each room's docstring ends with "May import: ..." naming exactly its table row."""
    doc = ast.get_docstring(ast.parse((REPO / "deploy" / room / "__init__.py").read_text()))
    match = re.search(r"^May import: (.*)$", doc or "", re.M)
    assert match, f"deploy/{room}/__init__.py: no 'May import:' line"
    assert set(re.findall(r"``(\w+)``", match[1])) == ROOM_IMPORTS[room], match[0]


# -- module cycles ----------------------------------------------------------------------------


def module_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` (a folder under ``root``) it imports, at any depth."""
    modules = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for imported in _imported_names(path, here):
            parts = imported.split(".")
            known = next((m for i in range(len(parts), 0, -1)
                          if (m := ".".join(parts[:i])) in modules), None)
            if known not in (None, name):
                graph[name].add(known)
    return graph


@pytest.mark.parametrize("package", ["common", "superlink", "supernode", "deploy", "certs",
                                     "demo_data", "harness", "bench"])
def test_no_import_cycle_between_modules(package):
    graphlib.TopologicalSorter(module_graph(REPO, package)).prepare()


def test_the_module_cycle_check_sees_the_dataset_checks_circle_that_was(tmp_path):
    checks = tmp_path / "supernode" / "dataset_checks"
    checks.mkdir(parents=True)
    (checks / "__init__.py").write_text("")
    (checks / "check.py").write_text("def run():\n    from . import media\n")
    (checks / "media.py").write_text("from supernode.dataset_checks.check import run\n")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(module_graph(tmp_path, "supernode")).prepare()
