"""Arrow columns built without ``pa.array``: the same arrays ``pa.array`` builds (which
imports pandas, the reason the module exists)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.columns import int32s, int64s, numbers, strings


@settings(deadline=None)  # the first pa.array call imports pandas
@given(st.lists(st.none() | st.text()))
def test_strings_are_what_pa_array_builds(values: list[str | None]) -> None:
    built = strings(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.string()))


@settings(deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1)))
def test_int32s_are_what_pa_array_builds(values: list[int]) -> None:
    built = int32s(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.int32()))


@settings(deadline=None)
@given(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1)))
def test_int64s_are_what_pa_array_builds(values: list[int | None]) -> None:
    built = int64s(values)
    built.validate(full=True)
    assert built.null_count == values.count(None)
    assert built.equals(pa.array(values, pa.int64()))


@settings(deadline=None)
@given(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1)), st.data())
def test_numbers_read_a_columns_values_from_its_offset_with_nulls_as_zero(
    values: list[int | None], data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(values)))
    length = data.draw(st.integers(0, len(values) - start))
    column = int64s(values).slice(start, length)  # a slice: its data starts at an offset
    expected = [0 if v is None else v for v in values[start : start + length]]
    assert numbers(column, np.int64).tolist() == expected
    unsigned = [v % 2**64 for v in expected]  # the same bits read as UBIGINT (the fold's)
    as_uint64 = column.view(pa.uint64())
    assert numbers(as_uint64, np.uint64).tolist() == unsigned
