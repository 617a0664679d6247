"""What the plan stage's tests share: a DuckDB connection, a plan of a frame, its users and
its rejects (``test_plan.py``, ``test_plan_refusals.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import orjson
import polars as pl
import pytest

from bulkbatch.stages.load import load_frame
from bulkbatch.stages.plan import PlanInfo, PlanOptions, build_plan


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    yield c
    c.close()


def plan_of(con: duckdb.DuckDBPyConnection, frame: Any, **kw: Any) -> PlanInfo:
    load_frame(con, pl.DataFrame(frame) if isinstance(frame, dict) else frame)
    return build_plan(con, PlanOptions(**kw))


def users(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return [
        orjson.loads(r[0])
        for r in con.execute("SELECT user_json FROM plan ORDER BY batch_no, row_number").fetchall()
    ]


def rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str]]:
    return con.execute("SELECT * FROM rejects ORDER BY row_number").fetchall()
