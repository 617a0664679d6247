"""The package's shape stays as designed (#13): small modules, imports pointing one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bulkbatch

SRC = Path(bulkbatch.__file__).parent
MAX_LINES = 600  # every module, no exceptions: split a module before it grows past this


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("bulkbatch")}


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in _modules()}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


@pytest.mark.parametrize(
    ("package", "may_import"),
    [
        # the emulator imports nothing from the client side: shared bugs cannot cancel out
        ("emulator", ("bulkbatch.emulator",)),
        ("webhooks", ("bulkbatch.webhooks", "bulkbatch.errors", "bulkbatch.models",
                      "bulkbatch.columns")),
        ("client", ("bulkbatch.client", "bulkbatch.config", "bulkbatch.errors",
                    "bulkbatch.models", "bulkbatch.options")),
        ("stages", ("bulkbatch.stages", "bulkbatch.client", "bulkbatch.db", "bulkbatch.state",
                    "bulkbatch.ledger", "bulkbatch.identity", "bulkbatch.files", "bulkbatch.heap",
                    "bulkbatch.models", "bulkbatch.spec", "bulkbatch.options",
                    "bulkbatch.config", "bulkbatch.errors", "bulkbatch.progress",
                    "bulkbatch.webhooks", "bulkbatch.storage", "bulkbatch.columns")),
    ],
)  # fmt: skip
def test_imports_point_one_way(package: str, may_import: tuple[str, ...]) -> None:
    wrong = {
        str(p.relative_to(SRC)): sorted(m for m in _imports(p) if not m.startswith(may_import))
        for p in (SRC / package).rglob("*.py")
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_storage_imports_only_errors_and_config() -> None:
    """Stages, the pipeline and the CLI all use bulkbatch.storage: it stays at the bottom."""
    allowed = ("bulkbatch.errors", "bulkbatch.config")
    assert sorted(m for m in _imports(SRC / "storage.py") if not m.startswith(allowed)) == []


def test_heap_imports_nothing_of_bulkbatch() -> None:
    """The results stage calls bulkbatch.heap before its first query: it is a leaf."""
    assert _imports(SRC / "heap.py") == set()


def test_columns_import_nothing_of_bulkbatch() -> None:
    """The ledger and the stages build Arrow columns with bulkbatch.columns: it is a leaf."""
    assert _imports(SRC / "columns.py") == set()


def test_library_code_never_imports_the_cli() -> None:
    users = [
        str(p.relative_to(SRC))
        for p in _modules()
        if not str(p.relative_to(SRC)).startswith(("cli/", "__main__.py"))
        and any(m == "bulkbatch.cli" or m.startswith("bulkbatch.cli.") for m in _imports(p))
    ]
    assert users == []


def test_integrations_sit_on_top() -> None:
    """Airflow and Dagster call the front door like any user: they never import the CLI, and
    nothing in the package imports them (``import bulkbatch`` must not need an orchestrator)."""
    wrong = {
        str(p.relative_to(SRC)): sorted(m for m in _imports(p) if m.startswith("bulkbatch.cli"))
        for p in (SRC / "integrations").rglob("*.py")
    }
    assert {k: v for k, v in wrong.items() if v} == {}
    users = [
        str(p.relative_to(SRC))
        for p in _modules()
        if not str(p.relative_to(SRC)).startswith("integrations/")
        and any(m.startswith("bulkbatch.integrations") for m in _imports(p))
    ]
    assert users == []
