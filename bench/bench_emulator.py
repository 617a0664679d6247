"""Ingest throughput of the emulator: is it ever the bottleneck of our benchmarks?

Starts ``python -m bulkbatch.emulator --port 0`` in a subprocess, creates a job and pushes
``--users`` users in pre-encoded 1000-user bodies with ``httpx.AsyncClient`` (concurrency
``--concurrency``), then prints a Markdown table row: users, seconds, users/s, the emulator's
CPU seconds and its CPU share of the wall time.

    python bench/bench_emulator.py [--users 200000] [--batch 1000] [--concurrency 6] [--db PATH]

Target: >= 50,000 users/s on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx
import orjson


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _bodies(n_users: int, batch: int) -> list[bytes]:
    bodies = []
    for start in range(0, n_users, batch):
        users = [
            {
                "recipient": f"user-{i:08d}",
                "profile": {"email": f"user{i}@example.com", "phone_number": "+15555550100"},
                "data": {"first_name": f"First{i}", "plan": "pro", "score": i % 97},
            }
            for i in range(start, min(start + batch, n_users))
        ]
        bodies.append(orjson.dumps({"users": users}))
    return bodies


async def _push(url: str, bodies: list[bytes], concurrency: int) -> tuple[str, float]:
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        r = await client.post("/bulk", json={"message": {"event": "bench"}})
        r.raise_for_status()
        job_id = r.json()["jobId"]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                resp = await client.post(f"/bulk/{job_id}", content=body, headers=headers)
                resp.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        total = (await client.get(f"/bulk/{job_id}")).json()["job"]["received"]
        if total != sum(len(orjson.loads(b)["users"]) for b in bodies):
            raise SystemExit(f"emulator received {total} users, expected all of them")
        return job_id, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--db", default=None, help="SQLite file (default: in memory)")
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "bulkbatch.emulator", "--port", "0", "--progression", "immediate"]
    if args.db:
        cmd += ["--db", args.db]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        url = line.rsplit(" ", 1)[-1]
        if not url.startswith("http://"):
            raise SystemExit(f"unexpected emulator output: {line!r}")
        bodies = _bodies(args.users, args.batch)
        cpu0 = _cpu_seconds(proc.pid)
        _job, elapsed = asyncio.run(_push(url, bodies, args.concurrency))
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    rate = args.users / elapsed
    storage = "file" if args.db else "memory"
    print(
        "| users | batch | concurrency | storage | seconds | users/s | emulator CPU s | CPU share |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    print(
        f"| {args.users:,} | {args.batch} | {args.concurrency} | {storage} | {elapsed:.2f} "
        f"| {rate:,.0f} | {cpu:.2f} | {cpu / elapsed:.0%} |"
    )


if __name__ == "__main__":
    main()
