"""Webhook receiver benchmark: ack throughput and latency, and outcomes time for 1M events.

1. Receiver: starts ``python -m bulkbatch.webhooks serve --port 0`` (signatures on, a fresh
   store) in one process and a sender in another (this file with ``--sender``): ``--senders``
   keep-alive connections POST ``--events`` pre-signed ``message:updated`` events (4 per
   message, shuffled, 5 % duplicates). The sender speaks HTTP/1.1 on raw asyncio streams, so
   the client is not what is measured (``--client httpx`` for the httpx client). Reports
   events/s (2xx acks over wall time), p50/p99/max ack latency, the receiver's CPU seconds,
   and checks the store holds every acked event.
2. Outcomes: builds a store of ``--outcome-events`` events (default 1M over 250k messages)
   and times :func:`bulkbatch.webhooks.delivery_outcomes` read to the end, and the same
   reader registered in DuckDB and aggregated.

    python bench/bench_webhooks.py [--events 100000] [--senders 16] [--outcome-events 1000000]

Goals on the 2-core dev machine: >= 5,000 events/s with 16 senders; outcomes for 1M events
in a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bulkbatch.webhooks import WebhookEvent, WebhookStore, delivery_outcomes, parse_event, sign

SECRET = "whsec_bench_0123456789"
PATH = "/webhooks/courier"
LIFECYCLES = (
    ("ENQUEUED", "SENT", "DELIVERED", "OPENED"),
    ("ENQUEUED", "SENT", "DELIVERED", "CLICKED"),
    ("ENQUEUED", "SENT", "DELIVERED"),
    ("ENQUEUED", "SENT", "UNDELIVERABLE"),
    ("ENQUEUED", "UNROUTABLE"),
)
STAMP = {"SENT": "sent", "DELIVERED": "delivered", "OPENED": "opened", "CLICKED": "clicked"}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def payloads(n_events: int, seed: int = 0) -> list[dict[str, object]]:
    """``n_events`` message:updated events, about 4 per message, 5 % duplicates, shuffled."""
    rng = random.Random(seed)
    events: list[dict[str, object]] = []
    base = 1_764_000_000_000
    m = 0
    while len(events) < n_events:
        life = LIFECYCLES[m % len(LIFECYCLES)]
        data: dict[str, object] = {
            "id": f"1-{m:08x}-{rng.getrandbits(64):016x}",
            "event": "WELCOME",
            "notification": "WELCOME",
            "recipient": f"user-{m}",
            "recipientId": f"user-{m}",
            "enqueued": base + m,
            "providers": [],
        }
        for i, status in enumerate(life):
            if status in STAMP:
                data[STAMP[status]] = base + m + 1000 * (i + 1)
            current = dict(data, status=status)
            if status in ("UNDELIVERABLE", "UNROUTABLE"):
                current |= {"reason": "BOUNCED", "error": "mailbox unavailable"}
            events.append({"type": "message:updated", "data": current})
            if rng.random() < 0.05:
                events.append({"type": "message:updated", "data": current})
        m += 1
    events = events[:n_events]
    rng.shuffle(events)
    return events


def _requests(n_events: int, host: str) -> list[bytes]:
    out = []
    for payload in payloads(n_events):
        body = orjson.dumps(payload)
        head = (
            f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"courier-signature: {sign(SECRET, body)}\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def _raw_worker(
    host: str, port: int, reqs: list[bytes], lat: list[float], acked: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    for req in reqs:
        t = time.perf_counter()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        lat.append(time.perf_counter() - t)
        if head[9:10] == b"2":
            acked[0] += 1
    writer.close()


async def _httpx_worker(url: str, reqs: list[bytes], lat: list[float], acked: list[int]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        for req in reqs:
            head, body = req.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")[1:]
            headers = dict(line.split(": ", 1) for line in lines if not line.startswith("host"))
            t = time.perf_counter()
            r = await client.post(url + PATH, content=body, headers=headers)
            lat.append(time.perf_counter() - t)
            if r.is_success:
                acked[0] += 1


def sender_main(url: str, n_events: int, senders: int, client: str) -> None:
    """The sender process: prints one JSON object (acked, seconds, latencies)."""
    hostport = url.split("//", 1)[1]
    host, port = hostport.rsplit(":", 1)
    reqs = _requests(n_events, hostport)
    shares = [reqs[i::senders] for i in range(senders)]
    lat: list[float] = []
    acked = [0]

    async def main() -> float:
        t = time.perf_counter()
        if client == "raw":
            jobs = [_raw_worker(host, int(port), s, lat, acked) for s in shares]
        else:
            jobs = [_httpx_worker(url, s, lat, acked) for s in shares]
        await asyncio.gather(*jobs)
        return time.perf_counter() - t

    try:
        import uvloop

        seconds = uvloop.run(main())
    except ImportError:
        seconds = asyncio.run(main())
    lat.sort()
    print(
        orjson.dumps(
            {
                "acked": acked[0],
                "seconds": seconds,
                "p50_ms": 1000 * lat[len(lat) // 2],
                "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
                "max_ms": 1000 * lat[-1],
                "mean_ms": 1000 * statistics.fmean(lat),
            }
        ).decode()
    )


def bench_receiver(
    n_events: int, senders: int, client: str, durability: str, tmp: Path
) -> dict[str, float]:
    store = tmp / f"receiver-{durability}.sqlite"
    env = dict(os.environ, COURIER_WEBHOOK_SECRET=SECRET)
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "bulkbatch.webhooks", "serve", "--store", str(store)),
            *("--port", "0", "--durability", durability),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        cpu0 = _cpu_seconds(server.pid)
        out = subprocess.run(
            [
                *(sys.executable, __file__, "--sender", url, "--events", str(n_events)),
                *("--senders", str(senders), "--client", client),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = _cpu_seconds(server.pid) - cpu0
    finally:
        server.terminate()
        server.wait(timeout=60)
    result: dict[str, float] = orjson.loads(out.stdout)
    with sqlite3.connect(store) as conn:
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    result |= {"stored": stored, "server_cpu_s": cpu}
    return result


def bench_outcomes(n_events: int, tmp: Path) -> dict[str, float]:
    import duckdb

    store_path = tmp / "outcomes.sqlite"
    t = time.perf_counter()
    with WebhookStore(store_path) as store:
        chunk: list[WebhookEvent] = []
        now = int(time.time() * 1000)
        for p in payloads(n_events, seed=1):
            body = orjson.dumps(p)
            chunk.append(parse_event(body, received_at=now, signed_at=now))
            if len(chunk) == 100_000:
                store.insert(chunk)
                chunk = []
        store.insert(chunk)
    build = time.perf_counter() - t
    t = time.perf_counter()
    rows = sum(batch.num_rows for batch in delivery_outcomes(store_path))
    arrow_s = time.perf_counter() - t
    t = time.perf_counter()
    con = duckdb.connect()
    con.register("outcomes", delivery_outcomes(store_path))
    by_status = con.execute(
        "SELECT delivery_status, count(*) FROM outcomes GROUP BY 1 ORDER BY 1"
    ).fetchall()
    duck_s = time.perf_counter() - t
    return {
        "events": n_events,
        "messages": rows,
        "build_s": build,
        "outcomes_s": arrow_s,
        "duckdb_s": duck_s,
        "size_mb": store_path.stat().st_size / 1e6,
        "statuses": len(by_status),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--durability", choices=("fsync", "process", "both"), default="both")
    ap.add_argument("--outcome-events", type=int, default=1_000_000)
    ap.add_argument("--skip-outcomes", action="store_true")
    ap.add_argument("--sender", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sender:
        sender_main(args.sender, args.events, args.senders, args.client)
        return
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as d:
        modes = ("fsync", "process") if args.durability == "both" else (args.durability,)
        print(f"## receiver: {args.events:,} events, {args.senders} senders ({args.client})")
        print(
            "| durability | acked | stored | seconds | events/s | p50 ms | p99 ms | max ms "
            "| server CPU s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in modes:
            r = bench_receiver(args.events, args.senders, args.client, mode, Path(d))
            print(
                f"| {mode} | {r['acked']:,} | {r['stored']:,} | {r['seconds']:.2f} | "
                f"{r['acked'] / r['seconds']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['max_ms']:.1f} | {r['server_cpu_s']:.1f} |"
            )
            if r["stored"] < r["acked"]:
                raise SystemExit("FAIL: fewer events stored than acknowledged")
        if not args.skip_outcomes:
            o = bench_outcomes(args.outcome_events, Path(d))
            print(f"\n## outcomes: {o['events']:,} events")
            print("| messages | build store s | outcomes (Arrow) s | via DuckDB s | store MB |")
            print("|---:|---:|---:|---:|---:|")
            print(
                f"| {o['messages']:,} | {o['build_s']:.1f} | {o['outcomes_s']:.2f} | "
                f"{o['duckdb_s']:.2f} | {o['size_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
