"""Client CPU per request: bulkbatch's paging loop vs bare httpx, against an emulator process.

    .venv/bin/python bench/bench_client.py [--jobs 16] [--users 10000] [--latency-ms 20]
        [--programs bulkbatch,lean,ledger,httpx,aiohttp] [--reps 3]

Sets up ``--jobs`` completed bulk jobs of ``--users`` users each on a fresh emulator process
(``--progression immediate``, ``--faults latency_ms=N``), then pages every job's
``GET /bulk/{job}/users`` side by side, once per program:

* ``bulkbatch`` — :meth:`CourierClient.list_users` in a loop per job (limiter, retries,
  contract checks, :class:`UsersPaging` bounds), one client for all jobs;
* ``lean`` — the same with :meth:`CourierClient.list_user_statuses`, the typed decoding of
  only recipient, status and messageId that tracking uses;
* ``ledger`` — the lean loop plus every page stored through the one :class:`LedgerWriter` into a
  DuckDB run database, as ``bulkbatch send`` does (:func:`bulkbatch.stages.track.page_users`);
* ``httpx`` — bare ``httpx.AsyncClient.get`` + ``orjson.loads`` per page (the floor's loop);
* ``aiohttp`` — bare ``aiohttp.ClientSession.get`` + ``orjson.loads`` per page: what the HTTP
  under bulkbatch's client costs by itself since it goes over aiohttp
  (:mod:`bulkbatch.client.exchange`).

Prints a Markdown table: requests, wall seconds, process CPU seconds (``time.process_time``:
this process only, not the emulator), CPU ms per request, and the wall a perfect client would
need (pages per job x latency). CPU per request is what the client costs; it does not depend
on the host's load the way wall time does. Median of ``--reps`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulkbatch.client.courier import CourierClient
from bulkbatch.config import Settings
from common import Emulator, log


def _setup(url: str, jobs: int, users: int) -> list[str]:
    """``jobs`` completed jobs of ``users`` users each; their ids."""
    ids = []
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer bench"}) as http:
        for j in range(jobs):
            job_id = http.post("/bulk", json={"message": {"event": "welcome"}}).json()["jobId"]
            for start in range(0, users, 1000):
                body = {
                    "users": [
                        {"recipient": f"u{j}-{i}", "profile": {"email": f"u{j}-{i}@example.com"}}
                        for i in range(start, min(users, start + 1000))
                    ]
                }
                http.post(f"/bulk/{job_id}", content=orjson.dumps(body)).raise_for_status()
            http.post(f"/bulk/{job_id}/run").raise_for_status()
            while http.get(f"/bulk/{job_id}").json()["job"]["status"] != "COMPLETED":
                time.sleep(0.05)
            ids.append(job_id)
    return ids


def _settings(url: str, concurrency: int) -> Settings:
    return Settings(base_url=url, api_key="bench", concurrency=concurrency)


async def _bulkbatch(url: str, job_ids: list[str], users: int, concurrency: int) -> int:
    pages = 0
    async with CourierClient(_settings(url, concurrency)) as client:

        async def one(job_id: str) -> None:
            nonlocal pages
            async for _ in client.iter_users(job_id, received=users):
                pages += 1

        async with anyio.create_task_group() as tg:
            for job_id in job_ids:
                tg.start_soon(one, job_id)
    return pages


async def _lean(
    url: str,
    job_ids: list[str],
    users: int,
    concurrency: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """The page loop tracking runs: ``list_user_statuses`` (typed decoding of the kept fields).
    With a ``transport``, the client's requests go through it instead of over aiohttp
    (``bench/bench_http2.py``)."""
    from bulkbatch.client.paging import UsersPaging

    pages = 0
    async with CourierClient(_settings(url, concurrency), transport=transport) as client:

        async def one(job_id: str) -> None:
            nonlocal pages
            paging, more = UsersPaging(job_id, users), True
            while more:
                page = await client.list_user_statuses(job_id, cursor=paging.cursor)
                more = paging.check_recipients(page.recipients, page.cursor, page.more)
                pages += 1

        async with anyio.create_task_group() as tg:
            for job_id in job_ids:
                tg.start_soon(one, job_id)
    return pages


async def _ledger(url: str, job_ids: list[str], users: int, concurrency: int) -> int:
    import duckdb

    from bulkbatch.ledger import LedgerWriter
    from bulkbatch.stages.track import page_users
    from bulkbatch.state import JobState, RunState, ensure_ledger

    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "run.duckdb"))
        ensure_ledger(con)
        state = RunState(run_dir=Path(tmp), run_id="bench")
        state.jobs = [
            JobState(job_no=n, users=users, job_id=job_id, received=users)
            for n, job_id in enumerate(job_ids)
        ]
        pages = 0
        async with CourierClient(_settings(url, concurrency)) as client, LedgerWriter(con) as w:

            async def one(job: JobState) -> None:
                nonlocal pages
                fetched = await page_users(con, client, state, job, w)
                pages += fetched

            async with anyio.create_task_group() as tg:
                for job in state.jobs:
                    tg.start_soon(one, job)
        con.close()
    return pages


async def _httpx(url: str, job_ids: list[str], users: int, concurrency: int) -> int:
    pages = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def one(job_id: str) -> None:
            nonlocal pages
            cursor = None
            while True:
                params = {"cursor": cursor} if cursor else None
                r = await client.get(f"/bulk/{job_id}/users", params=params)
                r.raise_for_status()
                page = orjson.loads(r.content)
                pages += 1
                if not page["paging"]["more"]:
                    return
                cursor = page["paging"]["cursor"]

        await asyncio.gather(*(one(j) for j in job_ids))
    return pages


async def _aiohttp(url: str, job_ids: list[str], users: int, concurrency: int) -> int:
    import aiohttp

    pages = 0
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def one(job_id: str) -> None:
            nonlocal pages
            cursor = None
            while True:
                params = {"cursor": cursor} if cursor else None
                async with session.get(f"/bulk/{job_id}/users", params=params) as r:
                    r.raise_for_status()
                    page = orjson.loads(await r.read())
                pages += 1
                if not page["paging"]["more"]:
                    return
                cursor = page["paging"]["cursor"]

        await asyncio.gather(*(one(j) for j in job_ids))
    return pages


PROGRAMS: dict[str, Any] = {
    "bulkbatch": _bulkbatch,
    "lean": _lean,
    "ledger": _ledger,
    "httpx": _httpx,
    "aiohttp": _aiohttp,
}


def measure(
    program: str, url: str, job_ids: list[str], users: int, concurrency: int
) -> dict[str, float]:
    fn = PROGRAMS[program]
    cpu, wall = time.process_time(), time.perf_counter()
    pages = anyio.run(fn, url, job_ids, users, concurrency)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"requests": pages, "wall": wall, "cpu": cpu, "ms": 1000 * cpu / pages}


def paging_arguments(doc: str, programs: str) -> argparse.ArgumentParser:
    """The flags of the paging benchmarks (this one and ``bench_http2.py``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--programs", default=programs)
    p.add_argument("--reps", type=int, default=3)
    return p


def main() -> None:
    args = paging_arguments(__doc__, ",".join(PROGRAMS)).parse_args()
    faults = f"latency_ms={args.latency_ms:g}" if args.latency_ms else None
    with Emulator(faults=faults) as emu:
        job_ids = _setup(emu.url, args.jobs, args.users)
        log(f"{args.jobs} jobs of {args.users} users ready")
        pages_per_job = -(-args.users // 100)
        ideal = pages_per_job * args.latency_ms / 1000
        print(
            f"{args.jobs} jobs x {args.users:,} users paged side by side (concurrency "
            f"{args.concurrency}), latency {args.latency_ms:g} ms: {pages_per_job} sequential "
            f"pages per job, so >= {ideal:.1f} s of wall for any client. Median of {args.reps}."
        )
        print()
        print("| program | requests | wall s | client CPU s | CPU ms / request |")
        print("|---|---:|---:|---:|---:|")
        for program in [s for s in args.programs.split(",") if s]:
            runs = [
                measure(program, emu.url, job_ids, args.users, args.concurrency)
                for _ in range(args.reps)
            ]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            spread = f"{min(r['ms'] for r in runs):.2f}–{max(r['ms'] for r in runs):.2f}"
            print(
                f"| {program} | {med['requests']:,.0f} | {med['wall']:.1f} | {med['cpu']:.2f} "
                f"| {med['ms']:.2f} ({spread}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
