"""Every third-party module the package imports is declared in pyproject.toml: the core's
among the runtime dependencies (``make demo`` installs only those), an integration's among
its extra's. ``stages/results.py`` imported numpy, which only the dev and notebook extras
brought, so a fresh ``make demo`` could not have written its results."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "bulkbatch"

# Modules that belong to an extra (path under src/bulkbatch -> the extra).
EXTRA_OF = {
    "integrations/airflow.py": "airflow",
    "integrations/airflow_dag.py": "airflow",
    "integrations/dagster.py": "dagster",
    "registry_pg.py": "postgres",
    "stages/once_pg.py": "postgres",
}
# Imported only behind a flag that names what to install: --check-contract (the emulator's
# contract check, openapi-core from the dev extra).
BEHIND_A_FLAG = {("emulator/contract.py", "openapi-core")}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    return runtime, extras


def _with_their_requirements(names: set[str]) -> set[str]:
    """``names`` and everything they require, installed (dagster brings pydantic)."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in reqs if "extra ==" not in r)
    return out


def _imports(path: Path) -> set[str]:
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {t for t in tops if t not in sys.stdlib_module_names and t != "bulkbatch"}


def test_every_imported_package_is_declared_where_it_is_used() -> None:
    runtime, extras = _declared()
    distributions = packages_distributions()
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        allowed = set(runtime)
        if rel in EXTRA_OF:
            allowed |= _with_their_requirements(extras[EXTRA_OF[rel]])
        for module in sorted(_imports(path)):
            names = {_name(d) for d in distributions.get(module, [module])}
            if not names & allowed and not any((rel, n) in BEHIND_A_FLAG for n in names):
                missing.append(f"{rel}: {module} ({', '.join(sorted(names))})")
    assert not missing, "imported but not declared:\n" + "\n".join(missing)
