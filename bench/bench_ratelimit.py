"""Benchmark the rate limiter against the emulator's server-side rate limit.

For each R it starts ``python -m bulkbatch.emulator --port 0 --faults rate_limit=R`` and
drives ``CourierClient.add_users`` (one user per call, the real ingest path) from
``--concurrency`` workers for ``--duration`` seconds, twice:

* **told**: the client gets ``--rate R``. Reported: the achieved rate (2xx/s) as a share of R
  and the highest number of requests sent in any 1-second window (must be <= R).
* **unknown**: the client gets no rate and adapts (AIMD from ``start_rate``). Reported: the
  achieved rate as a share of R and the share of requests answered 429.

Aims: told >= 95 % of R with no window above R; unknown >= 85 % of R with <= 2 % 429s.
Send times and statuses are recorded at the transport (every attempt, retries included) and
cross-checked against the emulator's own ``/_emulator/stats``.

Usage::

    .venv/bin/python bench/bench_ratelimit.py --rates 50,200 --duration 30
    .venv/bin/python bench/bench_ratelimit.py --emulator-url http://127.0.0.1:8089 --rates 50

(with ``--emulator-url`` the emulator must already run with ``--faults rate_limit=R`` for the
single R given). Exit status 1 when an aim is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import anyio
import httpx

from bulkbatch.client.courier import CourierClient
from bulkbatch.client.ratelimit import AdaptiveLimiter
from bulkbatch.config import Settings
from bulkbatch.errors import BulkBatchError

READY = "bulkbatch emulator listening on "


class RecordingLimiter(AdaptiveLimiter):
    """Records when each token was granted (where the bucket's bound is proven)."""

    def __init__(self, rate: float | None) -> None:
        super().__init__(rate)
        self.grants: list[float] = []

    async def acquire(self) -> None:
        await super().acquire()
        self.grants.append(time.monotonic())


class RecordingTransport(httpx.AsyncBaseTransport):
    """Records (send time, status or 0 for no answer) of every request that goes out."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[float] = []
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(time.monotonic())
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self.statuses.append(0)
            raise
        self.statuses.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Result:
    mode: str
    server_rate: float
    client_rate: float | None
    duration: float
    requests: int
    ok: int
    throttled: int
    other_errors: int
    achieved_rate: float
    share_of_r: float
    share_429: float
    max_1s_window: int
    max_1s_window_at_limiter: int
    steady_share_of_r: float
    final_client_rate: float
    server_stats: dict[str, object]

    def line(self) -> str:
        told = f"--rate {self.client_rate:g}" if self.client_rate else "no --rate (AIMD)"
        return (
            f"R={self.server_rate:g} {self.mode:7} [{told}]: {self.achieved_rate:7.1f} ok/s = "
            f"{self.share_of_r:6.1%} of R (after 5 s: {self.steady_share_of_r:6.1%}); "
            f"429s {self.throttled}/{self.requests} = {self.share_429:.2%}; "
            f"max in 1 s: {self.max_1s_window} sent, {self.max_1s_window_at_limiter} granted; "
            f"final limiter rate "
            f"{self.final_client_rate:.1f}/s"
        )

    def meets_aim(self) -> bool:
        if self.mode == "told":
            return self.share_of_r >= 0.95 and self.max_1s_window <= self.server_rate
        return self.share_of_r >= 0.85 and self.share_429 <= 0.02


def max_in_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    best = j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


@contextlib.contextmanager
def emulator(rate: float) -> Iterator[str]:
    """Start the emulator with ``rate_limit=rate`` on a free port; yield its URL."""
    cmd = [sys.executable, "-m", "bulkbatch.emulator", "--port", "0", "--faults"]
    cmd.append(f"rate_limit={rate:g}")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(READY):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise SystemExit(f"the emulator did not start ({' '.join(cmd)}):\n{line}{err}")
        yield line[len(READY) :].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def drive(
    url: str,
    server_rate: float,
    client_rate: float | None,
    duration: float,
    concurrency: int,
    op: str = "ingest",
) -> Result:
    async with httpx.AsyncClient(base_url=url) as control:
        with contextlib.suppress(httpx.HTTPError):
            await control.post("/_emulator/reset")
        settings = Settings(
            base_url=url, api_key="bench", rate=client_rate, concurrency=concurrency
        )
        transport = RecordingTransport(
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=concurrency + 4), retries=0
            )
        )
        limiter = RecordingLimiter(client_rate)
        async with CourierClient(settings, transport=transport, limiter=limiter) as client:
            # One job, made before the clock starts (and left out of the counts).
            job_id = await client.create_job({"event": "bench"})
            transport.sent.clear()
            transport.statuses.clear()
            limiter.grants.clear()
            start = time.monotonic()
            end = start + duration
            ok_times: list[float] = []
            failures = 0

            async def worker(n: int) -> None:
                nonlocal failures
                i = 0
                while time.monotonic() < end:
                    i += 1
                    body = b'{"users":[{"recipient":"w%d-%d"}]}' % (n, i)
                    try:
                        if op == "retrieve":
                            await client.retrieve_job(job_id)
                        else:
                            await client.add_users(job_id, body, idempotency_key=f"b:{n}:{i}")
                    except BulkBatchError:
                        failures += 1
                    else:
                        ok_times.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                for n in range(concurrency):
                    tg.start_soon(worker, n)
            elapsed = time.monotonic() - start
            final_rate = client.limiter.current_rate
        stats_response = await control.get("/_emulator/stats")
        server_stats = stats_response.json() if stats_response.status_code == 200 else {}

    statuses = transport.statuses
    ok = sum(1 for s in statuses if 200 <= s < 300)
    throttled = sum(1 for s in statuses if s == 429)
    in_run = [t for t in ok_times if t <= start + duration]
    steady = [t for t in in_run if t >= start + 5.0]
    achieved = len(in_run) / duration
    return Result(
        mode="told" if client_rate else "unknown",
        server_rate=server_rate,
        client_rate=client_rate,
        duration=round(elapsed, 2),
        requests=len(statuses),
        ok=ok,
        throttled=throttled,
        other_errors=len(statuses) - ok - throttled,
        achieved_rate=achieved,
        share_of_r=achieved / server_rate,
        share_429=throttled / max(1, len(statuses)),
        max_1s_window=max_in_window(transport.sent),
        max_1s_window_at_limiter=max_in_window(limiter.grants),
        steady_share_of_r=len(steady) / max(1e-9, duration - 5.0) / server_rate,
        final_client_rate=final_rate,
        server_stats=server_stats,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,200", help="server limits R to test (req/s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--modes", default="told,unknown", help="told, unknown, or both")
    parser.add_argument(
        "--op",
        choices=["ingest", "retrieve"],
        default="ingest",
        help="ingest: add_users, one user a call (the job grows); retrieve: retrieve_job "
        "(server state does not grow, for high R on a small machine)",
    )
    parser.add_argument("--emulator-url", default=None, help="use a running emulator")
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: list[Result] = []
    for rate in rates:
        for mode in modes:
            client_rate = rate if mode == "told" else None
            if args.emulator_url:
                url_cm: contextlib.AbstractContextManager[str] = contextlib.nullcontext(
                    args.emulator_url
                )
            else:
                url_cm = emulator(rate)
            with url_cm as url:
                result = anyio.run(
                    drive, url, rate, client_rate, args.duration, args.concurrency, args.op
                )
            results.append(result)
            print(result.line(), flush=True)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    missed = [r for r in results if not r.meets_aim()]
    for r in missed:
        print(f"MISSED AIM: R={r.server_rate:g} {r.mode}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
