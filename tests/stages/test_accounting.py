"""The accounting's count of distinct placed row numbers: a bitmap over the input's row
numbers (``bitstring_agg``) must count what ``count(DISTINCT row_number)`` counts, and fall
back to it when a row number lies outside the input."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.stages.accounting import placements

row_numbers = st.lists(st.none() | st.integers(-3, 60), max_size=40)


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 50), row_numbers, row_numbers, row_numbers)
def test_placements_count_what_count_distinct_counts(
    con: duckdb.DuckDBPyConnection,
    total: int,
    plan: list[int | None],
    rejects: list[int | None],
    dups: list[int | None],
) -> None:
    for name, values in (("plan", plan), ("rejects", rejects), ("duplicates", dups)):
        con.execute(
            f"CREATE OR REPLACE TABLE {name} AS SELECT unnest(?::BIGINT[]) AS row_number", [values]
        )
    union = " UNION ALL ".join(
        f"SELECT row_number FROM {t}" for t in ("plan", "rejects", "duplicates")
    )
    expected = con.execute(f"SELECT count(*), count(DISTINCT row_number) FROM ({union})").fetchall()
    assert placements(con, union, total) == tuple(expected[0])
