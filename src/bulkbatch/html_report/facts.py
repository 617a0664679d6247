"""The facts the page shows, gathered from a run directory: the run database read with
DuckDB, or, when another process holds it, ``summary.json``, ``state.json`` and the
Parquet files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

from bulkbatch.errors import StateError
from bulkbatch.html_report.masking import mask_text, mask_value
from bulkbatch.state import DB_FILE, RunState, open_run_db

_EXAMPLES = 10
_DUP_GROUPS = 5
_MAX_BINS = 240


@dataclass
class _Facts:
    """Everything the page shows, gathered from the run directory."""

    state: RunState
    source: str = "run database"
    source_note: str | None = None
    summary: dict[str, Any] | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int | None = None
    dup_groups: list[tuple[str, int, list[int]]] = field(default_factory=list)
    statuses: dict[str, int] | None = None
    delivery: dict[str, int] | None = None
    funnel: list[tuple[str, int]] | None = None
    to_deliver: dict[str, float] | None = None
    """Seconds from enqueued to delivered: p50, p90, p99, max."""
    failure_reasons: dict[str, int] = field(default_factory=dict)
    throughput: list[tuple[datetime, int]] | None = None
    bin_seconds: int = 1
    throughput_note: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    example_columns: list[str] = field(default_factory=list)

    @property
    def planned(self) -> bool:
        return self.state.done("plan")

    @property
    def sent(self) -> bool:
        return bool(self.state.jobs) and any(j.job_id for j in self.state.jobs)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {str(r[0]) for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _counts(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    rows = con.execute(sql).fetchall()
    return {str(k): int(v) for k, v in sorted(rows, key=lambda r: (-int(r[1]), str(r[0])))}


def _funnel(
    con: duckdb.DuckDBPyConnection, relation: str, where: str = ""
) -> list[tuple[str, int]]:
    row = con.execute(
        "SELECT count(*) FILTER (WHERE enqueued_at IS NOT NULL OR delivery_status IS NOT NULL), "
        "count(*) FILTER (WHERE sent_at IS NOT NULL), "
        "count(*) FILTER (WHERE delivered_at IS NOT NULL), "
        "count(*) FILTER (WHERE opened_at IS NOT NULL), "
        "count(*) FILTER (WHERE clicked_at IS NOT NULL) "
        f"FROM {relation} {where}"
    ).fetchone()
    assert row is not None
    steps = [("ENQUEUED", int(row[0])), ("SENT", int(row[1])), ("DELIVERED", int(row[2]))]
    if row[3]:
        steps.append(("OPENED", int(row[3])))
    if row[4]:
        steps.append(("CLICKED", int(row[4])))
    return steps


def _delivery_times(
    con: duckdb.DuckDBPyConnection, relation: str, where: str = ""
) -> tuple[dict[str, float] | None, dict[str, int]]:
    """Time to deliver (p50/p90/p99/max seconds) and the reasons of failed deliveries."""
    cond = f"{where} {'AND' if where else 'WHERE'}"
    row = con.execute(
        "SELECT quantile_cont(s, [0.5, 0.9, 0.99]), max(s), count(s) FROM (SELECT "
        "epoch(delivered_at) - epoch(enqueued_at) AS s FROM "
        f"{relation} {cond} delivered_at IS NOT NULL AND enqueued_at IS NOT NULL)"
    ).fetchone()
    times = None
    if row and row[2]:
        p50, p90, p99 = row[0]
        times = {"p50": p50, "p90": p90, "p99": p99, "max": row[1]}
    reasons = _counts(
        con,
        f"SELECT delivery_status || coalesce(': ' || delivery_reason, ''), count(*) FROM "
        f"{relation} {cond} delivery_status IN ('UNDELIVERABLE', 'UNROUTABLE') GROUP BY 1",
    )
    return times, reasons


def _throughput(
    con: duckdb.DuckDBPyConnection,
) -> tuple[list[tuple[datetime, int]], int]:
    """Users acknowledged per time bin (1 s, or wider so a long send has at most _MAX_BINS)."""
    span = con.execute(
        "SELECT min(acked_at), max(acked_at), count(*) FROM batches WHERE acked_at IS NOT NULL"
    ).fetchone()
    if not span or not span[2]:
        return [], 1
    first, last = span[0], span[1]
    seconds = max(1, math.ceil((last - first).total_seconds()) + 1)
    width = max(1, math.ceil(seconds / _MAX_BINS))
    start = first.replace(microsecond=0)
    rows = con.execute(
        "SELECT CAST(floor(epoch(acked_at - ?::TIMESTAMP) / ?) AS BIGINT) AS b, sum(users) "
        "FROM batches WHERE acked_at IS NOT NULL GROUP BY b ORDER BY b",
        [start, width],
    ).fetchall()
    by_bin = {int(b): int(n) for b, n in rows}
    bins = max(by_bin) + 1
    return [(start + timedelta(seconds=i * width), by_bin.get(i, 0)) for i in range(bins)], width


def _key_columns(state: RunState, available: Sequence[str]) -> list[str]:
    keys = [str(c) for c in state.plan.get("key_columns", ())]
    return [c for c in keys if c in available]


def _from_db(facts: _Facts, con: duckdb.DuckDBPyConnection) -> None:
    state = facts.state
    tables = _tables(con)
    if "rejects" in tables and not facts.rejected_by_reason:
        facts.rejected_by_reason = _counts(
            con, "SELECT reason_code, count(*) FROM rejects GROUP BY 1"
        )
    if "duplicates" in tables:
        n = con.execute("SELECT count(*) FROM duplicates").fetchone()
        facts.duplicates = int(n[0]) if n else 0
        facts.dup_groups = [
            (str(r), int(k), [int(x) for x in rows])
            for r, k, rows in con.execute(
                "SELECT recipient, kept_row_number, list(row_number ORDER BY row_number) "
                "FROM duplicates GROUP BY recipient, kept_row_number "
                f"ORDER BY least(kept_row_number, min(row_number)) LIMIT {_DUP_GROUPS}"
            ).fetchall()
        ]
    if "user_pages" in tables and facts.statuses is None:
        statuses = _counts(
            con,
            "SELECT coalesce(status, 'PENDING'), count(*) FROM (SELECT job_no, recipient, "
            "max(status) AS status FROM user_pages GROUP BY 1, 2) GROUP BY 1",
        )
        facts.statuses = statuses or None
    if "delivery" in tables:  # webhooks and/or GET /messages, merged (stages.delivery)
        has = con.execute("SELECT count(*) FROM delivery").fetchone()
        if has and has[0]:
            facts.delivery = _counts(
                con,
                "SELECT coalesce(delivery_status, 'UNKNOWN'), count(*) FROM delivery GROUP BY 1",
            )
            facts.funnel = _funnel(con, "delivery")
            facts.to_deliver, facts.failure_reasons = _delivery_times(con, "delivery")
    if "batches" in tables:
        facts.throughput, facts.bin_seconds = _throughput(con)
    # A few rejected rows: the row number, the reason, and the key columns (masked).
    if "rejects" in tables and "inputs" in tables:
        keys = _key_columns(state, _columns(con, "inputs"))
        facts.example_columns = keys
        select_keys = "".join(f", i.{_q(c)}" for c in keys)
        rows = con.execute(
            f"SELECT r.row_number, r.reason_code, r.reason{select_keys} FROM rejects r "
            f"LEFT JOIN inputs i USING (row_number) ORDER BY r.row_number LIMIT {_EXAMPLES}"
        ).fetchall()
        if "ingest_errors" in tables and "plan" in tables and len(rows) < _EXAMPLES:
            rows += con.execute(
                f"SELECT p.row_number, 'ingest_error', 'ingest error: ' || e.error{select_keys} "
                "FROM ingest_errors e JOIN plan p ON p.recipient = e.recipient "
                "LEFT JOIN inputs i ON i.row_number = p.row_number "
                f"ORDER BY p.row_number LIMIT {_EXAMPLES - len(rows)}"
            ).fetchall()
        facts.examples = [_example(r, keys) for r in rows]


def _read_examples(
    con: duckdb.DuckDBPyConnection, facts: _Facts, rel: str, cols: Sequence[str], where: str
) -> None:
    """The first rejected rows of ``rel`` (results or rejects) with the run's key columns."""
    keys = _key_columns(facts.state, cols)
    facts.example_columns = keys
    select_keys = "".join(f", {_q(c)}" for c in keys)
    rows = con.execute(
        f"SELECT row_number, reason_code, reason{select_keys} FROM {rel} "
        f"{where} ORDER BY row_number LIMIT {_EXAMPLES}"
    ).fetchall()
    facts.examples = [_example(r, keys) for r in rows]


def _example(row: Sequence[Any], keys: Sequence[str]) -> dict[str, Any]:
    return {
        "row_number": int(row[0]),
        "reason_code": str(row[1] or ""),
        "reason": mask_text(str(row[2] or "")),
        "keys": {k: mask_value(v, k) for k, v in zip(keys, row[3:], strict=False)},
    }


def _from_files(facts: _Facts, run_dir: Path) -> None:
    """The same facts from the Parquet and JSON files (the database is locked)."""
    state = facts.state
    plan = state.plan
    if not facts.rejected_by_reason:
        facts.rejected_by_reason = dict(plan.get("rejected_by_reason", {}))
    facts.duplicates = int(plan["duplicates"]) if "duplicates" in plan else None
    facts.dup_groups = [
        (str(g["recipient"]), int(g["kept"]), [int(x) for x in g["rows"] if int(x) != g["kept"]])
        for g in plan.get("duplicate_groups", [])[:_DUP_GROUPS]
    ]
    facts.throughput_note = (
        "Throughput needs the batch ledger in the run database, which is in use by another "
        "process; run the report again when the send has finished."
    )
    con = duckdb.connect()
    try:
        results = run_dir / "results.parquet"
        rejects = run_dir / "rejects.parquet"
        if results.exists():
            rel = f"read_parquet({_lit(results)})"
            cols = _columns(con, rel)
            if facts.statuses is None and "status" in cols:
                facts.statuses = (
                    _counts(
                        con,
                        f"SELECT status, count(*) FROM {rel} WHERE outcome = 'ingested' "
                        "AND status IS NOT NULL GROUP BY 1",
                    )
                    or None
                )
            if "delivery_status" in cols:
                delivery = _counts(
                    con,
                    f"SELECT delivery_status, count(*) FROM {rel} WHERE outcome = 'ingested' "
                    "AND delivery_status IS NOT NULL GROUP BY 1",
                )
                if delivery:
                    facts.delivery = delivery
                    facts.funnel = _funnel(con, rel, "WHERE outcome = 'ingested'")
                    if "delivered_at" in cols:
                        facts.to_deliver, facts.failure_reasons = _delivery_times(
                            con, rel, "WHERE outcome = 'ingested'"
                        )
            _read_examples(con, facts, rel, cols, "WHERE outcome = 'rejected'")
        elif rejects.exists():
            rel = f"read_parquet({_lit(rejects)})"
            _read_examples(con, facts, rel, _columns(con, rel), "")
    finally:
        con.close()


def _gather(run_dir: Path) -> _Facts:
    state = RunState.load(run_dir)
    facts = _Facts(state=state)
    facts.summary = _read_json(run_dir / "summary.json")
    if facts.summary:
        facts.rejected_by_reason = dict(facts.summary.get("rejected_by_reason") or {})
        facts.statuses = dict(facts.summary.get("statuses") or {}) or None
    con: duckdb.DuckDBPyConnection | None = None
    if (run_dir / DB_FILE).exists():
        try:
            con = open_run_db(run_dir, read_only=True)
        except StateError as exc:
            facts.source = "files (summary.json, state.json, Parquet)"
            facts.source_note = (
                f"The run database could not be opened ({exc}); this report was built from "
                "the run's Parquet and JSON files instead, so some sections are incomplete."
            )
    else:
        facts.source = "files (summary.json, state.json, Parquet)"
        facts.source_note = f"{run_dir} has no {DB_FILE}; this report was built from its files."
    if con is not None:
        try:
            _from_db(facts, con)
        finally:
            con.close()
    else:
        _from_files(facts, run_dir)
    return facts
