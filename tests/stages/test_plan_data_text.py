"""The plan writes a user's ``data`` without a JSON merge where it can (a per-user object
with flat ``data.<name>`` members of verbatim types): every byte must be what the merge
writes, since the audience fingerprint, and so the campaign's Idempotency-Keys, hash it."""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any
from unittest import mock

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.stages.load import load_frame
from bulkbatch.stages.plan import PlanOptions, build_plan, queries

KEYS = ["a", "first_name", "n", "x y", "é", "plan", "nested"]

# Objects whose text holds a member's key without being that key at the top level, or holds
# it in another spelling, or in a form the merge rewrites (numbers, spacing, duplicates).
RAW = [
    '{"\\u0066irst_name": 1}',
    '{"a": {"first_name": 2}}',
    '{"s": "\\"first_name\\":"}',
    '{"a":1E5,"b":1.50,"c":18446744073709551616,"d":-0.0,"e":1e400}',
    '{"a":1,"a":2}',
    '{ "first_name" : "kept?" , "z" : [ 1 , {} ] }',
    '{"n": null, "m": {"k": null, "j": 1}}',
    "{}",
    "   ",
    # the key's tail (what the splice looks for) without the key; characters of several bytes
    '{"xplan": 3, "re_first_name": {"plan": 1}}',
    '{"k": "\\u00e9 \\ud83d\\ude00", "z": "é👩‍👧"}',
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(KEYS), kids, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def data_texts(draw: st.DrawFn) -> str | None:
    if draw(st.booleans()):
        return draw(st.one_of(st.none(), st.sampled_from(RAW)))
    obj = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
    compact = draw(st.booleans())
    return json.dumps(
        obj,
        ensure_ascii=draw(st.booleans()),
        separators=(",", ":") if compact else (", ", ": "),
    )


# (arrow type, values) of a typed ``data.n`` column. A wide DECIMAL is not verbatim: to_json
# writes 12.5000000000, the merge 12.5.
TYPED = {
    "BIGINT": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "DOUBLE": (pa.float64(), st.floats(allow_nan=False, allow_infinity=False)),
    "FLOAT": (pa.float32(), st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "BOOLEAN": (pa.bool_(), st.booleans()),
    "DATE": (pa.date32(), st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31))),
    "DECIMAL": (pa.decimal128(38, 10), st.decimals(-(10**7), 10**7, places=10)),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(sorted(TYPED)))
    arrow_type, typed = TYPED[kind]
    names = st.one_of(st.none(), st.text(max_size=8))
    table: dict[str, pa.Array] = {
        "user_id": pa.array([f"u{i}" for i in range(n)], pa.string()),
        "data": pa.array(draw(st.lists(data_texts(), min_size=n, max_size=n)), pa.string()),
    }
    if draw(st.booleans()):
        table["data.first_name"] = pa.array(
            draw(st.lists(names, min_size=n, max_size=n)), pa.string()
        )
    if draw(st.booleans()):
        got = draw(st.lists(st.one_of(st.none(), typed), min_size=n, max_size=n))
        table["data.n"] = pa.array(got, arrow_type)
    return pa.table(table)


def _planned(table: pa.Table, *, merge_only: bool) -> tuple[list[Any], list[Any]]:
    con = duckdb.connect()
    load_frame(con, table)
    if merge_only:  # the merge for every user: what every earlier version wrote
        with mock.patch.object(queries, "_spliced_data", lambda _m, merged: (merged, [])):
            build_plan(con, PlanOptions(channel=None))
    else:
        build_plan(con, PlanOptions(channel=None))
    plan = con.execute("SELECT row_number, user_json FROM plan ORDER BY 1").fetchall()
    rejects = con.execute("SELECT row_number, reason_code FROM rejects ORDER BY 1").fetchall()
    con.close()
    return plan, rejects


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables())
def test_user_json_is_byte_for_byte_what_the_merge_writes(table: pa.Table) -> None:
    assert _planned(table, merge_only=False) == _planned(table, merge_only=True)


def test_the_merge_still_decides_when_the_object_holds_a_members_key() -> None:
    # Each row's data object names first_name somewhere: the merge's answer, not a splice.
    table = pa.table(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "data": [RAW[0], RAW[1], RAW[2], '{"first_name": "old", "b": 1}'],
            "data.first_name": ["new", "new", "new", "new"],
        }
    )
    plan, _ = _planned(table, merge_only=False)
    got = [json.loads(j)["data"] for _, j in plan]
    assert got == [
        {"first_name": "new"},
        {"a": {"first_name": 2}, "first_name": "new"},
        {"s": '"first_name":', "first_name": "new"},
        {"b": 1, "first_name": "new"},
    ]
    assert plan == _planned(table, merge_only=True)[0]


@pytest.mark.parametrize(
    ("column", "arrow_type", "value", "spliced"),
    [
        ("data.first_name", pa.string(), "Ann", True),
        ("data.n", pa.float64(), 1.5, True),
        ("data.n", pa.decimal128(38, 10), decimal.Decimal("12.5"), False),
        ("data.a.b", pa.string(), "deep", False),
    ],
)
def test_only_verbatim_flat_members_skip_the_merge(
    column: str, arrow_type: pa.DataType, value: Any, spliced: bool
) -> None:
    seen: list[str] = []
    real = duckdb.DuckDBPyConnection.execute

    def spy(self: duckdb.DuckDBPyConnection, sql: str, *a: Any, **k: Any) -> Any:
        seen.append(sql)
        return real(self, sql, *a, **k)

    con = duckdb.connect()
    table = pa.table(
        {"user_id": ["u1"], "data": ['{"k": 1}'], column: pa.array([value], arrow_type)}
    )
    load_frame(con, table)
    with mock.patch.object(duckdb.DuckDBPyConnection, "execute", spy):
        build_plan(con, PlanOptions(channel=None))
    writes = [s for s in seen if "INTO plan" in s or "TABLE plan AS" in s]
    assert writes and all(("_dw" in s) is spliced for s in writes)
    assert "12.5000" not in con.execute("SELECT user_json FROM plan").fetchone()[0]
