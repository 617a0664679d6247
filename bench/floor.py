"""The floor: the same bytes through loopback HTTP with no tool logic.

    COURIER_BASE_URL=http://127.0.0.1:8089 .venv/bin/python bench/floor.py AUDIENCE [--out OUT]

What it does, and nothing more:

1. **read + encode** — DuckDB reads the file and builds, per row, the same user JSON that
   ``bulkbatch plan`` produces (``recipient``, ``profile.email``/``phone_number``,
   ``to.user_id``/``locale``, ``data`` = the ``data`` JSON merged with the ``data.*`` columns)
   with ``to_json(struct)``, streamed out as Arrow record batches of 1000 rows (a 1 GB DuckDB
   memory limit; the audience is never held in Python);
2. **ingest** — ``POST /bulk`` once, then each batch joined into ``{"users":[...]}`` bytes and
   posted with ``httpx.AsyncClient`` (``content=``, concurrency 8) to ``POST /bulk/{job}``;
3. ``POST /bulk/{job}/run``, then ``GET /bulk/{job}`` until COMPLETED;
4. **page** — ``GET /bulk/{job}/users?cursor=`` sequentially (the API's cursor forces it),
   bodies parsed with orjson, recipient/messageId/status kept in lists;
5. those three columns written to Parquet with pyarrow (when ``--out`` is given).

Not included (this is what "tool logic" means here): no validation or rejects, no client-side
dedupe (duplicates go to the server, which refuses them), no plan file, no run database or
ledger, no idempotency keys, no retries, no rate limiting, no progress, no join of results
back to the input rows. Any non-2xx answer aborts.

The last stdout line is a JSON object with per-stage seconds, for the benchmark runner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

T0 = time.perf_counter()

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

BATCH = 1000


def user_query(path: str) -> str:
    src = path.replace("'", "''")
    reader = "read_csv" if path.endswith(".csv") else "read_parquet"
    return f"""
    SELECT to_json({{
        'recipient': user_id,
        'profile': {{'email': email, 'phone_number': phone_number}},
        'to': {{'user_id': user_id, 'locale': locale}},
        'data': json_merge_patch(
            coalesce(data, '{{}}')::JSON,
            to_json({{'first_name': "data.first_name", 'plan': "data.plan"}})
        )
    }})::VARCHAR AS u
    FROM {reader}('{src}')
    """


async def run(url: str, path: str, out: str | None, concurrency: int) -> dict[str, object]:
    stages: dict[str, float] = {}
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        r = await client.post("/bulk", json={"message": {"event": "welcome"}})
        r.raise_for_status()
        job_id = r.json()["jobId"]

        t = time.perf_counter()
        reader = con.sql(user_query(path)).to_arrow_reader(BATCH)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency * 2)
        sent_users = 0
        encode_s = 0.0

        def next_body() -> bytes | None:
            nonlocal sent_users, encode_s
            t_enc = time.perf_counter()
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return None
            users = batch.column(0).to_pylist()
            sent_users += len(users)
            body = b'{"users":[' + ",".join(users).encode() + b"]}"
            encode_s += time.perf_counter() - t_enc
            return body

        async def produce() -> None:
            while True:
                body = await asyncio.to_thread(next_body)
                await queue.put(body)
                if body is None:
                    for _ in range(concurrency - 1):
                        await queue.put(None)
                    return

        async def worker() -> None:
            while True:
                body = await queue.get()
                if body is None:
                    return
                resp = await client.post(f"/bulk/{job_id}", content=body, headers=headers)
                resp.raise_for_status()

        await asyncio.gather(produce(), *(worker() for _ in range(concurrency)))
        stages["ingest"] = time.perf_counter() - t
        stages["encode_cpu"] = encode_s

        t = time.perf_counter()
        (await client.post(f"/bulk/{job_id}/run")).raise_for_status()
        polls = 0
        while True:
            r = await client.get(f"/bulk/{job_id}")
            r.raise_for_status()
            polls += 1
            job = r.json()["job"]
            if job["status"] in ("COMPLETED", "ERROR"):
                break
            await asyncio.sleep(0.2)
        stages["run_poll"] = time.perf_counter() - t

        t = time.perf_counter()
        recipients: list[str | None] = []
        message_ids: list[str | None] = []
        statuses: list[str | None] = []
        cursor: str | None = None
        pages = 0
        while True:
            r = await client.get(
                f"/bulk/{job_id}/users", params={"cursor": cursor} if cursor else None
            )
            r.raise_for_status()
            page = orjson.loads(r.content)
            pages += 1
            for item in page["items"]:
                recipients.append(item.get("recipient"))
                message_ids.append(item.get("messageId"))
                statuses.append(item.get("status"))
            if not page["paging"]["more"]:
                break
            cursor = page["paging"]["cursor"]
        stages["page"] = time.perf_counter() - t

    t = time.perf_counter()
    if out:
        pq.write_table(
            pa.table({"recipient": recipients, "message_id": message_ids, "status": statuses}),
            out,
        )
    stages["write"] = time.perf_counter() - t
    return {
        "program": "floor",
        "rows": sent_users,
        "job_id": job_id,
        "job_status": job["status"],
        "received": job["received"],
        "listed": len(recipients),
        "pages": pages,
        "polls": polls,
        "stages": {k: round(v, 3) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audience")
    parser.add_argument("--out", default=None, help="write recipient/message_id/status here")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    url = os.environ.get("COURIER_BASE_URL", "http://127.0.0.1:8089")
    result = asyncio.run(run(url, args.audience, args.out, args.concurrency))
    result["total_s"] = round(time.perf_counter() - T0, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
