"""The floor: the same bytes through loopback HTTP with no tool logic.

    COURIER_BASE_URL=http://127.0.0.1:8089 .venv/bin/python bench/floor.py AUDIENCE [--out OUT] [--jobs N]

What it does, and nothing more:

1. **read + encode** — DuckDB reads the file and builds, per row, the same user JSON that
   ``bulkbatch plan`` produces (``recipient``, ``profile.email``/``phone_number``,
   ``to.user_id``/``locale``, ``data`` = the ``data`` JSON merged with the ``data.*`` columns)
   with ``to_json(struct)``, streamed out as Arrow record batches of 1000 rows (a 1 GB DuckDB
   memory limit; the audience is never held in Python);
2. **ingest** — ``POST /bulk`` once per job (``--jobs``, default 1), then each batch joined into
   ``{"users":[...]}`` bytes and posted with ``httpx.AsyncClient`` (``content=``, concurrency 8)
   to ``POST /bulk/{job}``, batch *i* to job *i mod N*;
3. ``POST /bulk/{job}/run`` for every job, then ``GET /bulk/{job}`` until each is COMPLETED;
4. **page** — ``GET /bulk/{job}/users?cursor=``, sequential within a job (the API's cursor
   forces it) and the jobs side by side, bodies parsed with orjson, recipient/messageId/status
   kept;
5. those three columns written to Parquet with pyarrow (when ``--out`` is given), a row group
   per 100,000 users, so memory does not grow with the audience.

``network_cpu_s`` in its report is this process's CPU from the first request to the last page
(steps 2-5, reading and encoding the audience included: the floor does that as it sends).

``--jobs`` exists so that the floor can use the same request pattern as bulkbatch (which cuts
a run into about 4 × ``--concurrency`` jobs and pages them side by side): the comparison then
prices bulkbatch's logic, not its strategy. With one job it is the floor of the pattern the
Courier docs show.

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


class ResultWriter:
    """recipient/message_id/status to Parquet, a row group per ``FLUSH`` users (or nothing)."""

    FLUSH = 100_000
    SCHEMA = pa.schema(
        [("recipient", pa.string()), ("message_id", pa.string()), ("status", pa.string())]
    )

    def __init__(self, out: str | None) -> None:
        self.writer = pq.ParquetWriter(out, self.SCHEMA) if out else None
        self.cols: tuple[list[str | None], ...] = ([], [], [])
        self.listed = 0
        self.write_s = 0.0

    def add(self, items: list[dict[str, str]]) -> None:
        self.listed += len(items)
        if self.writer is None:
            return
        recipients, message_ids, statuses = self.cols
        for item in items:
            recipients.append(item.get("recipient"))
            message_ids.append(item.get("messageId"))
            statuses.append(item.get("status"))
        if len(recipients) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.writer is None or not self.cols[0]:
            return
        t = time.perf_counter()
        names = self.SCHEMA.names
        table = pa.table(dict(zip(names, self.cols, strict=True)), schema=self.SCHEMA)
        self.writer.write_table(table)
        self.cols = ([], [], [])
        self.write_s += time.perf_counter() - t

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()


async def run(
    url: str, path: str, out: str | None, concurrency: int, jobs: int
) -> dict[str, object]:
    stages: dict[str, float] = {}
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    headers = {"content-type": "application/json"}
    conns = max(concurrency, jobs)
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        network_cpu = time.process_time()  # the CPU from the first request to the last page
        job_ids = []
        for _ in range(jobs):
            r = await client.post("/bulk", json={"message": {"event": "welcome"}})
            r.raise_for_status()
            job_ids.append(r.json()["jobId"])

        t = time.perf_counter()
        reader = con.sql(user_query(path)).to_arrow_reader(BATCH)
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=concurrency * 2)
        sent_users = 0
        batches = 0
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
            nonlocal batches
            while True:
                body = await asyncio.to_thread(next_body)
                if body is None:
                    for _ in range(concurrency):
                        await queue.put(None)
                    return
                await queue.put((job_ids[batches % jobs], body))
                batches += 1

        async def worker() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                job_id, body = item
                resp = await client.post(f"/bulk/{job_id}", content=body, headers=headers)
                resp.raise_for_status()

        await asyncio.gather(produce(), *(worker() for _ in range(concurrency)))
        stages["ingest"] = time.perf_counter() - t
        stages["encode_cpu"] = encode_s

        t = time.perf_counter()
        for job_id in job_ids:
            (await client.post(f"/bulk/{job_id}/run")).raise_for_status()
        polls = 0
        received = 0
        statuses: set[str] = set()
        for job_id in job_ids:
            while True:
                r = await client.get(f"/bulk/{job_id}")
                r.raise_for_status()
                polls += 1
                job = r.json()["job"]
                if job["status"] in ("COMPLETED", "ERROR"):
                    statuses.add(job["status"])
                    received += int(job["received"])
                    break
                await asyncio.sleep(0.2)
        stages["run_poll"] = time.perf_counter() - t

        t = time.perf_counter()
        writer = ResultWriter(out)
        pages = 0

        async def pager(job_id: str) -> None:
            nonlocal pages
            cursor: str | None = None
            while True:
                params = {"cursor": cursor} if cursor else None
                r = await client.get(f"/bulk/{job_id}/users", params=params)
                r.raise_for_status()
                page = orjson.loads(r.content)
                pages += 1
                writer.add(page["items"])
                if not page["paging"]["more"]:
                    return
                cursor = page["paging"]["cursor"]

        await asyncio.gather(*(pager(job_id) for job_id in job_ids))
        writer.close()
        # The Parquet writes happen while paging; report them as their own stage.
        stages["page"] = time.perf_counter() - t - writer.write_s
        stages["write"] = writer.write_s
        network_cpu = time.process_time() - network_cpu
    return {
        "program": "floor",
        "rows": sent_users,
        "jobs": jobs,
        "job_ids": job_ids,
        "job_status": ",".join(sorted(statuses)),
        "received": received,
        "listed": writer.listed,
        "pages": pages,
        "polls": polls,
        "stages": {k: round(v, 3) for k, v in stages.items()},
        # reading and encoding the audience included: the floor does it as it sends
        "network_cpu_s": round(network_cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audience")
    parser.add_argument("--out", default=None, help="write recipient/message_id/status here")
    parser.add_argument("--concurrency", type=int, default=8, help="ingest requests in flight")
    parser.add_argument("--jobs", type=int, default=1, help="bulk jobs to spread the users over")
    args = parser.parse_args()
    url = os.environ.get("COURIER_BASE_URL", "http://127.0.0.1:8089")
    result = asyncio.run(run(url, args.audience, args.out, args.concurrency, args.jobs))
    result["total_s"] = round(time.perf_counter() - T0, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
