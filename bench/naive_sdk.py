"""The naive baseline: what a competent user writes from Courier's docs with the official SDK.

    COURIER_BASE_URL=http://127.0.0.1:8089 COURIER_API_KEY=x \\
        .venv/bin/python bench/naive_sdk.py AUDIENCE.parquet OUT.parquet [--event welcome]

Straight from the ``trycourier`` README and the Bulk API tutorial, nothing clever:

1. read the file with pandas (``read_parquet`` / ``read_csv``) into a DataFrame;
2. build one user dict per row in Python (``recipient``, ``profile.email``,
   ``profile.phone_number``, ``to.user_id``, ``to.locale``, ``data`` = the row's ``data``
   JSON merged with its ``data.*`` columns);
3. ``client.bulk.create_job(message={"event": ...})``;
4. ``client.bulk.add_users(job_id, users=batch)`` for 1000-user batches, sequentially;
5. ``client.bulk.run_job(job_id)``; poll ``client.bulk.retrieve_job`` until COMPLETED;
6. page ``client.bulk.list_users(job_id, cursor=...)`` until ``paging.more`` is false;
7. write ``recipient, message_id, status`` of every item to Parquet with pyarrow.

No dedupe beyond what the server does (it answers "Duplicate user" for repeats, which the SDK
discards), no idempotency keys, the SDK's default retries. ``--max-rows N`` processes only the
first N rows (the benchmark extrapolates from such a prefix and says so).

The last stdout line is a JSON object with per-stage seconds, for the benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

T0 = time.perf_counter()

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from courier import Courier

T_IMPORT = time.perf_counter() - T0


def _clean(value: object) -> object:
    """pandas gives NaN/None for missing cells; the API wants null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def build_users(df: pd.DataFrame) -> list[dict[str, object]]:
    data_cols = [c for c in df.columns if c.startswith("data.")]
    users: list[dict[str, object]] = []
    for row in df.to_dict("records"):
        data = json.loads(row["data"]) if _clean(row.get("data")) else {}
        for col in data_cols:
            data[col.removeprefix("data.")] = _clean(row[col])
        user_id = _clean(row.get("user_id"))
        users.append(
            {
                "recipient": user_id,
                "profile": {
                    "email": _clean(row.get("email")),
                    "phone_number": _clean(row.get("phone_number")),
                },
                "to": {"user_id": user_id, "locale": _clean(row.get("locale"))},
                "data": data,
            }
        )
    return users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audience")
    parser.add_argument("out")
    parser.add_argument("--event", default="welcome")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--max-rows", type=int, default=None, help="only the first N rows")
    args = parser.parse_args()
    stages: dict[str, float] = {"import": T_IMPORT}

    client = Courier(
        base_url=os.environ.get("COURIER_BASE_URL", "https://api.courier.com"),
        api_key=os.environ["COURIER_API_KEY"],
    )

    t = time.perf_counter()
    if args.audience.endswith(".csv"):
        df = pd.read_csv(args.audience, dtype=str, nrows=args.max_rows)
    else:
        df = pd.read_parquet(args.audience)
        if args.max_rows is not None:
            df = df.head(args.max_rows)
    stages["read"] = time.perf_counter() - t

    t = time.perf_counter()
    users = build_users(df)
    del df
    stages["build"] = time.perf_counter() - t

    t = time.perf_counter()
    job_id = client.bulk.create_job(message={"event": args.event}).job_id
    stages["create"] = time.perf_counter() - t

    t = time.perf_counter()
    for start in range(0, len(users), args.batch_size):
        client.bulk.add_users(job_id, users=users[start : start + args.batch_size])  # type: ignore[arg-type]
    stages["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    client.bulk.run_job(job_id)
    polls = 0
    while True:
        job = client.bulk.retrieve_job(job_id).job
        polls += 1
        if job.status in ("COMPLETED", "ERROR"):
            break
        time.sleep(args.poll_interval)
    stages["run_poll"] = time.perf_counter() - t

    t = time.perf_counter()
    recipients: list[str | None] = []
    message_ids: list[str | None] = []
    statuses: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = (
            client.bulk.list_users(job_id, cursor=cursor)
            if cursor
            else (client.bulk.list_users(job_id))
        )
        pages += 1
        for item in page.items:
            recipients.append(item.recipient)
            message_ids.append(item.message_id)
            statuses.append(item.status)
        if not page.paging.more:
            break
        cursor = page.paging.cursor
    stages["page"] = time.perf_counter() - t

    t = time.perf_counter()
    table = pa.table({"recipient": recipients, "message_id": message_ids, "status": statuses})
    pq.write_table(table, args.out)
    stages["write"] = time.perf_counter() - t

    print(
        json.dumps(
            {
                "program": "naive_sdk",
                "rows": len(users),
                "job_id": job_id,
                "job_status": job.status,
                "received": job.received,
                "listed": len(recipients),
                "pages": pages,
                "polls": polls,
                "stages": {k: round(v, 3) for k, v in stages.items()},
                "total_s": round(time.perf_counter() - T0, 3),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
