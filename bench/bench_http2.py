"""HTTP/2 or HTTP/1.1 under bulkbatch's client: CPU per request and wall, against one server.

    .venv/bin/python bench/bench_http2.py [--jobs 16] [--users 10000] [--latency-ms 20]
        [--concurrency 16] [--programs aiohttp-h1,httpx-h2,httpx-h1] [--reps 3]

Issue #19 lists "HTTP/2 where the server offers it — measure" among the levers for CPU per
request. The emulator's own server (uvicorn) speaks HTTP/1.1 only, so here the same emulator
app (:func:`bulkbatch.emulator.app.create_app`, ``--progression immediate``, the latency
fault) is served by hypercorn, which answers HTTP/1.1 and HTTP/2 over cleartext (h2c, prior
knowledge) on one port. ``--jobs`` completed jobs of ``--users`` users each are paged side by
side with tracking's loop (``bench/bench_client.py``'s ``lean``: :class:`CourierClient`,
``list_user_statuses``), once per program:

* ``aiohttp-h1`` — the client as it ships: the bytes over aiohttp, HTTP/1.1, a connection
  per request in flight (:mod:`bulkbatch.client.exchange`);
* ``httpx-h2`` — the same client given ``httpx.AsyncHTTPTransport(http1=False, http2=True)``:
  every request a stream of one HTTP/2 connection (httpcore + the ``h2`` package);
* ``httpx-h1`` — the same client given ``httpx.AsyncHTTPTransport()``: httpx's own HTTP/1.1.

Prints a Markdown table: the protocol every answer came back with (read from httpx's response
extensions; aiohttp's path is HTTP/1.1 by construction), requests, wall, this process's CPU
(``time.process_time``), its CPU per request (median, and the range over ``--reps``), and the
server process's CPU per request. Median of ``--reps`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import anyio
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import _lean, _setup, paging_arguments
from common import log


class _Seen(httpx.AsyncHTTPTransport):
    """httpx's transport, noting the HTTP version of every answer."""

    def __init__(self, *, http1: bool, http2: bool) -> None:
        super().__init__(http1=http1, http2=http2)
        self.versions: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        version = response.extensions.get("http_version", b"?")
        self.versions.add(version.decode() if isinstance(version, bytes) else str(version))
        return response


PROGRAMS: dict[str, Callable[[], _Seen | None]] = {
    "aiohttp-h1": lambda: None,
    "httpx-h2": lambda: _Seen(http1=False, http2=True),
    "httpx-h1": lambda: _Seen(http1=True, http2=False),
}


def _serve(faults: str | None) -> None:
    """The emulator app under hypercorn on a free port; prints the port, serves until SIGTERM."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from bulkbatch.emulator.app import create_app

    app = create_app(progression="immediate", faults=faults)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 60

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(sock.getsockname()[1], flush=True)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    app.state.emulator.start()
    try:
        asyncio.run(run())
    finally:
        app.state.emulator.close()


def _server(faults: str | None, errors: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """The server process and its URL. Its stderr goes to ``errors``, shown only if it does not
    come up: at shutdown, hypercorn logs a traceback for every keep-alive connection open."""
    cmd = [sys.executable, __file__, "--serve", *(["--faults", faults] if faults else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    url = f"http://127.0.0.1:{port.decode()}"
    for _ in range(100):
        if not port:
            break
        try:
            httpx.get(f"{url}/bulk/none", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    errors.seek(0)
    said = errors.read().decode(errors="replace")[-2000:]
    raise SystemExit(f"the hypercorn server did not come up:\n{said}")


def measure(
    program: str, url: str, job_ids: list[str], users: int, concurrency: int, server: psutil.Process
) -> dict[str, float | str]:
    transport = PROGRAMS[program]()
    s0 = sum(server.cpu_times()[:2])
    cpu, wall = time.process_time(), time.perf_counter()
    pages = anyio.run(_lean, url, job_ids, users, concurrency, transport)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_cpu = sum(server.cpu_times()[:2]) - s0
    protocol = "HTTP/1.1" if transport is None else ", ".join(sorted(transport.versions))
    return {
        "protocol": protocol,
        "requests": pages,
        "wall": wall,
        "cpu": cpu,
        "ms": 1000 * cpu / pages,
        "server_ms": 1000 * server_cpu / pages,
    }


def _row(program: str, runs: list[dict[str, float | str]]) -> str:
    med = {k: statistics.median(float(r[k]) for r in runs) for k in runs[0] if k != "protocol"}
    spread = f"{min(float(r['ms']) for r in runs):.2f}–{max(float(r['ms']) for r in runs):.2f}"
    protocols = ", ".join(sorted({str(r["protocol"]) for r in runs}))
    return (
        f"| {program} | {protocols} | {med['requests']:,.0f} | {med['wall']:.2f} | "
        f"{med['cpu']:.2f} | {med['ms']:.2f} ({spread}) | {med['server_ms']:.2f} |"
    )


def main() -> None:
    p = paging_arguments(__doc__, ",".join(PROGRAMS))
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--faults", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        _serve(args.faults)
        return
    import aiohttp  # noqa: F401  # imported before any measurement: no program pays for it

    programs = [s for s in args.programs.split(",") if s]
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        p.error(f"unknown --programs {', '.join(unknown)}; pick from {', '.join(PROGRAMS)}")
    faults = f"latency_ms={args.latency_ms:g}" if args.latency_ms else None
    with tempfile.TemporaryFile() as errors:
        _measure_all(args, programs, *_server(faults, errors))


def _measure_all(
    args: argparse.Namespace, programs: list[str], proc: subprocess.Popen[bytes], url: str
) -> None:
    try:
        job_ids = _setup(url, args.jobs, args.users)
        log(f"{args.jobs} jobs of {args.users} users ready on hypercorn at {url}")
        pages_per_job = -(-args.users // 100)
        print(
            f"{args.jobs} jobs x {args.users:,} users paged side by side (--concurrency "
            f"{args.concurrency}), latency {args.latency_ms:g} ms, one hypercorn server: "
            f"{pages_per_job} sequential pages per job, so >= "
            f"{pages_per_job * args.latency_ms / 1000:.1f} s of wall. Median of {args.reps}."
        )
        print()
        print(
            "| program | protocol | requests | wall s | client CPU s | client CPU ms / request "
            "| server CPU ms / request |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        server = psutil.Process(proc.pid)
        for program in programs:
            runs = [
                measure(program, url, job_ids, args.users, args.concurrency, server)
                for _ in range(args.reps)
            ]
            print(_row(program, runs), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
