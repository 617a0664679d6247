"""Issue #18: real exports load and plan as they come. Each test uses a small committed file
under ``tests/data/exports/`` that mimics one export's shape (see its README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from bulkbatch.errors import UsageError
from bulkbatch.options import flags
from bulkbatch.stages.load import LoadInfo, LoadOptions, load_inputs
from bulkbatch.stages.plan import PlanInfo, PlanOptions, build_plan

EXPORTS = Path(__file__).resolve().parents[1] / "data" / "exports"


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    yield c
    c.close()


def load(con: duckdb.DuckDBPyConnection, name: str, **kw: Any) -> LoadInfo:
    return load_inputs(con, LoadOptions((str(EXPORTS / name),), **kw))


def users(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    rows = con.execute("SELECT user_json FROM plan ORDER BY batch_no, row_number").fetchall()
    return [orjson.loads(r[0]) for r in rows]


def rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str]]:
    return con.execute("SELECT row_number, reason_code, reason FROM rejects ORDER BY 1").fetchall()


def flags_named(text: str) -> set[str]:
    import re

    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))


# ----------------------------------------------------------------- dotted paths (Segment)


def test_struct_paths_map_like_columns(con):
    load(con, "segment_users.parquet")
    info = build_plan(
        con,
        PlanOptions(
            mapping={
                "user_id": "id",
                "email": "traits.email",
                "data.first_name": "traits.first_name",
                "data.city": "traits.address.city",
            }
        ),
    )
    assert info.to_send == 3
    assert users(con) == [
        {
            "recipient": "seg-1",
            "profile": {"email": "ann@example.com"},
            "to": {"user_id": "seg-1"},
            "data": {"first_name": "Ann", "city": "Oslo"},
        },
        {
            "recipient": "seg-2",
            "profile": {"email": "bob@example.com"},
            "to": {"user_id": "seg-2"},
            "data": {"first_name": "Bob"},
        },
        {"recipient": "seg-3", "to": {"user_id": "seg-3"}, "data": {"first_name": "Cy"}},
    ]
    # traits is used (through its paths); the other columns are listed, with how to map one
    assert info.unused_columns == ("anonymous_id", "received_at")
    assert "--map data.anonymous_id=anonymous_id" in info.notes[-1]


def test_unknown_struct_field_is_a_usage_error(con):
    load(con, "segment_users.parquet")
    with pytest.raises(UsageError) as e:
        build_plan(con, PlanOptions(mapping={"user_id": "id", "data.zip": "traits.zip"}))
    assert str(e.value).startswith("Bad --map path (traits.zip): ")


def test_json_text_paths_map_like_columns(con):
    load(con, "crm_properties.csv")
    info = build_plan(
        con,
        PlanOptions(
            mapping={
                "user_id": "contact_id",
                "email": "properties.email",
                "data.city": "properties.address.city",
            }
        ),
    )
    assert info.to_send == 3  # text that is not JSON gives no values, not an error
    assert [u.get("profile", {}).get("email") for u in users(con)] == [
        "dee@example.com",
        "eve@example.com",
        None,
    ]
    assert [u.get("data") for u in users(con)] == [{"city": "Lima"}, None, None]


# --------------------------------------------------------------- CSV types (Mailchimp)


MAILCHIMP_MAP = {"email": "Email Address", "phone_number": "Phone Number"}


def test_csv_types_are_inferred_but_ids_stay_text(con):
    info = load(con, "mailchimp_members.csv")
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE inputs)").fetchall())
    assert types["MEMBER_RATING"] == "BIGINT"
    assert types["LATITUDE"] == "DOUBLE"
    assert types["OPTIN_TIME"] == "TIMESTAMP"
    assert types["GMTOFF"] == "BIGINT"
    for text in ("Zip Code", "LEID", "EUID", "Phone Number", "Email Address", "CONFIRM_IP"):
        assert types[text] == "VARCHAR", text
    assert info.inferred_types["MEMBER_RATING"] == "BIGINT"
    zips = [
        r[0] for r in con.execute('SELECT "Zip Code" FROM inputs ORDER BY row_number').fetchall()
    ]
    assert zips == ["02134", "10001", None, "07030"]


def test_typed_filter_on_csv_just_works(con):
    load(con, "mailchimp_members.csv")
    info = build_plan(con, PlanOptions(mapping=MAILCHIMP_MAP, where="MEMBER_RATING >= 4"))
    assert info.to_send == 2  # 5 and 4; "10" would sort before "4" as text
    assert [u["recipient"] for u in users(con)] == ["email:ann@example.com", "email:cy@example.com"]
    assert "MEMBER_RATING" not in info.unused_columns  # --where reads it


def test_infer_types_can_be_turned_off(con):
    load(con, "mailchimp_members.csv", infer_types=False)
    types = {r[1] for r in con.execute("DESCRIBE inputs").fetchall()}
    assert types == {"BIGINT", "VARCHAR"}  # row_number, and text


def test_unused_columns_and_hint(con):
    load(con, "mailchimp_members.csv")
    info = build_plan(con, PlanOptions(mapping=MAILCHIMP_MAP))
    assert info.unused_columns[:3] == ("First Name", "Last Name", "Address")
    assert "Email Address" not in info.unused_columns
    note = next(n for n in info.notes if "not sent" in n)
    assert note.startswith("21 input column(s) are not sent: First Name, Last Name, Address, ")
    assert note.endswith('To send one, map it, e.g. --map data.first_name="First Name"')
    assert PlanInfo.from_dict(info.to_dict()) == info


def test_phone_numbers_become_e164_when_unambiguous(con):
    load(con, "mailchimp_members.csv")
    info = build_plan(con, PlanOptions(mapping=MAILCHIMP_MAP))
    phones = [u.get("profile", {}).get("phone_number") for u in users(con)]
    assert phones == ["+15550100000", "555-0101", "+442079460958", None]
    assert info.phones_as_given == 1
    assert any(n.startswith("1 phone number(s) are not in international form") for n in info.notes)


# --------------------------------------------------------- report footers (Salesforce)


def test_salesforce_report_footer_lines_are_bad_rows(con):
    info = load(con, "salesforce_report.csv")
    assert info.bad_lines == 5
    plan = build_plan(con, PlanOptions(mapping={"user_id": "Contact ID"}))
    assert (plan.rows_read, plan.to_send, plan.rejected) == (8, 3, 5)
    got = rejects(con)
    assert {code for _, code, _ in got} == {"bad_row"}
    assert got[0][2] == 'line 6 has fewer fields than the header: "Contacts & Accounts report"'
    assert got[-1][2] == 'line 10 has fewer fields than the header: "Acme Corp"'


def test_csv_read_errors_name_only_existing_flags(con, tmp_path):
    from bulkbatch.stages.load import _read_fix

    for kind in ("csv", "parquet", "ndjson"):
        text = _read_fix("boom", kind)
        assert flags_named(text) <= flags(), text


# ------------------------------------------------------------------- encodings (Excel)


@pytest.mark.parametrize("encoding", ["cp1252", "windows-1252", "CP1252"])
def test_cp1252(con, encoding):
    load(con, "excel_cp1252.csv", encoding=encoding)
    notes = con.execute('SELECT "data.note" FROM inputs ORDER BY row_number').fetchall()
    assert notes == [("Price €5 “special”",), ("Café",)]
    source = con.execute("SELECT DISTINCT source FROM inputs").fetchall()
    assert source == [(str((EXPORTS / "excel_cp1252.csv").resolve()),)]


def test_cp1252_read_as_utf8_names_the_flag(con):
    from bulkbatch.errors import InputError

    with pytest.raises(InputError) as e:
        load(con, "excel_cp1252.csv")
    assert "--encoding" in str(e.value)


def test_utf16(con):
    load(con, "excel_utf16.csv", encoding="utf-16")
    assert con.execute('SELECT "data.name" FROM inputs').fetchall() == [("Zoë 李",)]


def test_utf16_le_without_bom_is_transcoded(con, tmp_path):
    f = tmp_path / "le.csv"
    f.write_bytes("user_id,email\nu1,a@x.com\n".encode("utf-16-le"))
    load_inputs(con, LoadOptions((str(f),), encoding="utf-16-le"))
    assert con.execute("SELECT user_id, email FROM inputs").fetchall() == [("u1", "a@x.com")]
    assert list(tmp_path.iterdir()) == [f]  # the UTF-8 copy is gone


def test_bytes_not_in_the_encoding(con, tmp_path):
    from bulkbatch.errors import InputError

    f = tmp_path / "x.csv"
    f.write_bytes(b"user_id\nu\x81\n")  # 0x81 is undefined in cp1252
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(f),), encoding="cp1252"))
    assert str(e.value) == (
        f"Cannot read {f.resolve()}: byte b'\\x81' at offset 9 is not cp1252. Pass the file's "
        "real --encoding, or save it as UTF-8."
    )


# ---------------------------------------------------------------- duplicates, readable


def test_duplicates_parquet_is_written(con, tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("user_id,email,name\nu1,a@x.com,Ann\nu1,b@x.com,Ann B\nu2,c@x.com,Cy\nu1,,A3\n")
    load_inputs(con, LoadOptions((str(f),)))
    info = build_plan(con, PlanOptions(), tmp_path / "run")
    assert info.duplicates == 2
    assert info.duplicates_file == str(tmp_path / "run" / "duplicates.parquet")
    table = pq.read_table(info.duplicates_file)
    assert table.column_names == [
        "row_number",
        "recipient",
        "kept_row_number",
        "source",
        "user_id",
        "email",
        "name",
    ]
    rows = table.select(["row_number", "recipient", "kept_row_number", "name"]).to_pylist()
    assert rows == [
        {"row_number": 2, "recipient": "u1", "kept_row_number": 1, "name": "Ann B"},
        {"row_number": 4, "recipient": "u1", "kept_row_number": 1, "name": "A3"},
    ]
    assert "all duplicates: " + info.duplicates_file in info.render()
