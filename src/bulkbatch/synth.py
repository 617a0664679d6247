"""Synthetic audiences: the committed sample and large benchmark inputs.

Two generators:

* :func:`generate` writes a large audience (Parquet or CSV) entirely inside DuckDB:
  ``range(rows)`` plus hash-based fields, written with ``COPY ... TO``. Nothing goes through
  Python rows, so 10M rows take seconds and memory stays flat. Columns: ``user_id``,
  ``email``, ``phone_number``, ``locale``, ``data.first_name``, ``data.plan`` and ``data``
  (a small JSON object as text), about 500 bytes per user once planned.

  * ``duplicate_rate`` of the rows (after the first) repeat an earlier row's ``user_id`` and
    e-mail (the e-mail upper-cased on every other duplicate, to exercise case-insensitive
    comparison).
  * ``no_address_rate`` of the rows have no ``user_id``, ``email`` or ``phone_number``.
  * Everything is a pure function of ``(row index, seed)``: same arguments, same file.

* :func:`write_sample` writes ``data/recipients_sample.csv`` (2,000 rows, fixed seed) with the
  cases the pipeline must handle: duplicate user ids (some with a differently cased e-mail),
  rows with no address, malformed e-mails, phone-only rows, e-mail-only rows and addresses at
  ``.invalid`` domains (the emulator makes them UNDELIVERABLE).

Command line::

    python -m bulkbatch.synth OUT --rows 1000000 [--format parquet|csv] [--duplicate-rate 0.02] [--seed 0]
    python -m bulkbatch.synth --sample data/recipients_sample.csv
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import duckdb

__all__ = ["FIRST_NAMES", "LAST_NAMES", "generate", "main", "write_sample"]

FIRST_NAMES: tuple[str, ...] = (
    "Ada", "Alan", "Amara", "Ana", "Anders", "Aoife", "Arjun", "Beatriz", "Bilal", "Camille",
    "Carlos", "Chen", "Chiara", "Dara", "David", "Elena", "Emeka", "Emma", "Farah", "Felix",
    "Freya", "Grace", "Hana", "Hugo", "Ibrahim", "Ines", "Isaac", "Jana", "Javier", "Jin",
    "Johan", "Kai", "Kavya", "Kenji", "Lara", "Leila", "Liam", "Lucia", "Malik", "Maria",
    "Mateo", "Maya", "Mei", "Mila", "Nadia", "Noah", "Nora", "Olga", "Omar", "Oscar",
    "Priya", "Rafael", "Rosa", "Sami", "Sara", "Sofia", "Tariq", "Theo", "Yara", "Zoe",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Abe", "Adeyemi", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad",
    "Ivanova", "Jensen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Novak", "Okafor",
    "Papadopoulos", "Quinn", "Rossi", "Santos", "Schmidt", "Silva", "Tanaka", "Usman",
    "Varga", "Wang", "Weber", "Yilmaz", "Zhang",
)  # fmt: skip
CITIES: tuple[str, ...] = (
    "Amsterdam", "Austin", "Berlin", "Bogota", "Cape Town", "Dublin", "Lagos", "Lisbon",
    "London", "Madrid", "Melbourne", "Mumbai", "Nairobi", "Osaka", "Paris", "Seoul",
    "Singapore", "Stockholm", "Toronto", "Warsaw",
)  # fmt: skip
LOCALES: tuple[str, ...] = ("en", "en", "en", "fr", "de", "es", "pt", "ja")
PLANS: tuple[str, ...] = ("free", "free", "pro", "team", "enterprise")

SAMPLE_COLUMNS = (
    "user_id",
    "email",
    "phone_number",
    "locale",
    "data.first_name",
    "data.plan",
    "data.city",
)


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _pick(values: Sequence[str], expr: str) -> str:
    return f"{_sql_list(values)}[1 + (({expr}) % {len(values)})::BIGINT]"


def generate(
    path: str | Path,
    rows: int,
    *,
    fmt: Literal["parquet", "csv"] = "parquet",
    duplicate_rate: float = 0.02,
    seed: int = 0,
    no_address_rate: float = 0.0005,
) -> Path:
    """Write ``rows`` synthetic recipients to ``path`` (Parquet or CSV), streamed by DuckDB.

    :returns: the path written
    """
    if rows < 0:
        raise ValueError("rows must be >= 0")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"unknown format {fmt!r}; use 'parquet' or 'csv'")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    dup_per_million = round(duplicate_rate * 1_000_000)
    noaddr_per_million = round(no_address_rate * 1_000_000)
    # h(k) = a 64-bit hash of (row index, seed, k); every field picks from its own hash.
    query = f"""
    WITH base AS (
        SELECT i,
               hash(i, {int(seed)}, 1) AS h1, hash(i, {int(seed)}, 2) AS h2,
               hash(i, {int(seed)}, 3) AS h3, hash(i, {int(seed)}, 4) AS h4,
               hash(i, {int(seed)}, 5) AS h5
        FROM range({int(rows)}) r(i)
    ), keyed AS (
        SELECT i, h2, h3, h4, h5,
               CASE WHEN i > 0 AND h1 % 1000000 < {dup_per_million}
                    THEN h2 % i ELSE i END AS person,
               i > 0 AND h1 % 1000000 < {dup_per_million} AS is_dup,
               (h1 // 1000000) % 1000000 < {noaddr_per_million} AS no_addr
        FROM base
    ), people AS (
        SELECT i, is_dup, no_addr, h3, h4, h5, person,
               hash(person, {int(seed)}, 7) AS p1, hash(person, {int(seed)}, 8) AS p2
        FROM keyed
    )
    SELECT
        CASE WHEN no_addr THEN NULL ELSE 'u' || lpad(person::VARCHAR, 9, '0') END AS user_id,
        CASE WHEN no_addr THEN NULL
             ELSE (CASE WHEN is_dup AND i % 2 = 0 THEN upper(e) ELSE e END) END AS email,
        CASE WHEN no_addr THEN NULL
             ELSE '+1555' || lpad((p2 % 10000000)::VARCHAR, 7, '0') END AS phone_number,
        {_pick(LOCALES, "h3")} AS locale,
        fname AS "data.first_name",
        {_pick(PLANS, "h4")} AS "data.plan",
        to_json({{
            'city': {_pick(CITIES, "h5")},
            'last_name': lname,
            'score': (h5 // 100) % 1000,
            'signup_date': (DATE '2015-01-01' + ((h4 // 7) % 3650)::INTEGER)::VARCHAR,
            'tags': [{_pick(PLANS, "h3 // 11")}, 'newsletter']
        }})::VARCHAR AS data
    FROM (
        SELECT *,
               {_pick(FIRST_NAMES, "p1")} AS fname,
               {_pick(LAST_NAMES, "p2 // 7")} AS lname,
               lower({_pick(FIRST_NAMES, "p1")}) || '.'
                 || lower({_pick(LAST_NAMES, "p2 // 7")})
                 || '.' || person::VARCHAR
                 || CASE WHEN person % 3 = 0 THEN '@example.org' ELSE '@example.com' END AS e
        FROM people
    )
    ORDER BY i
    """
    options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER true"
    con = duckdb.connect()
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute("SET memory_limit = '1GB'")
        target = str(out).replace("'", "''")
        con.execute(f"COPY ({query}) TO '{target}' ({options})")
    finally:
        con.close()
    return out


def sample_rows(seed: int = 20240601, rows: int = 2000) -> list[dict[str, str]]:
    """The rows of the committed sample audience (deterministic for a seed)."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for n in range(1, rows + 1):
        first = rng.choice(FIRST_NAMES)
        last = rng.choice(LAST_NAMES)
        domain = rng.choice(("example.com", "example.com", "example.org"))
        out.append(
            {
                "user_id": f"u{n:05d}",
                "email": f"{first.lower()}.{last.lower()}{n}@{domain}",
                "phone_number": f"+1555{rng.randrange(10_000_000):07d}"
                if rng.random() < 0.6
                else "",
                "locale": rng.choice(LOCALES),
                "data.first_name": first,
                "data.plan": rng.choice(PLANS),
                "data.city": rng.choice(CITIES),
            }
        )
    # Special rows replace regular ones at fixed, spread-out positions.
    picks = rng.sample(range(20, rows), 8 + 6 + 3 + 6 + 3 + 5)
    dup_rows, picks = picks[:8], picks[8:]
    noaddr_rows, picks = picks[:6], picks[6:]
    bad_email_rows, picks = picks[:3], picks[3:]
    phone_only_rows, picks = picks[:6], picks[6:]
    email_only_rows, invalid_rows = picks[:3], picks[3:]
    for k, idx in enumerate(sorted(dup_rows)):
        # repeat an earlier person: same user_id; every other one with a differently cased e-mail
        orig = out[rng.randrange(0, idx)]
        row = out[idx]
        row["user_id"] = orig["user_id"]
        row["email"] = orig["email"].upper() if k % 2 == 0 else orig["email"]
        row["data.first_name"] = orig["data.first_name"]
    for idx in noaddr_rows:
        out[idx].update(user_id="", email="", phone_number="")
    for idx, bad in zip(
        bad_email_rows, ("not-an-email", "jane.doe@", "two@@example.com"), strict=True
    ):
        out[idx]["email"] = bad
    for idx in phone_only_rows:
        out[idx].update(user_id="", email="", phone_number=f"+1 555 {rng.randrange(10**7):07d}")
    for idx in email_only_rows:
        out[idx]["user_id"] = ""
    for idx in invalid_rows:
        first = out[idx]["data.first_name"].lower()
        out[idx]["email"] = f"{first}.bounce{idx}@mailhost.invalid"
    return out


def write_sample(path: str | Path, seed: int = 20240601, rows: int = 2000) -> Path:
    """Write the sample audience CSV (``\\n`` line ends, UTF-8, header row)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sample_rows(seed, rows))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bulkbatch.synth`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bulkbatch.synth", description="Write a synthetic audience."
    )
    parser.add_argument("out", nargs="?", help="output file (.parquet or .csv)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("parquet", "csv"), default=None)
    parser.add_argument("--duplicate-rate", type=float, default=0.02)
    parser.add_argument("--no-address-rate", type=float, default=0.0005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", metavar="OUT", help="write the committed 2,000-row sample CSV")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sample:
        write_sample(args.sample)
        return 0
    if not args.out:
        parser.error("give OUT, or --sample OUT")
    fmt: Literal["parquet", "csv"] = (
        "csv" if (args.format or Path(args.out).suffix.lstrip(".")) == "csv" else "parquet"
    )
    generate(
        args.out,
        args.rows,
        fmt=fmt,
        duplicate_rate=args.duplicate_rate,
        seed=args.seed,
        no_address_rate=args.no_address_rate,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
