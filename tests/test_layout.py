"""The tree keeps its shape: the app bundle holds only app code, no module borrows a name.

``common/``, ``superlink/`` and ``supernode/`` travel to every site inside Flower's app bundle
(FAB, ``fab-include`` in pyproject.toml); they must run there without the deployment tooling,
certificates, benchmarks or tests, so they may not import them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP_PACKAGES = ("common", "superlink", "supernode")
NOT_IN_THE_APP = {"deploy", "certs", "bench", "tests", "harness", "demo_data"}
OUR_PACKAGES = (*APP_PACKAGES, "deploy", "certs", "bench", "harness", "demo_data")


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_app_code_imports_no_deployment_bench_or_test_code():
    offences = []
    for package in APP_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            bad = _imported_modules(path) & NOT_IN_THE_APP
            offences += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(bad)]
    assert offences == []


def test_the_import_rule_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from deploy.flower_env import child_env\n    import bench\n")
    assert _imported_modules(module) >= {"deploy", "bench"}


def test_the_app_bundle_is_exactly_the_app_packages():
    with (REPO / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["flwr"]["app"]["fab-include"]
    assert sorted(include) == sorted(f"{p}/**/*.py" for p in APP_PACKAGES)


def test_no_module_shadows_a_stdlib_or_dependency_name():
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
    assert clashes == []
