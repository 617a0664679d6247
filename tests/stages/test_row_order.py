"""The results rows are put in row-number order in Arrow, not by an ``ORDER BY`` in DuckDB.

Each range's query hands over its rows in runs of consecutive row numbers, out of turn when two
threads scan row groups side by side; :func:`row_order.in_row_order` passes each run on once the
rows before it have been. Whatever the runs, their order, the batches they come in, gaps in the
row numbers or rows shuffled one by one, the rows must come out sorted, each with its columns.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.stages import row_order


def _batch(numbers: list[int]) -> pa.RecordBatch:
    return pa.record_batch(
        {"row_number": pa.array(numbers, pa.int64()), "tag": [f"r{n}" for n in numbers]}
    )


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[list[int], list[list[int]]]:
    """Range starts and, per range, the order its row numbers leave DuckDB in."""
    starts: list[int] = []
    orders: list[list[int]] = []
    lo = draw(st.integers(1, 5))
    for _ in range(draw(st.integers(1, 4))):
        size = draw(st.integers(1, 120))
        numbers = [n for n in range(lo, lo + size) if draw(st.integers(0, 9)) or n == lo]
        if draw(st.booleans()):  # a gap at the start: the range's first row is not there
            numbers = numbers[1:] or numbers
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(numbers) - 1)), max_size=6)))
        runs = [numbers[a:b] for a, b in zip([0, *cuts], [*cuts, len(numbers)], strict=True)]
        runs = draw(st.permutations(runs))
        order = [n for run in runs for n in run]
        if draw(st.integers(0, 4)) == 0:  # a scan in no order at all
            order = draw(st.permutations(order))
        starts.append(lo)
        orders.append(order)
        lo += size
    return starts, orders


def _batches(orders: list[list[int]], sizes: list[int]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Each range's rows in batches of ``sizes`` (slices of one batch: offsets other than 0)."""
    for i, order in enumerate(orders):
        whole, at = _batch(order), 0
        for size in sizes:
            if at >= len(order):
                break
            yield i, whole.slice(at, size)
            at += size
        if at < len(order):
            yield i, whole.slice(at)


@settings(max_examples=300, deadline=None)
@given(_ranges(), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_rows_come_out_sorted_with_their_columns(
    ranges: tuple[list[int], list[list[int]]], sizes: list[int]
) -> None:
    starts, orders = ranges
    out = pa.concat_tables(list(row_order.in_row_order(_batches(orders, sizes), starts)))
    expected = sorted(n for order in orders for n in order)
    assert out["row_number"].to_pylist() == expected
    assert out["tag"].to_pylist() == [f"r{n}" for n in expected]


@settings(max_examples=300, deadline=None)
@given(_ranges(), st.lists(st.integers(1, 40), min_size=1, max_size=8), st.integers(1, 30))
def test_the_writer_gets_tables_of_about_a_batch(
    ranges: tuple[list[int], list[list[int]]], sizes: list[int], rows: int
) -> None:
    """Each table is a row group, and the writer's memory grows with the table: runs freed at
    once by a late one go out a table at a time, at least ``ARROW_BATCH_ROWS`` rows (but the
    last) and less than that plus one run, never a whole range in one."""
    starts, orders = ranges
    batches = list(_batches(orders, sizes))
    # The largest piece a table can gain at once: a run, or a batch held whole; the sorted
    # leftovers come in pieces of at most ``rows``.
    largest = max(max(r.num_rows for r in row_order._runs(b) or [b]) for _, b in batches)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(row_order, "ARROW_BATCH_ROWS", rows)
        tables = list(row_order.in_row_order(iter(batches), starts))
    assert all(t.num_rows < rows + max(largest, rows) for t in tables)
    assert all(t.num_rows >= rows for t in tables[:-1])
    out = pa.concat_tables(tables)
    assert out["row_number"].to_pylist() == sorted(n for order in orders for n in order)


def _never_sorted(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    assert not batches, "a range needed the sort"
    return []


def test_runs_in_turn_are_passed_on_without_a_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path: runs out of turn are held and passed on as they are; nothing is sorted."""
    monkeypatch.setattr(row_order, "_sorted", _never_sorted)
    order = [*range(41, 81), *range(1, 41), *range(81, 101)]
    batches = [(0, _batch(order[i : i + 30])) for i in range(0, 100, 30)]
    out = pa.concat_tables(list(row_order.in_row_order(iter(batches), [1])))
    assert out["row_number"].to_pylist() == list(range(1, 101))


def test_a_row_number_twice_loses_neither_row() -> None:
    """Two runs from the same row number (a join that matched a row twice: a bug the
    accounting must see) are both written; the second must not replace the first while both
    wait for their turn."""
    batches = [(0, _batch([4, 5])), (0, _batch([4, 5])), (0, _batch([1, 2, 3]))]
    out = pa.concat_tables(list(row_order.in_row_order(iter(batches), [1])))
    assert sorted(out["row_number"].to_pylist()) == [1, 2, 3, 4, 4, 5, 5]
