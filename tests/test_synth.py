"""The synthetic audience generator and the committed sample."""

from __future__ import annotations

from pathlib import Path

import duckdb

from bulkbatch.synth import generate, main, write_sample

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "recipients_sample.csv"


def test_committed_sample_is_reproducible(tmp_path):
    out = write_sample(tmp_path / "s.csv")
    assert out.read_bytes() == SAMPLE.read_bytes()


def test_sample_has_the_cases():
    con = duckdb.connect()
    con.execute(f"CREATE TABLE s AS SELECT * FROM read_csv('{SAMPLE}', all_varchar=true)")

    def one(sql: str) -> int:
        return int(con.execute(sql).fetchall()[0][0])

    assert one("SELECT count(*) FROM s") == 2000
    assert [c[0] for c in con.execute("DESCRIBE s").fetchall()] == [
        "user_id",
        "email",
        "phone_number",
        "locale",
        "data.first_name",
        "data.plan",
        "data.city",
    ]
    assert (
        one(
            "SELECT count(*) FROM (SELECT user_id FROM s WHERE user_id IS NOT NULL "
            "GROUP BY 1 HAVING count(*) > 1)"
        )
        == 8
    )
    assert (
        one(
            "SELECT count(*) FROM (SELECT user_id FROM s WHERE user_id IS NOT NULL "
            "GROUP BY 1 HAVING count(DISTINCT email) > 1)"
        )
        >= 2
    )
    assert (
        one(
            "SELECT count(*) FROM s WHERE user_id IS NULL AND email IS NULL "
            "AND phone_number IS NULL"
        )
        == 6
    )
    assert (
        one(
            "SELECT count(*) FROM s WHERE NOT regexp_full_match(email, "
            "'[^@\\s]+@[^@\\s]+\\.[^@\\s]+')"
        )
        == 3
    )
    assert (
        one(
            "SELECT count(*) FROM s WHERE email IS NULL AND user_id IS NULL "
            "AND phone_number IS NOT NULL"
        )
        == 6
    )
    assert one("SELECT count(*) FROM s WHERE email LIKE '%.invalid'") == 5


def test_generate_parquet_and_csv(tmp_path):
    p = generate(tmp_path / "a.parquet", 20_000, duplicate_rate=0.05, seed=1)
    c = generate(tmp_path / "a.csv", 20_000, fmt="csv", duplicate_rate=0.05, seed=1)
    con = duckdb.connect()
    rows, distinct, no_addr = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), count(*) FILTER (WHERE user_id IS NULL) "
        f"FROM '{p}'"
    ).fetchall()[0]
    assert rows == 20_000
    assert 0.03 * rows < rows - distinct - no_addr < 0.07 * rows
    assert con.execute(
        f"SELECT count(*) FROM (SELECT * FROM '{p}' EXCEPT ALL "
        f"SELECT * FROM read_csv('{c}', all_varchar=true, header=true))"
    ).fetchall() == [(0,)]
    first = con.execute(f"SELECT * FROM '{p}' LIMIT 1").fetchall()[0]
    assert first[0] == "u000000000" and first[1].endswith(("@example.com", "@example.org"))
    again = generate(tmp_path / "b.parquet", 20_000, duplicate_rate=0.05, seed=1)
    assert con.execute(
        f"SELECT count(*) FROM (SELECT * FROM '{p}' EXCEPT ALL SELECT * FROM '{again}')"
    ).fetchall() == [(0,)]
    other = generate(tmp_path / "c.parquet", 20_000, seed=2)
    assert con.execute(
        f"SELECT count(*) FROM (SELECT * FROM '{p}' EXCEPT ALL SELECT * FROM '{other}')"
    ).fetchall() != [(0,)]


def test_cli(tmp_path):
    assert main([str(tmp_path / "x.csv"), "--rows", "100"]) == 0
    assert (tmp_path / "x.csv").read_text().startswith("user_id,email,phone_number,locale,")
