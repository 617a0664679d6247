"""The ledger's Arrow columns: the same arrays ``pa.array`` builds, without importing pandas."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.ledger import _int32s, _strings


@settings(deadline=None)  # the first pa.array call imports pandas
@given(st.lists(st.none() | st.text()))
def test_strings_are_what_pa_array_builds(values: list[str | None]) -> None:
    built = _strings(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.string()))


@settings(deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1)))
def test_int32s_are_what_pa_array_builds(values: list[int]) -> None:
    built = _int32s(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.int32()))
