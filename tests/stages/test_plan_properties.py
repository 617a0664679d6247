"""Hypothesis properties of the plan: partition, dedupe policy, batch sizes, merge, JSON
depth, strict JSON, and ``--where`` as one expression."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.errors import UsageError
from bulkbatch.spec import MAX_JSON_DEPTH, json_depth
from bulkbatch.stages.load import load_frame
from bulkbatch.stages.plan import PlanOptions, build_plan
from bulkbatch.stages.plan.columns import (
    Cols,
    blank_sql,
    json_depth_sql,
    lenient_json_sql,
    too_deep_sql,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.one_of(st.none(), st.sampled_from(["", " ", "u1", "U1", "u2", " u3 ", "u4"]))
emails = st.one_of(
    st.none(), st.sampled_from(["a@x.com", "A@X.COM ", "b@y.org", "bad", "", "c@z.io"])
)
phones = st.one_of(st.none(), st.sampled_from(["+1 555 0100", "555-0101", "12", "", "5550100"]))
datas = st.one_of(st.none(), st.sampled_from(['{"a": 1}', "nope", "[1]", '{"b": {"c": null}}', ""]))
row = st.tuples(ids, emails, phones, datas)
tables = st.lists(row, min_size=1, max_size=40)


def _load(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    cols = list(zip(*rows, strict=True))
    load_frame(
        con,
        pa.table(
            {
                "user_id": pa.array(cols[0], pa.string()),
                "email": pa.array(cols[1], pa.string()),
                "phone_number": pa.array(cols[2], pa.string()),
                "data": pa.array(cols[3], pa.string()),
            }
        ),
    )


@SETTINGS
@given(
    rows=tables,
    dedupe=st.sampled_from(["first", "last"]),
    batch_size=st.integers(1, 7),
    max_job_size=st.one_of(st.none(), st.integers(1, 12)),
    where=st.sampled_from([None, "user_id IS NOT NULL", "row_number % 3 <> 0"]),
)
def test_every_row_lands_once_and_batches_fit(rows, dedupe, batch_size, max_job_size, where):
    con = duckdb.connect()
    _load(con, rows)
    info = build_plan(
        con,
        PlanOptions(
            dedupe=dedupe,
            batch_size=batch_size,
            max_job_size=max_job_size,
            where=where,
        ),
    )
    placed = con.execute(
        "SELECT row_number FROM plan UNION ALL SELECT row_number FROM rejects "
        "UNION ALL SELECT row_number FROM duplicates ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in placed] == list(range(1, len(rows) + 1))
    assert info.to_send + info.duplicates + info.rejected == len(rows)
    # batches: contiguous from 0, never over the size, only a job's last batch short,
    # never spanning jobs, stored in (batch_no, row_number) order
    stats = con.execute(
        "SELECT batch_no, count(*), count(DISTINCT job_no), min(job_no) "
        "FROM plan GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [s[0] for s in stats] == list(range(len(stats)))
    assert all(s[1] <= batch_size and s[2] == 1 for s in stats)
    for i, s in enumerate(stats[:-1]):
        if stats[i + 1][3] == s[3]:
            assert s[1] == batch_size
    if max_job_size is not None:
        sizes = con.execute("SELECT count(*) FROM plan GROUP BY job_no").fetchall()
        assert all(n[0] <= max_job_size for n in sizes)
    order = con.execute("SELECT batch_no, row_number FROM plan").fetchall()
    assert order == sorted(order)
    # one user per recipient in the plan
    dup = con.execute("SELECT count(*) - count(DISTINCT recipient) FROM plan").fetchall()
    assert dup == [(0,)]


@SETTINGS
@given(rows=tables, dedupe=st.sampled_from(["first", "last"]))
def test_dedupe_keeps_exactly_one_per_key_by_policy(rows, dedupe):
    con = duckdb.connect()
    _load(con, rows)
    build_plan(con, PlanOptions(dedupe=dedupe))
    valid = con.execute(
        "SELECT recipient, list(row_number ORDER BY row_number) FROM "
        "(SELECT recipient, row_number FROM plan UNION ALL "
        " SELECT recipient, row_number FROM duplicates) GROUP BY 1"
    ).fetchall()
    kept = dict(con.execute("SELECT recipient, row_number FROM plan").fetchall())
    for recipient, numbers in valid:
        expected = numbers[0] if dedupe == "first" else numbers[-1]
        assert kept[recipient] == expected
    pointers = con.execute(
        "SELECT d.kept_row_number = p.row_number FROM duplicates d JOIN plan p USING (recipient)"
    ).fetchall()
    assert all(p[0] for p in pointers)


# JSON nulls and strings that spell "null": the plan takes a per-user object with no "null" in
# its text as it is, and strips nulls from any other first.
json_scalars = st.one_of(
    st.integers(-5, 5),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.sampled_from(["null", "a null", "nullable"]),
)
json_objects = st.recursive(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), json_scalars, max_size=3),
    lambda children: st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]), st.one_of(json_scalars, children), max_size=3
    ),
    max_leaves=8,
)


def strip_nulls(value: Any) -> Any:
    """An object's null members removed, at every depth (as a merge patch onto ``{}`` does)."""
    if not isinstance(value, dict):
        return value
    return {k: strip_nulls(v) for k, v in value.items() if v is not None}


def merge(base: Any, patch: Any) -> Any:
    """The documented rule: RFC 7386 merge patch, per-user wins, no deletion by null (nulls
    are stripped from the per-user side first)."""
    patch = strip_nulls(patch)
    if not isinstance(patch, dict):
        return patch
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        out[k] = merge(out.get(k), v)
    return out


@SETTINGS
@given(global_data=json_objects, user_data=st.lists(json_objects, min_size=1, max_size=5))
def test_merge_is_per_user_wins(global_data, user_data):
    con = duckdb.connect()
    load_frame(
        con,
        pa.table(
            {
                "user_id": [f"u{i}" for i in range(len(user_data))],
                "data": [orjson.dumps(d).decode() for d in user_data],
            }
        ),
    )
    build_plan(con, PlanOptions(data=global_data, channel=None))
    got = [
        orjson.loads(r[0]).get("data", {})
        for r in con.execute("SELECT user_json FROM plan ORDER BY row_number").fetchall()
    ]
    assert got == [merge(strip_nulls(global_data), d) for d in user_data]


# ------------------------------------------------------------------------- JSON depth

# Strings full of brackets, quotes and escapes: only brackets outside strings count.
tricky_text = st.text(alphabet='[]{}"\\ab', max_size=6)
json_values = st.recursive(
    st.one_of(st.integers(-5, 5), tricky_text, st.booleans(), st.none()),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(tricky_text, children, max_size=3),
    ),
    max_leaves=12,
)


def _wrap(value: Any, depth: int, kinds: list[bool]) -> Any:
    for i in range(depth):
        value = {"k": value} if kinds[i % len(kinds)] else [value]
    return value


@settings(max_examples=150, deadline=None)
@given(
    inner=json_values,
    depth=st.integers(0, 140),
    kinds=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_sql_json_depth_matches_python(inner, depth, kinds):
    """The SQL depth check and depth count agree with ``spec.json_depth`` on any JSON."""
    value = _wrap(inner, depth, kinds)
    expected = json_depth(value, limit=10_000)
    con = duckdb.connect()
    row = con.execute(
        f"SELECT {too_deep_sql('x')}, {json_depth_sql('x')} FROM (SELECT ?::VARCHAR AS x)",
        [json.dumps(value)],
    ).fetchall()[0]
    assert bool(row[0]) == (expected > MAX_JSON_DEPTH)
    assert row[1] == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depths=st.lists(st.integers(1, 90), min_size=1, max_size=6))
def test_data_deeper_than_the_limit_is_rejected_and_named(depths):
    con = duckdb.connect()
    datas = [json.dumps(_wrap(1, d, [True])) for d in depths]
    load_frame(con, pa.table({"user_id": [f"u{i}" for i in range(len(depths))], "data": datas}))
    info = build_plan(con, PlanOptions(channel=None))
    deep = [i + 1 for i, d in enumerate(depths) if d > MAX_JSON_DEPTH]
    assert info.to_send == len(depths) - len(deep)
    got = con.execute("SELECT row_number, reason FROM rejects ORDER BY 1").fetchall()
    assert got == [
        (
            n,
            (
                f'column "data" nests {depths[n - 1]} levels deep; the most Courier takes is '
                f"{MAX_JSON_DEPTH}"
            ),
        )
        for n in deep
    ]


# ------------------------------------------------------------------------- --where

_TOKENS = [
    "true", "false", "user_id", "=", "'u1'", "(", ")", ";", " OR ", " AND ", "NOT ", "--",
    "/*", "*/", "\n", ",", " AS __bb_where", " FROM inputs", "SELECT ", "1", "COPY (SELECT 1) TO",
    " '{out}'", "IS NULL", " IN ", "'", '"', "row_number % 2 = 0",
]  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=12))
def test_where_runs_as_one_expression_or_not_at_all(parts, tmp_path_factory):
    """Any text: refused with a UsageError naming --where, or planned as one filter; nothing
    else ever runs (no file is written) and the accounting holds."""
    out = tmp_path_factory.mktemp("where") / "x.csv"
    where = "".join(parts).format(out=out)
    con = duckdb.connect()
    load_frame(con, pa.table({"user_id": ["u1", "u2", None, "u4"]}))
    try:
        info = build_plan(con, PlanOptions(where=where, channel=None))
    except UsageError as exc:
        assert str(exc).startswith(("Bad --where ", "The plan query failed: ")), str(exc)
    else:
        assert info.to_send + info.duplicates + info.rejected == 4
    assert not out.exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipients=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True),
    max_job_size=st.integers(1, 9),
)
def test_jobs_are_cut_in_md5_hex_order(recipients, max_job_size):
    # The job cut is part of a campaign's identity: it must stay "sorted by md5(recipient) as
    # hex text" whatever the SQL sorts on (two UBIGINT halves of the digest, since round 5).
    con = duckdb.connect()
    load_frame(con, pa.table({"user_id": pa.array([f"#{r}" for r in recipients], pa.string())}))
    build_plan(con, PlanOptions(max_job_size=max_job_size, batch_size=3))
    planned = dict(con.execute("SELECT recipient, job_no FROM plan").fetchall())
    order = sorted(planned, key=lambda r: hashlib.md5(r.encode()).hexdigest())
    assert [planned[r] for r in order] == [i // max_job_size for i in range(len(order))]
    con.close()


# JSON text in pieces, some of which strict JSON forbids (NaN, infinities in any case, a
# trailing comma) and strings that spell them, so blanking strings is what tells them apart.
_ATOMS = st.sampled_from(
    ["1", "-2.5e3", "true", "false", "null", "NaN", "-Infinity", "inf", "nAn", "-INF",
     '"nan"', '"a,]"', '"in\\"f,}"', '"\\\\"', '"Info"', '""']
)  # fmt: skip


def _json_texts(depth: int = 3) -> st.SearchStrategy[str]:
    if depth == 0:
        return _ATOMS
    inner = _json_texts(depth - 1)
    items = st.lists(inner, max_size=3)
    trailing = st.sampled_from(["", ",", " , "])
    arrays = st.builds(lambda xs, t: "[" + ",".join(xs) + (t if xs else "") + "]", items, trailing)
    objects = st.builds(
        lambda xs, t: (
            "{" + ",".join(f'"k{i}": {x}' for i, x in enumerate(xs)) + (t if xs else "") + "}"
        ),
        items,
        trailing,
    )
    return st.one_of(_ATOMS, arrays, objects)


def _strict(text: str) -> bool:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(text=_json_texts())
def test_lenient_json_is_exactly_what_duckdb_takes_and_strict_json_refuses(text):
    """For every text DuckDB's json_valid takes, the check says lenient exactly when a strict
    parser (Python's, with NaN and the infinities refused) refuses it."""
    con = duckdb.connect()
    valid, lenient = con.execute(
        f"SELECT json_valid($t), {lenient_json_sql('$t')}", {"t": text}
    ).fetchall()[0]
    if valid:
        assert lenient == (not _strict(text)), text


_BLANKS = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u3000", "\u2003", "\x85"]
)
_BLANK_TEXTS = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.lists(st.one_of(_BLANKS, st.text(max_size=2)), max_size=6).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(text=_BLANK_TEXTS)
def test_blank_is_exactly_trim_equals_empty(text):
    """The cheap blank test answers as ``trim(x) = ''`` does, NULL included, for every text:
    DuckDB's trim takes Unicode spaces but not tabs or newlines, and the test must not move
    which rows count as missing."""
    con = duckdb.connect()
    fast, slow = con.execute(f"SELECT {blank_sql('$t')}, trim($t) = ''", {"t": text}).fetchall()[0]
    assert fast == slow, repr(text)


_OBJECT_TEXTS = st.one_of(
    _json_texts(),
    st.builds(lambda a, b: a + b, st.sampled_from(["", " ", "\n", "{", "{}", "[", "\ufeff"]),
              st.one_of(_json_texts(), st.text(max_size=4))),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(text=_OBJECT_TEXTS)
def test_not_an_object_answers_as_json_type_does(text):
    """A text column's ``bad_json`` test skips json_type for text that starts with "{": it
    must still say "not an object" exactly when json_valid or json_type would."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT $t::VARCHAR AS d", {"t": text})
    _, bad = Cols({"d": "VARCHAR"}).obj("d")
    fast, slow = con.execute(
        f"SELECT {bad}, (NOT (d IS NULL OR {blank_sql('d')}) AND NOT CASE WHEN json_valid(d) "
        "THEN json_type(d) = 'OBJECT' ELSE false END) FROM t"
    ).fetchall()[0]
    assert fast == slow, repr(text)
