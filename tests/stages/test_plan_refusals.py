"""Values the plan refuses or rewrites so Courier never sees them: NaN and infinity, floats
that stand for ids or phones, JSON text DuckDB reads but Courier's parser refuses, JSON
nested too deep, and a ``--where`` that is more than one expression."""

from __future__ import annotations

import pytest

from bulkbatch.errors import UsageError
from bulkbatch.spec import parse_map_option
from bulkbatch.stages.load import LoadOptions, load_inputs
from bulkbatch.stages.plan import PlanOptions, build_plan
from tests.stages.plan_support import con, plan_of, rejects, users

__all__ = ["con"]  # the fixture, which the tests take by name


def test_nan_and_infinity_are_left_out_not_sent_as_invalid_json(con):
    """A float column with NaN or infinity (polars, Spark, DuckDB write them to Parquet) made
    the user JSON invalid (``"score":NaN``), and Courier refused the whole batch with a 400.
    JSON has no such numbers; they count as missing, as orjson and pandas treat them."""
    nan, inf = float("nan"), float("inf")
    plan_of(
        con,
        {"user_id": ["a", "b", "c", "d"], "data.score": [nan, inf, -inf, 1.5]},
    )
    assert [u.get("data") for u in users(con)] == [None, None, None, {"score": 1.5}]


def test_float_ids_and_phones_are_sent_as_integers_and_nan_as_missing(con):
    """pandas turns an integer column with a gap into float64, so ids went out as "12345.0"
    (another Courier user than "12345") and phone numbers as "15550001111.0"; a NaN id was
    the text "nan", one recipient shared by every such row (all but one lost as
    duplicates)."""
    nan = float("nan")
    plan_of(
        con,
        {
            "user_id": [12345.0, nan, 678.0, 2.5, nan, -0.0],
            "phone_number": [None, 15550001111.0, None, None, nan, None],
            "email": [None, None, None, None, "x@y.com", None],
        },
    )
    assert [u["recipient"] for u in users(con)] == [
        "12345",
        "phone:15550001111",
        "678",
        "2.5",
        "email:x@y.com",
        "0",
    ]
    assert users(con)[1]["profile"]["phone_number"] == "15550001111"
    assert con.execute("SELECT count(*) FROM duplicates").fetchall() == [(0,)]


def test_ids_and_phones_excel_wrote_in_scientific_notation_are_rejected(con):
    """Excel saves a long number in a General column as "1.23457E+11": the digits are gone.
    Such ids were sent, and distinct people sharing one shortened id were dropped as
    duplicates of each other; such phones were sent as given. Both are rejected, saying why
    and how to export the column again."""
    plan_of(
        con,
        {
            "user_id": ["1.23457E+11", "1.23457E+11", "u3", "1E+11", None, "9e+3x"],
            "email": ["a@x.com", "b@x.com", None, None, "e@x.com", None],
            "phone_number": [None, None, "1.55516E+10", None, "4.47912e+11", None],
        },
    )
    excel = (
        "is in scientific notation, so its last digits are lost (Excel saves long numbers "
        "this way from a General column): format the column as Text and export it again"
    )
    assert rejects(con) == [
        (1, "bad_user_id", f'user_id "1.23457E+11" {excel}'),
        (2, "bad_user_id", f'user_id "1.23457E+11" {excel}'),
        (3, "bad_phone", f'phone number "1.55516E+10" {excel}'),
        (4, "bad_user_id", f'user_id "1E+11" {excel}'),
        (5, "bad_phone", f'phone number "4.47912e+11" {excel}'),
    ]
    assert [u["recipient"] for u in users(con)] == ["9e+3x"]
    assert con.execute("SELECT count(*) FROM duplicates").fetchall() == [(0,)]


def test_a_float_id_past_2_53_is_rejected_not_rounded(con):
    plan_of(con, {"user_id": [1e16, 12345.0]})
    assert [r[:2] for r in rejects(con)] == [(1, "bad_user_id")]
    assert [u["recipient"] for u in users(con)] == ["12345"]


# ------------------------------------------- JSON that DuckDB reads and Courier refuses
#
# DuckDB's JSON reader (yyjson, lenient) accepts NaN, Infinity and trailing commas, and its
# to_json writes a float's NaN bare wherever it sits. Courier's JSON parser refuses all of
# them, and one such user made it refuse the whole batch of 1,000 with a 400, on every try.


def test_nan_inside_structs_lists_and_maps_is_null(con):
    """A float inside a struct, list or map: NaN and infinities become JSON null, as a top-level
    float's do (a null member of an object is then left out of ``data``, like any null; a
    list keeps its positions)."""
    frame = con.sql(
        "SELECT * FROM (VALUES "
        "('a', {'score': 'nan'::DOUBLE, 'n': 1, 'deep': {'x': 'inf'::FLOAT}, 'Odd \"k': -1::DOUBLE}, "
        "  ['-inf'::DOUBLE, 2.5], MAP(['k'], ['nan'::DOUBLE]), ['nan'::DOUBLE, 1]::DOUBLE[2]),"
        "('b', {'score': 1.5::DOUBLE, 'n': 2, 'deep': NULL::STRUCT(x FLOAT), 'Odd \"k': 'inf'::DOUBLE}, NULL, "
        "  MAP(['k'], [3.0]), NULL)"
        ") t(user_id, data, scores, m, a)"
    )
    plan_of(
        con,
        frame,
        mapping=parse_map_option(["data.scores=scores", "data.m=m", "data.a=a"]),
    )
    got = users(con)
    assert [u["data"] for u in got] == [
        {"n": 1, "deep": {}, 'Odd "k': -1.0, "scores": [None, 2.5], "m": {}, "a": [None, 1.0]},
        {"score": 1.5, "n": 2, "m": {"k": 3.0}},
    ]


def test_json_text_with_nan_or_a_trailing_comma_is_rejected_by_column(con, tmp_path):
    """``{"n": NaN}``, ``{"n": 1,}`` and ``[1,]`` pass DuckDB's json_valid; the row is now
    rejected as bad_json with what is wrong, and everyone else is sent."""
    f = tmp_path / "a.csv"
    f.write_text(
        "user_id,data\n"
        'u1,"{""n"": 1}"\n'
        'u2,"{""n"": NaN}"\n'
        'u3,"{""n"": [1, 2 ,] }"\n'
        'u4,"{""n"": -Infinity}"\n'
        'u5,"{""note"": ""NaN, inf, [1,]""}"\n'
    )
    load_inputs(con, LoadOptions((str(f),)))
    info = build_plan(con, PlanOptions())
    assert info.rejected_by_reason == {"bad_json": 3}
    said = 'column "data" holds NaN, Infinity or a trailing comma, which JSON does not allow'
    assert [r[2] for r in rejects(con)] == [said] * 3
    assert [u["data"] for u in users(con)] == [{"n": 1}, {"note": "NaN, inf, [1,]"}]


def test_json_values_with_nan_are_rejected_by_column(con, tmp_path):
    """NDJSON: DuckDB reads ``NaN`` and ``[1,]`` into JSON-typed columns (and JSON members
    of structs); mapped into the user, their text went out as it was."""
    f = tmp_path / "a.ndjson"
    f.write_text(
        '{"user_id": "u1", "data": {"a": 1.5, "b": 1}, "m": [1, "x"]}\n'
        '{"user_id": "u2", "data": {"a": 1.5, "b": "x"}, "m": [Infinity, "x"]}\n'
        '{"user_id": "u3", "data": {"a": NaN, "b": [NaN]}, "m": [2, "y"]}\n'
    )
    load_inputs(con, LoadOptions((str(f),)))
    info = build_plan(con, PlanOptions(mapping=parse_map_option(["data.m=m"])))
    assert info.rejected_by_reason == {"bad_json": 2}
    reasons = [r[2] for r in rejects(con)]
    assert reasons == [
        'column "m" holds NaN, Infinity or a trailing comma, which JSON does not allow',
        'column "data" holds NaN, Infinity or a trailing comma, which JSON does not allow',
    ]
    assert [u["data"] for u in users(con)] == [{"a": 1.5, "b": 1, "m": [1, "x"]}]


# ------------------------------------------------------- #15 defect 3: JSON nested too deep


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_deep_data_is_rejected_and_the_rest_sent(con, tmp_path):
    f = tmp_path / "deep.csv"
    rows = [("u1", _nested(10_000)), ("u2", _nested(64)), ("u3", _nested(65)), ("u4", "{}")]
    f.write_text(
        "user_id,data\n" + "".join(f'{u},"{d.replace(chr(34), chr(34) * 2)}"\n' for u, d in rows)
    )
    load_inputs(con, LoadOptions((str(f),)))
    for _ in range(2):  # a resumed run plans again: it must not crash either time
        info = build_plan(con, PlanOptions(), tmp_path / "run")
        assert (info.to_send, info.rejected_by_reason) == (2, {"bad_json": 2})
    assert rejects(con) == [
        (1, "bad_json", 'column "data" nests 10000 levels deep; the most Courier takes is 64'),
        (3, "bad_json", 'column "data" nests 65 levels deep; the most Courier takes is 64'),
    ]
    assert [u["recipient"] for u in info.sample_users] == ["u2", "u4"]


def test_deep_preferences_and_json_data_columns(con, tmp_path):
    f = tmp_path / "deep.ndjson"
    f.write_text(
        '{"user_id": "u1", "preferences": ' + _nested(70) + "}\n"
        '{"user_id": "u2", "data.x": ' + _nested(64) + "}\n"  # 64 + its key: 65 in data
        '{"user_id": "u3", "data.x": ' + _nested(63) + "}\n"
    )
    load_inputs(con, LoadOptions((str(f),)))
    info = build_plan(con, PlanOptions())
    assert info.to_send == 1
    assert rejects(con) == [
        (1, "bad_json", 'column "preferences" nests 70 levels deep; the most Courier takes is 64'),
        (2, "bad_json", 'column "data.x" nests 65 levels deep; the most Courier takes is 64'),
    ]


def test_ndjson_too_deep_for_type_detection_still_loads(con, tmp_path):
    f = tmp_path / "deep.ndjson"
    f.write_text(
        f'{{"user_id": "u1", "data": {_nested(10_000)}}}\n{{"user_id": 2, "data": {{}}}}\n'
    )
    load_inputs(con, LoadOptions((str(f),)))
    info = build_plan(con, PlanOptions())
    assert (info.to_send, info.rejected_by_reason) == (1, {"bad_json": 1})
    assert users(con) == [{"recipient": "2", "to": {"user_id": "2"}}]


# --------------------------------------------------- #15 defect 4: --where is one expression


INJECTION = "true); COPY (SELECT 1) TO '{out}'; SELECT (true"


@pytest.mark.parametrize(
    ("where", "why"),
    [
        (INJECTION, "it holds 3 SQL statements, not one expression; nothing was run"),
        ("true) TO '{out}' --", "syntax error"),
        ("true) AS __bb_where, (1", "it is more than one expression; nothing was run"),
        ("true) AS __bb_where FROM inputs WHERE (true", "syntax error"),
        ("(SELECT count(*) FROM read_csv('{out}')) > 0", "it holds a subquery"),
        ("user_id IN (SELECT 'a')", "it holds a subquery"),
        ("true; COPY (SELECT 1) TO '{out}'", "syntax error"),
        ("true); SELECT (true", "it holds 2 SQL statements"),
    ],
)
def test_where_is_refused_unless_one_expression(con, tmp_path, where, why):
    out = tmp_path / "x.csv"
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a", "b"]}, where=where.format(out=out))
    assert str(e.value).startswith(f"Bad --where {where.format(out=out)!r}: ")
    assert why in str(e.value)
    assert not out.exists()
    assert con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'plan'"
    ).fetchall() == [(0,)]


def test_where_comment_cannot_eat_the_query(con):
    info = plan_of(con, {"user_id": ["a", "b"]}, where="user_id = 'a' -- the rest is mine")
    assert info.to_send == 1 and rejects(con) == [(2, "filtered", "excluded by --where")]
