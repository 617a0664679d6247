"""Arrow columns built without ``pa.array``: the same arrays ``pa.array`` builds (which
imports pandas, the reason the module exists)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.columns import int32s, int64s, strings


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
