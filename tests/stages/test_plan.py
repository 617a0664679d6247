"""The plan stage: mapping, user objects, merge, reasons, dedupe, batches, warnings, errors.

Values the plan refuses or rewrites for Courier are in ``test_plan_refusals.py``."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import polars as pl
import pytest

from bulkbatch.errors import InputError, PlanError, UsageError
from bulkbatch.spec import parse_map_option
from bulkbatch.stages.load import LoadOptions, load_frame, load_inputs
from bulkbatch.stages.plan import (
    PlanInfo,
    PlanOptions,
    build_plan,
    content_variables,
)
from tests.stages.plan_support import con, plan_of, rejects, users

__all__ = ["con"]  # the fixture, which the tests take by name

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "recipients_sample.csv"


# ------------------------------------------------------------------ the sample, end to end


def test_sample_audience_plan(con, tmp_path):
    load_inputs(con, LoadOptions((str(SAMPLE),)))
    info = build_plan(con, PlanOptions(), tmp_path)
    assert info.rows_read == 2000
    assert info.rows_read == info.to_send + info.duplicates + info.rejected
    assert info.rejected_by_reason == {"no_address": 6, "bad_email": 3}
    assert info.duplicates == 8
    assert info.batches == 2 and info.jobs == 1
    assert info.key_columns == ("user_id", "email", "phone_number")
    assert (tmp_path / "plan.parquet").exists()
    got = con.execute(
        f"SELECT count(*), min(batch_no), max(batch_no) FROM '{tmp_path / 'plan.parquet'}'"
    ).fetchall()
    assert got == [(info.to_send, 0, 1)]
    cols = con.execute(f"DESCRIBE SELECT * FROM '{tmp_path / 'rejects.parquet'}'").fetchall()
    assert [c[0] for c in cols][:5] == ["row_number", "reason_code", "reason", "source", "user_id"]
    assert con.execute(f"SELECT count(*) FROM '{tmp_path / 'rejects.parquet'}'").fetchall() == [
        (9,)
    ]
    again = PlanInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again == info
    text = info.render(rate=10)
    assert "rows read" in text and "no_address" in text and "estimated" in text


def test_plan_file_is_the_plan_table_in_its_order(con, tmp_path):
    """plan.parquet is streamed through pyarrow's writer in Arrow batches: every row of the
    table, in its physical (batch, row) order, with the table's column types."""
    load_frame(con, pl.DataFrame({"user_id": [f"u{i % 4_000}" for i in range(70_000)]}))
    info = build_plan(con, PlanOptions(batch_size=97, max_job_size=1_000), tmp_path)
    assert info.to_send == 4_000 and info.jobs == 4
    columns = "row_number, job_no, batch_no, recipient, user_json"
    table = con.execute(f"SELECT {columns} FROM plan").fetchall()
    file = f"'{tmp_path / 'plan.parquet'}'"
    assert con.execute(f"SELECT {columns} FROM {file}").fetchall() == table
    assert table == sorted(table, key=lambda r: (r[2], r[0]))
    types = con.execute(f"SELECT column_type FROM (DESCRIBE SELECT * FROM {file})").fetchall()
    assert [t[0] for t in types] == ["BIGINT", "INTEGER", "INTEGER", "VARCHAR", "VARCHAR"]


def test_an_unwritable_plan_file_is_a_plan_error(con, tmp_path):
    (tmp_path / "plan.parquet").mkdir()  # a directory where the file goes
    load_frame(con, pl.DataFrame({"user_id": ["a", "b"]}))
    with pytest.raises(PlanError, match=r"Cannot write the plan files to .*writable"):
        build_plan(con, PlanOptions(), tmp_path)


def test_table_contract(con):
    plan_of(con, {"user_id": ["a"]})
    expected = {
        "plan": [
            ("row_number", "BIGINT"),
            ("recipient", "VARCHAR"),
            ("job_no", "INTEGER"),
            ("batch_no", "INTEGER"),
            ("user_json", "VARCHAR"),
        ],
        "rejects": [("row_number", "BIGINT"), ("reason_code", "VARCHAR"), ("reason", "VARCHAR")],
        "duplicates": [
            ("row_number", "BIGINT"),
            ("recipient", "VARCHAR"),
            ("kept_row_number", "BIGINT"),
        ],
    }
    for table, cols in expected.items():
        got = [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()]
        assert got == cols, table
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert not any(t.startswith("_bb") for t in tables)


# ----------------------------------------------------------------------- user objects


def test_user_object_shape_and_recipient_rule(con):
    plan_of(
        con,
        {
            "user_id": [" u1 ", None, None, None],
            "EMAIL": [" Ann@Example.COM ", " Bob@X.org", None, None],
            "phone": ["+1 555 000 1111", None, "(555) 000-2222", None],
            "locale": ["fr", None, "", None],
            "list_id": [None, None, None, "L9"],
            "tenant_id": ["t1", None, None, None],
            "crm_score": [1, 2, 3, 4],
        },
    )
    got = users(con)
    assert got[0] == {
        "recipient": "u1",
        # an unambiguous international number is sent as E.164 (#18)
        "profile": {"email": "ann@example.com", "phone_number": "+15550001111"},
        "to": {"user_id": "u1", "locale": "fr", "tenant_id": "t1"},
    }
    assert got[1] == {"recipient": "email:bob@x.org", "profile": {"email": "bob@x.org"}}
    assert got[2] == {
        "recipient": "phone:5550002222",
        "profile": {"phone_number": "(555) 000-2222"},
    }
    assert got[3] == {"recipient": "list:L9", "to": {"list_id": "L9"}}


def test_integer_user_id_becomes_string(con):
    plan_of(con, {"user_id": [7, 8]})
    assert [u["recipient"] for u in users(con)] == ["7", "8"]
    assert users(con)[0]["to"] == {"user_id": "7"}


def test_mapping_and_extra_columns(con):
    plan_of(
        con,
        {
            "customer_id": ["c1"],
            "fname": ["Ann"],
            "mail": ["ann@x.com"],
            "profile.company": ["Acme"],
            "to.email": ["ann@x.com"],
            "data.address.city": ["Oslo"],
            "data.address.zip": ["0150"],
            "ignored": ["nope"],
        },
        mapping=parse_map_option(
            ["user_id=customer_id", "data.first_name=fname", "profile.email=MAIL"]
        ),
    )
    assert users(con) == [
        {
            "recipient": "c1",
            "profile": {"email": "ann@x.com", "company": "Acme"},
            "to": {"user_id": "c1", "email": "ann@x.com"},
            "data": {"address": {"city": "Oslo", "zip": "0150"}, "first_name": "Ann"},
        }
    ]


def test_map_wins_over_convention(con):
    info = plan_of(
        con,
        {"user_id": ["x1"], "customer_id": ["c1"]},
        mapping={"to.user_id": "customer_id"},
    )
    assert users(con)[0]["recipient"] == "c1"
    assert info.key_columns == ("customer_id",)


def test_json_data_column_and_preferences(con):
    plan_of(
        con,
        {
            "user_id": ["a", "b", "c", "d"],
            "data": ['{"x": 1, "n": {"k": 2}}', None, "not json", "[1, 2]"],
            "preferences": ['{"notifications": {"n1": {"status": "OPTED_OUT"}}}', "", "{}", None],
        },
    )
    got = users(con)
    assert got[0]["data"] == {"x": 1, "n": {"k": 2}}
    assert got[0]["preferences"] == {"notifications": {"n1": {"status": "OPTED_OUT"}}}
    assert got[1] == {"recipient": "b", "to": {"user_id": "b"}}
    assert rejects(con) == [
        (3, "bad_json", 'column "data" is not a JSON object'),
        (4, "bad_json", 'column "data" is not a JSON object'),
    ]


def test_bad_preferences_names_the_column(con):
    plan_of(con, {"user_id": ["a"], "prefs": ["{oops"]}, mapping={"preferences": "prefs"})
    assert rejects(con) == [(1, "bad_json", 'column "prefs" is not a JSON object')]


def test_struct_data_column_from_parquet(con, tmp_path):
    f = tmp_path / "a.parquet"
    con.execute(
        "COPY (SELECT 'u1' AS user_id, {'plan': 'pro', 'n': NULL::INTEGER} AS data "
        f"UNION ALL SELECT 'u2', {{'plan': NULL, 'n': 3}}) TO '{f}'"
    )
    load_inputs(con, LoadOptions((str(f),)))
    build_plan(con, PlanOptions(data={"plan": "free", "n": 0}))
    assert [u["data"] for u in users(con)] == [{"plan": "pro", "n": 0}, {"plan": "free", "n": 3}]


def test_ndjson_nested_data(con, tmp_path):
    f = tmp_path / "a.ndjson"
    f.write_text('{"user_id": "u1", "data": {"a": {"b": 1}}}\n{"user_id": 2, "data": null}\n')
    load_inputs(con, LoadOptions((str(f),)))
    build_plan(con, PlanOptions())
    assert users(con) == [
        {"recipient": "u1", "to": {"user_id": "u1"}, "data": {"a": {"b": 1}}},
        {"recipient": "2", "to": {"user_id": "2"}},
    ]


# ----------------------------------------------------------------------------- merge


def test_merge_per_user_wins_deep_and_nulls_do_not_delete(con):
    plan_of(
        con,
        {
            "user_id": ["a", "b"],
            "data": ['{"promo": "VIP", "nested": {"x": 2}, "gone": null}', None],
            "data.name": ["Ann", None],
            "data.promo": [None, "COL"],
        },
        data={"promo": "SPRING", "nested": {"x": 1, "y": 1}, "gone": "kept", "list": [1]},
    )
    got = users(con)
    assert got[0]["data"] == {
        "promo": "VIP",
        "nested": {"x": 2, "y": 1},
        "gone": "kept",
        "list": [1],
        "name": "Ann",
    }
    assert got[1]["data"] == {
        "promo": "COL",
        "nested": {"x": 1, "y": 1},
        "gone": "kept",
        "list": [1],
    }


def test_data_columns_win_over_data_column(con):
    plan_of(con, {"user_id": ["a"], "data": ['{"k": "json"}'], "data.k": ["col"]})
    assert users(con)[0]["data"] == {"k": "col"}


# --------------------------------------------------------------------------- reasons


def test_each_reason_code(con):
    plan_of(
        con,
        {
            "user_id": [None, "u2", "u3", "u4", "u5", "u6"],
            "email": [" ", "nope", "ok@x.com", "ok@x.com", "ok@x.com", "ok@x.com"],
            "phone_number": [None, None, "12345", None, None, "+44 20 7946 0958"],
            "data": [None, None, None, "[]", '{"big": "' + "x" * 300 + '"}', None],
        },
        max_user_bytes=200,
    )
    assert rejects(con) == [
        (1, "no_address", "no address: user_id, email, phone_number and list_id are all empty"),
        (2, "bad_email", 'e-mail "nope" does not look like an e-mail address'),
        (3, "bad_phone", 'phone number "12345" has 5 digits; expected 7 to 15'),
        (4, "bad_json", 'column "data" is not a JSON object'),
        (
            5,
            "too_large",
            f"user JSON is {len(_user5())} bytes, over the 200-byte limit (--max-user-bytes)",
        ),
    ]
    assert [u["recipient"] for u in users(con)] == ["u6"]


def _user5() -> bytes:
    return orjson.dumps(
        {
            "recipient": "u5",
            "profile": {"email": "ok@x.com"},
            "to": {"user_id": "u5"},
            "data": {"big": "x" * 300},
        }
    )


def test_where_filter_is_recorded(con):
    info = plan_of(
        con,
        {"user_id": ["a", "b", "c"], "data.plan": ["pro", "free", None]},
        where="\"data.plan\" = 'pro'",
    )
    assert info.to_send == 1
    assert rejects(con) == [
        (2, "filtered", "excluded by --where"),
        (3, "filtered", "excluded by --where"),
    ]


def test_sql_escape_hatch(con):
    info = plan_of(
        con,
        {"user_id": ["a", "b", "c"], "score": [5, 1, 9]},
        sql='SELECT row_number, user_id, score * 2 AS "data.double" FROM inputs WHERE score > 2',
    )
    assert info.to_send == 2 and info.rejected == 1
    assert [u["data"] for u in users(con)] == [{"double": 10}, {"double": 18}]
    assert rejects(con) == [(2, "filtered", "excluded by --sql")]


def test_sql_without_row_number(con):
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a"]}, sql="SELECT user_id FROM inputs")
    assert str(e.value) == (
        "--sql must return the row_number column of inputs (e.g. SELECT * FROM inputs "
        "WHERE ...) so that every input row can be accounted for."
    )


def test_bad_sql(con):
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a"]}, sql="SELECT * FROM nowhere")
    assert str(e.value).startswith("Bad --sql: Table with name nowhere does not exist!")
    assert str(e.value).endswith(
        "Fix the query; it runs over table inputs (columns: row_number, source, user_id)."
    )


def test_bad_where(con):
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a"]}, where="no_such_col = 1")
    msg = str(e.value)
    assert msg.startswith(
        "Bad --where 'no_such_col = 1': Referenced column \"no_such_col\" not found"
    )
    assert msg.endswith(
        "Write a SQL boolean over the input columns (user_id); quote names with dots, "
        'e.g. "data.plan".'
    )


# ----------------------------------------------------------------------------- dedupe


DUPS = {
    "user_id": [None, "u1", None, "u1", "u2", None],
    "email": ["A@x.com", "u1@x.com", "a@X.com ", "u1b@x.com", "bad", "a@x.com"],
}


def test_dedupe_first(con):
    info = plan_of(con, DUPS)
    assert con.execute("SELECT * FROM duplicates ORDER BY 1").fetchall() == [
        (3, "email:a@x.com", 1),
        (4, "u1", 2),
        (6, "email:a@x.com", 1),
    ]
    assert info.duplicate_groups == [
        {"recipient": "email:a@x.com", "rows": [1, 3, 6], "kept": 1},
        {"recipient": "u1", "rows": [2, 4], "kept": 2},
    ]
    assert [r[0] for r in rejects(con)] == [5]


def test_dedupe_last(con):
    plan_of(con, DUPS, dedupe="last")
    assert con.execute("SELECT * FROM duplicates ORDER BY 1").fetchall() == [
        (1, "email:a@x.com", 6),
        (2, "u1", 4),
        (3, "email:a@x.com", 6),
    ]


def test_invalid_first_row_does_not_shadow(con):
    plan_of(con, {"user_id": ["u1", "u1"], "email": ["bad", "ok@x.com"]})
    assert [u["profile"]["email"] for u in users(con)] == ["ok@x.com"]
    assert con.execute("SELECT count(*) FROM duplicates").fetchall() == [(0,)]


def test_dedupe_fail(con):
    with pytest.raises(PlanError) as e:
        plan_of(con, DUPS, dedupe="fail")
    assert str(e.value) == (
        "--dedupe fail: 3 duplicate row(s) in 2 recipient group(s), e.g. 'email:a@x.com' on "
        "rows 1, 3, 6. Remove them from the input, or pass --dedupe first or --dedupe last to "
        "keep one row per recipient."
    )


def test_dedupe_fail_names_a_few_rows_of_a_large_group(con):
    """100,000 rows of one person made a 689 kB "line" listing every row number."""
    with pytest.raises(PlanError) as e:
        plan_of(con, {"email": ["same@x.com"] * 100_000}, dedupe="fail")
    assert str(e.value) == (
        "--dedupe fail: 99999 duplicate row(s) in 1 recipient group(s), e.g. "
        "'email:same@x.com' on rows 1, 2, 3, 4, 5 and 99995 more. Remove them from the "
        "input, or pass --dedupe first or --dedupe last to keep one row per recipient."
    )


# ---------------------------------------------------------------------------- batches


def test_batches_and_storage_order(con):
    info = plan_of(con, {"user_id": [f"u{i}" for i in range(25)]}, batch_size=10)
    assert info.batches == 3
    got = con.execute("SELECT batch_no, row_number FROM plan").fetchall()  # physical order
    assert got == [(i // 10, i + 1) for i in range(25)]


def test_max_job_size_splits_jobs(con):
    info = plan_of(con, {"user_id": [f"u{i}" for i in range(25)]}, batch_size=4, max_job_size=10)
    assert info.jobs == 3
    per_job = con.execute(
        "SELECT job_no, count(*), count(DISTINCT batch_no), min(batch_no), max(batch_no) "
        "FROM plan GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert per_job == [(0, 10, 3, 0, 2), (1, 10, 3, 3, 5), (2, 5, 2, 6, 7)]
    order = con.execute("SELECT batch_no, row_number FROM plan").fetchall()
    assert order == sorted(order)


@pytest.mark.parametrize("size", [0, 1001])
def test_batch_size_out_of_range(con, size):
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a"]}, batch_size=size)
    # the wording is the option's own (bulkbatch.options), as on the command line
    bound = "at least 1 and at most 1000" if size < 1 else "at most 1000"
    assert str(e.value) == f"--batch-size {size} must be {bound} (Python: batch_size=)."


# ---------------------------------------------------------------------------- warnings


def test_warning_to_email_without_profile_email(con):
    info = plan_of(
        con,
        {
            "user_id": ["a", "b", "c"],
            "to.email": ["a@x.com", None, None],
            "email": [None, None, "c@x.com"],
        },
    )
    assert info.warnings == [
        (
            "1 user(s) have to.email but no profile.email: Courier does not route e-mail jobs by "
            "to.email, so they will get nothing. Map the address to profile.email "
            "(--map profile.email=to.email)."
        ),
        (
            "2 user(s) to send have no profile.email, so this e-mail job cannot reach them (Courier "
            "reports them UNROUTABLE). Add an e-mail column, or use --where to leave them out."
        ),
    ]
    # an sms job does not care about e-mail addresses (it warns about phone numbers instead)
    sms = plan_of(con, {"user_id": ["a"], "to.email": ["a@x.com"]}, channel="sms").warnings
    assert not any("e-mail" in w for w in sms)


def test_warning_missing_content_variables(con):
    info = plan_of(
        con,
        {"email": ["a@x.com", "b@x.com"], "data.first_name": ["Ann", None]},
        content={"title": "Hi {{first_name}}", "body": "{{ promo }} {{ shop.url }}"},
        data={"shop": {"url": "https://x"}},
    )
    assert info.warnings == [
        (
            "2 user(s) lack data for the content's variables: {{first_name}} (1), {{promo}} (2). "
            "Add the values to the input (data.NAME columns) or to --data, or they render empty."
        )
    ]
    assert content_variables({"a": ["{{x}} {{y.z}}", {"b": "{{x}}"}]}) == ["x", "y.z"]


# ------------------------------------------------------------------ errors and options


def test_no_address_column(con, tmp_path):
    f = tmp_path / "people.csv"
    f.write_text("name,city\nAnn,Oslo\n")
    load_inputs(con, LoadOptions((str(f),)))
    with pytest.raises(InputError) as e:
        build_plan(con, PlanOptions())
    assert str(e.value) == (
        f"No address column in {f.resolve()}: found name, city. Name a column user_id, email, "
        "phone_number or list_id, or map one with --map to.user_id=COLUMN or "
        "--map profile.email=COLUMN."
    )


def test_no_address_column_in_a_wide_input_names_a_few(con, tmp_path):
    f = tmp_path / "wide.csv"
    f.write_text(",".join(f"c{i}" for i in range(2000)) + "\n" + ",".join("x" * 2000) + "\n")
    load_inputs(con, LoadOptions((str(f),)))
    with pytest.raises(InputError) as e:
        build_plan(con, PlanOptions())
    assert str(e.value).startswith(
        f"No address column in {f.resolve()}: found c0, c1, c2, c3, c4, c5, c6, c7 and 1992 "
        "more. Name a column user_id, email,"
    )


def test_unknown_map_column_in_a_wide_input_names_a_few(con):
    wide = {f"c{i}": ["x"] for i in range(100)}
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a"], **wide}, mapping={"profile.email": "e_mail"})
    assert str(e.value) == (
        "Unknown column in --map profile.email=e_mail: the input has user_id, c0, c1, c2, "
        "c3, c4, c5, c6 and 93 more. Use one of these names."
    )


def test_unknown_map_column(con):
    with pytest.raises(UsageError) as e:
        plan_of(con, {"user_id": ["a"], "mail": ["x"]}, mapping={"profile.email": "e_mail"})
    assert str(e.value) == (
        "Unknown column in --map profile.email=e_mail: the input has user_id, mail. "
        "Use one of these names."
    )


def test_fingerprint_tracks_options(con):
    a = plan_of(con, {"user_id": ["a"]})
    b = plan_of(con, {"user_id": ["a"]})
    c = plan_of(con, {"user_id": ["a"]}, batch_size=10)
    d = plan_of(con, {"user_id": ["a"]}, data={"x": 1})
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3


def test_estimated_seconds(con):
    info = plan_of(con, {"user_id": [f"u{i}" for i in range(30)]}, batch_size=10)
    assert info.estimated_seconds(None) is None
    # 3 ingests + 7 per-job calls (create, check, verify, run, ~3 polls) + 1 page + 1 per job
    assert info.requests() == 3 + 7 + 1 + 1
    assert info.estimated_seconds(5) == pytest.approx(12 / 5)


def test_an_address_with_a_nul_byte_is_a_bad_email(con):
    info = plan_of(con, {"email": ["ok@example.com", "a\x00b@example.com"]})
    assert info.rejected_by_reason == {"bad_email": 1}


# --------------------------------------------------------------- locale and the channel


def test_locale_fills_users_without_one(con):
    plan_of(con, {"user_id": ["a", "b", "c"], "locale": ["fr", None, " "]}, locale="de_DE")
    assert [u["to"].get("locale") for u in users(con)] == ["fr", "de_DE", "de_DE"]
    plan_of(con, {"user_id": ["a"]}, locale="en_US")
    assert users(con) == [{"recipient": "a", "to": {"user_id": "a", "locale": "en_US"}}]


def test_channel_sms_counts_users_without_a_phone(con):
    ids = [f"u{i}" for i in range(990)]
    phones = ["+15550100000" if i >= 240 else None for i in range(990)]
    info = plan_of(con, {"user_id": ids, "phone_number": phones}, channel="sms")
    assert info.to_send == 990 and info.rejected == 0  # never rejected for the channel
    assert info.unreachable == 240
    assert info.warnings == [
        (
            "240 of 990 users have no phone number; Courier cannot text them (it reports them "
            "UNROUTABLE). Map one with --map phone_number=COLUMN, or use --where to leave them out."
        )
    ]


def test_channel_push_counts_users_without_a_user_id(con):
    info = plan_of(con, {"user_id": ["a", None], "email": ["a@x.com", "b@x.com"]}, channel="push")
    assert info.to_send == 2
    assert info.warnings == [
        (
            "1 of 2 users have no user_id; Courier cannot push them without one (it reports them "
            "UNROUTABLE). Map one with --map user_id=COLUMN, or use --where to leave them out."
        )
    ]
    assert plan_of(con, {"email": ["a@x.com"]}, channel=None).warnings == []
