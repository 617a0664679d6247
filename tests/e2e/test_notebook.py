"""``notebooks/quickstart.ipynb`` runs top to bottom, plots, and is committed stripped.

The notebook is executed with nbclient on a ``python3`` kernel that is this test's own
interpreter (the project's venv): a kernelspec pointing at ``sys.executable`` is written to a
temporary ``JUPYTER_PATH``, so a fresh clone with only ``.venv`` works, and whatever other
``python3`` kernels the machine has are not picked up by accident.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"
PREFIX_MARK = "KERNEL_PREFIX="


def test_committed_notebook_is_stripped() -> None:
    nb = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.get("outputs") == [], f"cell {cell.get('id')} has outputs"
        assert cell.get("execution_count") is None, f"cell {cell.get('id')} has a count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec for ``sys.executable`` in a temporary JUPYTER_PATH."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter-prefix"
    # install() writes the spec into a tempfile.mkdtemp() and removes only the spec inside it:
    # that empty directory goes under this test's own, not the machine's /tmp.
    spec_tmp = tmp_path / "spec-tmp"
    spec_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spec_tmp))
    install(prefix=str(prefix), kernel_name="python3", display_name="bulkbatch venv")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    # A headless kernel: no GUI backend from the developer's environment.
    monkeypatch.delenv("MPLBACKEND", raising=False)

    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    return "python3"


@pytest.mark.timeout(420)
def test_quickstart_executes_and_plots(
    venv_kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The notebook keeps its runs in a fresh temp directory for the reader to look at; here
    # that directory is under this test's own, so executing it leaves nothing in /tmp.
    kernel_tmp = tmp_path / "kernel-tmp"
    kernel_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(kernel_tmp))
    nb = nbformat.read(QUICKSTART, as_version=4)
    run = copy.deepcopy(nb)
    # One extra cell, only in this in-memory copy: which interpreter ran the notebook.
    run.cells.append(nbformat.v4.new_code_cell(f"import sys; print('{PREFIX_MARK}' + sys.prefix)"))
    before = _untracked(NOTEBOOKS)
    client = NotebookClient(
        run,
        timeout=180,
        kernel_name=venv_kernel,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()

    errors = [
        (i, out.get("ename"), out.get("evalue"))
        for i, cell in enumerate(run.cells)
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    images = [
        out
        for cell in run.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "the plots did not render (no image/png output)"

    printed = "".join(
        out.get("text", "")
        for cell in run.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    assert f"{PREFIX_MARK}{sys.prefix}" in printed, "the kernel is not the venv's Python"
    shown = "".join(
        str(out.get("data", {}).get("text/plain", ""))
        for cell in run.cells
        for out in cell.get("outputs", [])
    )
    assert "'ingested':" in shown and "DELIVERED" in shown

    # Its runs went to the kernel's temp directory (this test's), not the machine's /tmp.
    assert [p.name.startswith("bulkbatch-quickstart-") for p in kernel_tmp.iterdir()] == [True]

    # Executing it left nothing behind in the repository, and did not touch the file.
    assert _untracked(NOTEBOOKS) == before
    assert nbformat.read(QUICKSTART, as_version=4) == nb


def _untracked(folder: Path) -> set[str]:
    """Untracked files under ``folder`` (git), or every file when git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {str(p.relative_to(folder)) for p in folder.rglob("*")}
    return {line[3:] for line in out.splitlines() if line.startswith("??")}
