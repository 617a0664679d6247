"""``bulkbatch.identity``: the audience fingerprint that campaign ids hash.

The fingerprint must never change for the same audience (a retry after an upgrade would
otherwise send everyone again), so it is checked here against its definition written out in
Python, with no DuckDB in the reference: the user count and, for each half of every user
object's MD5 digest (read little-endian, as DuckDB's ``md5_number_upper`` and
``md5_number_lower`` do), the XOR over all users.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import random

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.identity import AudienceFold, audience_fingerprint, audience_terms_sql


def reference(users: list[str]) -> str:
    digests = [hashlib.md5(u.encode()).digest() for u in users]
    first = functools.reduce(operator.xor, (int.from_bytes(d[:8], "little") for d in digests), 0)
    second = functools.reduce(operator.xor, (int.from_bytes(d[8:], "little") for d in digests), 0)
    return hashlib.sha256(f"{len(users)}:{first}:{second}".encode()).hexdigest()


def _plan(users: list[str]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE plan (row_number BIGINT, user_json VARCHAR)")
    if users:
        con.executemany("INSERT INTO plan VALUES (?, ?)", list(enumerate(users)))
    return con


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), unique=True, max_size=40), st.randoms())
def test_the_fingerprint_is_its_definition_in_any_order(
    users: list[str], rnd: random.Random
) -> None:
    expected = reference(users)
    assert audience_fingerprint(_plan(users)) == expected
    shuffled = list(users)
    rnd.shuffle(shuffled)
    assert audience_fingerprint(_plan(shuffled)) == expected


def test_the_fingerprint_of_a_known_audience() -> None:
    """Two users' fingerprint, computed by the definition before any speed-up of it."""
    users = ['{"recipient":"a"}', '{"recipient":"b","data":{"x":1}}']
    two = "bfb8835ee5e9a4d9e8c76874a7e980ceed278cdad996d03615296d9686a4a77f"
    none = "e8ca2bd51293d64a258fa06d61809d2630efb827bfde97f6fa9209b51bb32ba7"
    assert reference(users) == two and reference([]) == none
    assert audience_fingerprint(_plan(users)) == two
    assert audience_fingerprint(_plan([])) == none
    assert _folded(_plan(users), 1) == two and _folded(_plan([]), 1) == none


def _folded(con: duckdb.DuckDBPyConnection, rows_per_batch: int) -> str:
    """The fingerprint as the plan file's writer takes it: folded batch by batch."""
    fold = AudienceFold()
    reader = con.sql(audience_terms_sql("row_number, user_json")).to_arrow_reader(rows_per_batch)
    for batch in reader:
        half = batch.num_rows // 2  # slices too: columns whose data starts at an offset
        for part in (batch.slice(0, half), batch.slice(half)):
            fold.add(part.column("_bb_h1"), part.column("_bb_h2"))
    return fold.hexdigest()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=40), st.none()), unique=True, max_size=40),
    st.integers(1, 9),
)
def test_the_fingerprint_folded_from_batches_is_the_one_duckdb_computes(
    users: list[str | None], rows_per_batch: int
) -> None:
    """The plan file's scan folds the fingerprint in numpy: the same value for any batching,
    a NULL user (a damaged plan) skipped as DuckDB's bit_xor skips it but counted."""
    con = _plan(users)  # type: ignore[arg-type]
    assert _folded(con, rows_per_batch) == audience_fingerprint(con)
    if None not in users:
        assert _folded(con, rows_per_batch) == reference(users)  # type: ignore[arg-type]
