"""``bulkbatch.db``: the key ranges that split big joins and writes."""

from __future__ import annotations

import itertools

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.db import key_ranges


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(min_value=-50, max_value=10_000), max_size=300),
    rows=st.integers(min_value=1, max_value=400),
)
def test_key_ranges_cover_every_key_once_in_order(keys: list[int], rows: int) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (k BIGINT)")
    if keys:
        con.executemany("INSERT INTO t VALUES (?)", [[k] for k in keys])
    ranges = key_ranges(con, "t", "k", rows)
    assert ranges and all(lo < hi for lo, hi in ranges)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
    # every key falls in exactly one range, and no range lies past the largest key
    for k in keys:
        assert sum(lo <= k < hi for lo, hi in ranges) == 1
    if keys:
        assert ranges[0][0] == min(keys) and ranges[-1][0] <= max(keys)
        # evenly spread keys give about ``rows`` keys a range: never more ranges than needed
        assert len(ranges) <= -(-len(keys) // rows)
