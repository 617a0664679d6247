"""The results rows in row-number order, put in order in Arrow as they leave DuckDB.

Each range of the results (:mod:`bulkbatch.stages.results`) hands over its rows in runs of
consecutive row numbers, out of turn when two threads scan row groups side by side;
:func:`in_row_order` passes each run on once the rows before it have been.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bulkbatch.columns import numbers
from bulkbatch.db import ARROW_BATCH_ROWS

__all__ = ["in_row_order"]

# A batch cut into more runs of consecutive row numbers than this is not put in order run by
# run but held whole and sorted with the rest of its range (see in_row_order).
_MAX_RUNS = 16


def _runs(batch: pa.RecordBatch) -> list[pa.RecordBatch] | None:
    """``batch`` cut into runs of consecutive row numbers (slices: nothing is copied), or
    None when there would be more than :data:`_MAX_RUNS` (or the row numbers are not 64-bit
    integers without nulls; the load's BIGINT row numbers always are)."""
    column = batch.column("row_number")
    if column.type != pa.int64() or column.null_count:
        return None
    # From the buffer: Array.to_numpy() imports pandas (see bulkbatch.columns).
    values = numbers(column, np.int64)
    cuts = np.flatnonzero(values[1:] != values[:-1] + 1) + 1
    if len(cuts) >= _MAX_RUNS:
        return None
    bounds = [0, *cuts.tolist(), batch.num_rows]
    return [batch.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]


def _sorted(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """``batches`` as one sequence sorted by row number."""
    if not batches:
        return []
    table = pa.Table.from_batches(batches)
    ordered = table.take(pc.sort_indices(table["row_number"]))
    pieces: list[pa.RecordBatch] = ordered.to_batches(max_chunksize=ARROW_BATCH_ROWS)
    return pieces


class _Tables:
    """Runs in row order, handed on as tables of at least :data:`ARROW_BATCH_ROWS` rows (the
    last may be fewer) and under twice that: a table is a row group of the file, and the
    writer's memory grows with the table it is given. When a late run frees the runs held
    after it, they go to the writer a table at a time, each let go once written, not as one
    table of up to a whole range (60 MB at 10M). Standalone at 10M (round 23 of #19, the
    share at 0.4): peak RSS 387-388 MiB against 391-412 in one table, as fast."""

    def __init__(self) -> None:
        self.runs: list[pa.RecordBatch] = []
        self.rows = 0

    def add(self, runs: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
        """Take ``runs`` in; yield each table as soon as it is full."""
        for run in runs:
            self.runs.append(run)
            self.rows += run.num_rows
            if self.rows >= ARROW_BATCH_ROWS:
                yield self.take()

    def take(self) -> pa.Table:
        table = pa.Table.from_batches(self.runs)
        self.runs, self.rows = [], 0
        return table


def in_row_order(
    batches: Iterable[tuple[int, pa.RecordBatch]], starts: Sequence[int]
) -> Iterator[pa.Table]:
    """The rows of ``batches`` (``(range, batch)``, the ranges in order, range ``i``'s row
    numbers from ``starts[i]`` up) in row-number order, as tables of about
    :data:`ARROW_BATCH_ROWS` rows (:class:`_Tables`).

    Why not ``ORDER BY row_number`` in each range's query: at 10M that sort took 4.9 of the
    13.5 s that DuckDB spent on the ranges. The rows come out of a range's query in its scan
    of ``inputs`` (the joins probe with it, see ``results._copy``): runs of consecutive row
    numbers, the size of DuckDB's row groups, that two threads hand over out of turn. So
    each run is passed on once the rows before it have been, and held until then. A row
    number is never in two runs, so this order is the sorted one. Whatever is still held when
    its range ends (a gap in the row numbers, or a scan in another order) is sorted then, so
    the order never depends on the plan DuckDB chose, only the speed does.
    """
    out = _Tables()
    held: dict[int, pa.RecordBatch] = {}  # runs by their first row number
    loose: list[pa.RecordBatch] = []  # sorted when the range ends (too many runs, a repeat)
    current, expected = -1, 0
    for i, batch in batches:
        if i != current:
            yield from out.add(_sorted([*held.values(), *loose]))
            held, loose, current, expected = {}, [], i, starts[i]
        runs = _runs(batch)
        if runs is None:
            loose.append(batch)
            continue
        for run in runs:
            first = int(run.column("row_number")[0].as_py())
            # A second run from the same row number (a row matched twice) is never dropped:
            # it is sorted in at the range's end, and the accounting counts it.
            if first in held:
                loose.append(run)
            else:
                held[first] = run
        while (run := held.pop(expected, None)) is not None:
            expected += run.num_rows
            yield from out.add([run])
    yield from out.add(_sorted([*held.values(), *loose]))
    if out.runs:
        yield out.take()
