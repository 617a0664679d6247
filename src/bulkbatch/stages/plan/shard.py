"""``--shard I/N``: keep only this shard's rows, so N processes can send one audience.

Which shard a row belongs to is decided by its recipient (the deduplication key), so all rows
of one person — duplicates included — land in one shard and deduplication stays exact:

* a row with a recipient: ``md5_number_lower(recipient) % N`` (MD5, like the job cut: stable
  across DuckDB and bulkbatch versions, so a retried shard on another worker picks the same
  rows);
* a row with no recipient (no address, a CSV line that could not be parsed, a row ``--sql``
  did not select): shard 0, so it is reported exactly once across the shards.

Rows of other shards are removed from ``inputs`` (and the key table) before anything else is
written, so every later stage — rejects, duplicates, the plan, ``results.parquet``, the
accounting — sees only this shard's rows: a shard is a complete run over its part of the
audience, and the shards' results add up to the whole input (``bulkbatch merge`` checks it).

Before removing anything, :func:`apply_shard` takes the whole input's row count and a content
hash of its rows (every column but ``source``, whose paths differ between workers), so merge
can refuse shards of different inputs. DuckDB's ``hash`` is not promised stable across DuckDB
releases: shards of one campaign are expected to run the same bulkbatch and DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from bulkbatch.db import fetch_one, quote_ident

__all__ = ["ShardInfo", "apply_shard"]


@dataclass(frozen=True)
class ShardInfo:
    """This shard, and the whole input it was cut from."""

    index: int
    count: int
    total_input_rows: int
    """Input rows before sharding (all shards together)."""
    input_hash: str
    """Content hash of every input row (order-free), the same in every shard of one input."""
    rows: int
    """Input rows in this shard."""

    def to_dict(self) -> dict[str, int | str]:
        return {
            "index": self.index,
            "count": self.count,
            "total_input_rows": self.total_input_rows,
            "input_hash": self.input_hash,
            "rows": self.rows,
        }


def _input_hash(con: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    columns = [
        quote_ident(str(r[0]))
        for r in con.execute("DESCRIBE inputs").fetchall()
        if r[0] != "source"
    ]
    row = fetch_one(
        con,
        f"SELECT count(*), coalesce(bit_xor(hash({', '.join(columns)})), 0) FROM inputs",
    )
    return int(row[0]), f"{int(row[1]):016x}"


def apply_shard(
    con: duckdb.DuckDBPyConnection, shard: tuple[int, int], selected: str | None
) -> ShardInfo:
    """Remove the rows of other shards from ``inputs`` and ``_bb_keys``.

    :param selected: with ``--sql``, a query of the row numbers it selected (rows it did not
        select have no recipient: shard 0); None without ``--sql``
    """
    index, count = shard
    total, digest = _input_hash(con)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bb_other AS SELECT row_number FROM _bb_keys WHERE "
        f"CASE WHEN recipient IS NULL THEN 0 ELSE md5_number_lower(recipient) % {count} END "
        f"<> {index}"
    )
    if selected is not None and index != 0:
        con.execute(
            "INSERT INTO _bb_other SELECT row_number FROM inputs "
            f"WHERE row_number NOT IN ({selected})"
        )
    con.execute("DELETE FROM _bb_keys WHERE row_number IN (SELECT row_number FROM _bb_other)")
    con.execute("DELETE FROM inputs WHERE row_number IN (SELECT row_number FROM _bb_other)")
    con.execute("DROP TABLE _bb_other")
    rows = int(fetch_one(con, "SELECT count(*) FROM inputs")[0])
    return ShardInfo(index, count, total, digest, rows)
