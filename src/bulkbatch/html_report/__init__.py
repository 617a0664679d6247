"""``bulkbatch report RUN_DIR``: one self-contained HTML page about a run.

What a person opens the morning after a scheduled send: the run and its jobs, when each
stage finished and how long it took, the accounting (``input = ingested + duplicates +
rejected (+ skipped)``) with an OK/FAILED badge, rejects by reason, duplicate groups, bulk
statuses, the delivery funnel, throughput over time from the batch ledger, and a few
rejected rows.

The page has inline CSS and inline SVG charts only: no script, no external resource, so it
can be mailed or archived as one file. Everything that comes from data is HTML-escaped, and
personal data is masked: e-mail addresses show as ``j***@example.com`` and phone numbers as
``***42``, also inside reject reasons.

Data is read with DuckDB: the run database read-only; when another process holds it (a send
in progress), from ``summary.json``, ``state.json`` and the Parquet files, and the report
says so.
"""

from __future__ import annotations

from pathlib import Path

from bulkbatch.errors import StateError
from bulkbatch.files import atomic_write_bytes
from bulkbatch.html_report.facts import _gather
from bulkbatch.html_report.facts import _throughput as _throughput
from bulkbatch.html_report.masking import mask_email, mask_text, mask_value
from bulkbatch.html_report.page import _render
from bulkbatch.state import RunState

__all__ = ["mask_email", "mask_text", "mask_value", "write_report"]


def _write(out: Path, text: str) -> None:
    atomic_write_bytes(out, text.encode("utf-8"), then="choose a writable place with --out")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a self-contained HTML report of the run in ``run_dir``; return its path.

    :param run_dir: a run directory (it holds ``state.json`` and ``run.duckdb``)
    :param out: where to write (default ``<run_dir>/report.html``)
    :raises StateError: when ``run_dir`` is not a run directory, or ``out`` is not writable

    Works at any stage: sections that need a later stage say so. When another process holds
    the run database, the report is built from the run's files and says so.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise StateError(
            f"Run directory not found: {path}. Pass the directory a 'bulkbatch send' or "
            "'bulkbatch plan' created, e.g. 'bulkbatch report runs/<run-id>'."
        )
    if not RunState.exists(path):
        raise StateError(
            f"{path} is not a bulkbatch run directory: it has no state.json. Pass the "
            "directory a 'bulkbatch send' or 'bulkbatch plan' created, e.g. runs/<run-id>."
        )
    facts = _gather(path)
    target = Path(out) if out is not None else path / "report.html"
    text = _render(facts)
    _write(target, text)
    return target
