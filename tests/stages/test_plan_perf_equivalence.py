"""Pins the plan rules that the narrow-key implementation of ``build_plan`` must keep:
``too_large`` decided per row before dedupe (also when only the size bound is over the limit),
and the job/batch numbering and physical order of ``plan`` against a Python reference."""

from __future__ import annotations

import hashlib
from typing import Any

import duckdb
import orjson
import polars as pl
import pytest

from bulkbatch.stages.load import load_frame
from bulkbatch.stages.plan import PlanInfo, PlanOptions, build, build_plan


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    yield c
    c.close()


def plan_of(con: duckdb.DuckDBPyConnection, frame: dict[str, Any], **kw: Any) -> PlanInfo:
    load_frame(con, pl.DataFrame(frame))
    return build_plan(con, PlanOptions(**kw))


def test_too_large_first_row_does_not_shadow_a_later_valid_one(con):
    big = '{"big": "' + "x" * 2000 + '"}'
    small = '{"k": "' + "y" * 300 + '"}'  # size bound over 1000 bytes, JSON well under
    plan_of(
        con,
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "data": [big, small, small, big, small],
        },
        max_user_bytes=1000,
    )
    sent = con.execute("SELECT row_number, recipient FROM plan ORDER BY row_number").fetchall()
    assert sent == [(2, "a"), (3, "b"), (5, "c")]
    reasons = con.execute("SELECT row_number, reason_code FROM rejects ORDER BY 1").fetchall()
    assert reasons == [(1, "too_large"), (4, "too_large")]
    assert con.execute("SELECT count(*) FROM duplicates").fetchone() == (0,)
    size = len(
        orjson.dumps({"recipient": "a", "to": {"user_id": "a"}, "data": {"big": "x" * 2000}})
    )
    assert con.execute("SELECT reason FROM rejects WHERE row_number = 1").fetchone() == (
        f"user JSON is {size} bytes, over the 1000-byte limit (--max-user-bytes)",
    )


@pytest.mark.parametrize("plan_rows", [build.PLAN_ROWS, 333], ids=["one-pass", "row-ranges"])
@pytest.mark.parametrize(("max_job_size", "batch_size"), [(None, 7), (300, 7), (250, 1000)])
def test_numbering_and_physical_order_match_a_reference(
    con, monkeypatch, max_job_size, batch_size, plan_rows
):
    # row-ranges: plan is written in passes over ranges of input rows (big audiences)
    passes = _recorded_passes(monkeypatch)
    monkeypatch.setattr(build, "PLAN_ROWS", plan_rows)
    _check_numbering(con, 2000, max_job_size, batch_size, passes)
    assert len(passes) == (1 if plan_rows > 2000 else 5)


def test_physical_order_holds_over_many_chunks_and_threads(con, monkeypatch):
    """Passes of many vectors each, with four threads: each pass of ``plan`` still comes out
    in batch order. (Pins the order the pass gets from its sort of the joined input, which the
    JSON projection over it must keep; without a sort this fails.)"""
    passes = _recorded_passes(monkeypatch)
    monkeypatch.setattr(build, "PLAN_ROWS", 45_000)
    con.execute("SET threads = 4")
    _check_numbering(con, 120_000, 20_000, 1000, passes)
    assert len(passes) == 3


def _recorded_passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` ranges of input rows ``_write_plan`` makes its passes over."""
    passes: list[tuple[int, int]] = []
    ranges = build.key_ranges

    def recording(con: Any, table: str, column: str, rows: int) -> list[tuple[int, int]]:
        out = ranges(con, table, column, rows)
        if (table, column) == ("_bb_order", "row_number"):
            passes.extend(out)
        return out

    monkeypatch.setattr(build, "key_ranges", recording)
    return passes


def _check_numbering(
    con: duckdb.DuckDBPyConnection,
    n: int,
    max_job_size: int | None,
    batch_size: int,
    passes: list[tuple[int, int]],
) -> None:
    # duplicates and no-address rows
    ids = [f"u{i % (n * 17 // 20)}" if i % 11 else "" for i in range(n)]
    plan_of(con, {"user_id": ids}, max_job_size=max_job_size, batch_size=batch_size)
    assert con.execute("SELECT count(*) FROM plan WHERE user_json IS NULL").fetchone() == (0,)
    seen: set[str] = set()
    kept: list[tuple[int, str]] = []
    for row, uid in enumerate(ids, start=1):
        if uid and uid not in seen:
            seen.add(uid)
            kept.append((row, uid))
    if max_job_size is None:
        jobs = [kept]
    else:
        by_hash = sorted(kept, key=lambda ru: (hashlib.md5(ru[1].encode()).hexdigest(), ru[0]))
        jobs = [sorted(by_hash[i : i + max_job_size]) for i in range(0, len(by_hash), max_job_size)]
    expected = []
    batch = 0
    for job_no, job in enumerate(jobs):
        for i in range(0, len(job), batch_size):
            expected += [(row, uid, job_no, batch) for row, uid in job[i : i + batch_size]]
            batch += 1
    columns = "row_number, recipient, job_no, batch_no"
    ordered = con.execute(f"SELECT {columns} FROM plan ORDER BY batch_no, row_number").fetchall()
    assert ordered == expected

    # Stored pass after pass, each pass's rows (a range of input rows) in batch order.
    def pass_of(row: int) -> int:
        return next(i for i, (lo, hi) in enumerate(passes) if lo <= row < hi)

    stored = con.execute(f"SELECT {columns} FROM plan").fetchall()
    assert stored == sorted(expected, key=lambda r: (pass_of(r[0]), r[3], r[0]))
