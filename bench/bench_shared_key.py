"""One API key, many workers: how per-process rate limits add up (issue #20).

An account may have a request-rate limit that every process using its API key shares, while
each ``bulkbatch send --shard I/N`` process paces itself with its own limiter. This script
starts an emulator with ``--faults rate_limit=L`` (a 429 with ``Retry-After`` above L
requests/s, over all requests with the key) and sends one synthetic audience of P people:

* **baseline**: 1 process, ``--rate L`` (the whole audience in one campaign);
* **(a) adaptive**: N shard processes at once, no ``--rate`` (each starts at 800/s and adapts
  to 429s on its own, AIMD);
* **(b) divided**: N shards, ``--rate L/N`` each (the account limit divided);
* **(c) whole limit**: N shards, ``--rate L`` each (each thinks it has the whole limit).

Each configuration gets a fresh emulator, fresh run directories and its own
``BULKBATCH_DATA_DIR`` (so the campaign registry of an earlier configuration cannot turn a
send into "campaign already sent"). The shards run as ``python -m bulkbatch --log-format
json send AUD --event welcome --shard i/N --run-dir ... --json`` with ``COURIER_BASE_URL`` and
``COURIER_API_KEY`` from :meth:`EmulatorProcess.env`; stdout (the summary) and stderr (the
JSON progress lines, which carry each limiter's rate during ingest) go to files.

Reported per configuration:

* **wall s**: first process started → last process exited (load and plan included);
* **API s**: the first ``create`` event of any shard → the last ``results`` event (every
  request of the run falls in it);
* **requests**, **429s emu**: the emulator's own counters (``requests``, ``requests_by_status``);
* **429s client**, **retries**: the sums of the shards' ``summary.json`` ``client`` counters
  ``throttled`` and ``retries`` (every attempt after the first, whatever its cause);
* **req/s**, **2xx/s**: requests, and requests not answered 429, per API second;
* **last 429 s**: when the last 429 came, in seconds into the API window (from the shards'
  ``retry`` progress lines);
* **limiter Σ after ingest**: the sum over shards of each limiter's rate at its last ingest
  acknowledgement (progress lines carry the rate only while ingesting, not while paging);
* **once**: every person accepted exactly once: ``max_accepted_per_recipient == 1`` and the
  emulator's ``users_accepted`` equals the sum of the shards' ``ingested``, every process
  exited 0 with ``accounting_ok``.

The emulator's counters are also sampled about once a second (``--sample``): the JSON keeps
that timeline and the table gives the median 2xx/s over the samples of the API window.

Usage::

    .venv/bin/python bench/bench_shared_key.py                  # 100k people, 4 shards, L=100
    .venv/bin/python bench/bench_shared_key.py --quick          # 20k people (a smoke run)
    .venv/bin/python bench/bench_shared_key.py --shards 8 --limit 200 --people 200000

Writes ``bench/out/shared_key-<time>.json`` (``--out-dir``) and prints a Markdown table.
Exit status 1 when any configuration failed a shard or sent someone twice.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bulkbatch.synth import generate
from bulkbatch.testing.process import EmulatorProcess

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
CONFIG_NAMES = ("baseline", "adaptive", "divided", "whole")


@dataclass(frozen=True)
class Config:
    """One way of running the audience: how many processes, and the ``--rate`` of each."""

    name: str
    label: str
    processes: int
    rate: float | None  # --rate per process; None: not given (adaptive)

    def rate_text(self) -> str:
        return "adaptive" if self.rate is None else f"--rate {self.rate:g}"


@dataclass
class Shard:
    """What one process reported: exit code, its summary's numbers, its limiter's rates."""

    index: int
    exit_code: int
    ingested: int = 0
    accounting_ok: bool = False
    client: dict[str, Any] = field(default_factory=dict)
    ingest_rates: list[float] = field(default_factory=list)
    first_create: float | None = None
    results_at: float | None = None
    throttled_at: list[float] = field(default_factory=list)  # epoch seconds of each 429
    max_attempt: int = 0  # the highest attempt number that failed and was reported
    gave_up: int = 0  # retry events with no retry after them
    error: str = ""


@dataclass
class Result:
    """One configuration's measurements (one row of the table)."""

    config: str
    label: str
    processes: int
    rate_per_process: float | None
    wall_s: float
    api_s: float
    emulator_requests: int
    emulator_429: int
    client_requests: int
    client_retries: int
    client_throttled: int
    req_per_s: float
    accepted_per_s: float
    median_accepted_per_s: float | None
    peak_accepted_per_s: float | None
    ingest_rate_sum: float | None
    last_429_s: float | None  # seconds into the API window of the last 429 any shard got
    max_attempt: int
    gave_up: int
    users_accepted: int
    ingested_sum: int
    max_accepted_per_recipient: int
    exactly_once: bool
    all_ok: bool
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    shards: list[dict[str, Any]]
    timeline: list[dict[str, float]]


def configs(shards: int, limit: float, names: Sequence[str]) -> list[Config]:
    """The configurations to run, in table order."""
    every = {
        "baseline": Config("baseline", "1 process, --rate L", 1, limit),
        "adaptive": Config("adaptive", "(a) N shards, no --rate", shards, None),
        "divided": Config("divided", "(b) N shards, --rate L/N", shards, limit / shards),
        "whole": Config("whole", "(c) N shards, --rate L", shards, limit),
    }
    return [every[name] for name in CONFIG_NAMES if name in names]


def send_command(
    audience: Path, run_dir: Path, shard: str | None, rate: float | None, concurrency: int | None
) -> list[str]:
    """The ``bulkbatch send`` command line of one process."""
    cmd = [sys.executable, "-m", "bulkbatch", "--log-format", "json", "send", str(audience)]
    cmd += ["--event", "welcome", "--run-dir", str(run_dir), "--json"]
    if shard is not None:
        cmd += ["--shard", shard]
    if rate is not None:
        cmd += ["--rate", f"{rate:g}"]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency)]
    return cmd


def _events(path: Path) -> list[dict[str, Any]]:
    """The JSON progress lines of one process's stderr (other lines are skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def _read_retry(shard: Shard, event: dict[str, Any]) -> None:
    if event.get("status") == 429:
        shard.throttled_at.append(float(event["ts"]))
    shard.max_attempt = max(shard.max_attempt, int(event.get("attempt", 0)))
    if event.get("will_retry") is False:
        shard.gave_up += 1


def read_shard(index: int, exit_code: int, stdout: Path, stderr: Path) -> Shard:
    """One process's summary (stdout) and progress (stderr), read after it exited."""
    shard = Shard(index, exit_code)
    events = _events(stderr)
    for event in events:
        stage = event.get("stage")
        if stage == "create" and shard.first_create is None:
            shard.first_create = float(event["ts"])
        elif stage == "ingest" and "rate" in event:
            shard.ingest_rates.append(float(event["rate"]))
        elif stage == "results" and shard.results_at is None:
            shard.results_at = float(event["ts"])
        elif stage == "retry":
            _read_retry(shard, event)
    errors = [str(e.get("message", "")) for e in events if e.get("level") == "error"]
    text = stdout.read_text(errors="replace")
    try:
        summary = json.loads(text)
    except ValueError:
        tail = stderr.read_text(errors="replace").strip().splitlines()[-3:]
        shard.error = "; ".join(errors) or " | ".join(tail) or f"no summary on stdout: {text!r}"
        return shard
    shard.ingested = int(summary.get("counts", {}).get("ingested", 0))
    shard.accounting_ok = bool(summary.get("accounting_ok"))
    shard.client = dict(summary.get("client") or {})
    if exit_code != 0 or not shard.accounting_ok:
        shard.error = "; ".join(errors) or f"exit {exit_code}, problems {summary.get('problems')}"
    return shard


def _sample(emu: EmulatorProcess, started: float) -> dict[str, float]:
    stats = emu.stats()
    throttled = int(stats["requests_by_status"].get("429", 0))
    return {
        "t": round(time.monotonic() - started, 3),
        "wall": time.time(),
        "requests": int(stats["requests"]),
        "throttled": throttled,
    }


def _wait(
    procs: list[subprocess.Popen[bytes]],
    emu: EmulatorProcess,
    started: float,
    sample_s: float,
    timeout: float,
) -> list[dict[str, float]]:
    """Wait for every process, sampling the emulator's counters; kill them all on timeout."""
    timeline: list[dict[str, float]] = []
    deadline = started + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
            break
        with contextlib.suppress(OSError, ValueError):
            timeline.append(_sample(emu, started))
        time.sleep(sample_s)
    return timeline


def _rates(timeline: list[dict[str, float]], start: float, end: float) -> list[float]:
    """2xx/s between consecutive samples whose interval lies inside ``[start, end]``."""
    out = []
    for a, b in itertools.pairwise(timeline):
        if a["wall"] >= start and b["wall"] <= end and b["t"] > a["t"]:
            accepted = (b["requests"] - b["throttled"]) - (a["requests"] - a["throttled"])
            out.append(accepted / (b["t"] - a["t"]))
    return out


def run_config(cfg: Config, audience: Path, work: Path, args: argparse.Namespace) -> Result:
    """Run one configuration against a fresh emulator and measure it."""
    root = work / cfg.name
    root.mkdir()
    load_before = os.getloadavg()
    with EmulatorProcess("--faults", f"rate_limit={args.limit:g}", capture_stderr=False) as emu:
        env = emu.env()
        env["BULKBATCH_DATA_DIR"] = str(root / "data")
        procs, files = [], []
        started = time.monotonic()
        for i in range(cfg.processes):
            shard = f"{i}/{cfg.processes}" if cfg.processes > 1 else None
            cmd = send_command(audience, root / f"run{i}", shard, cfg.rate, args.concurrency)
            out, err = root / f"stdout{i}.json", root / f"stderr{i}.jsonl"
            with out.open("wb") as fo, err.open("wb") as fe:
                procs.append(subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, cwd=root))
            files.append((out, err))
        timeline = _wait(procs, emu, started, args.sample, args.timeout)
        wall = time.monotonic() - started
        stats = emu.stats()
    shards = [
        read_shard(i, p.returncode, out, err)
        for i, (p, (out, err)) in enumerate(zip(procs, files, strict=True))
    ]
    return summarize(cfg, wall, stats, shards, timeline, load_before)


def summarize(
    cfg: Config,
    wall: float,
    stats: dict[str, Any],
    shards: list[Shard],
    timeline: list[dict[str, float]],
    load_before: tuple[float, float, float],
) -> Result:
    """Combine the emulator's counters and the shards' reports into one :class:`Result`."""
    creates = [s.first_create for s in shards if s.first_create is not None]
    ends = [s.results_at for s in shards if s.results_at is not None]
    api_start, api_end = (min(creates), max(ends)) if creates and ends else (0.0, 0.0)
    api_s = max(api_end - api_start, 1e-9)
    requests = int(stats["requests"])
    throttled = int(stats["requests_by_status"].get("429", 0))
    rates = _rates(timeline, api_start, api_end)
    final_rates = [s.ingest_rates[-1] for s in shards if s.ingest_rates]
    throttled_at = [t for s in shards for t in s.throttled_at]
    ingested = sum(s.ingested for s in shards)
    max_per = int(stats["max_accepted_per_recipient"])
    once = max_per == 1 and int(stats["users_accepted"]) == ingested
    ok = once and all(s.exit_code == 0 and s.accounting_ok for s in shards)
    return Result(
        config=cfg.name,
        label=cfg.label,
        processes=cfg.processes,
        rate_per_process=cfg.rate,
        wall_s=round(wall, 2),
        api_s=round(api_s, 2),
        emulator_requests=requests,
        emulator_429=throttled,
        client_requests=sum(int(s.client.get("requests", 0)) for s in shards),
        client_retries=sum(int(s.client.get("retries", 0)) for s in shards),
        client_throttled=sum(int(s.client.get("throttled", 0)) for s in shards),
        req_per_s=round(requests / api_s, 1),
        accepted_per_s=round((requests - throttled) / api_s, 1),
        median_accepted_per_s=round(statistics.median(rates), 1) if rates else None,
        peak_accepted_per_s=round(max(rates), 1) if rates else None,
        ingest_rate_sum=round(sum(final_rates), 1) if final_rates else None,
        last_429_s=round(max(throttled_at) - api_start, 1) if throttled_at else None,
        max_attempt=max(s.max_attempt for s in shards),
        gave_up=sum(s.gave_up for s in shards),
        users_accepted=int(stats["users_accepted"]),
        ingested_sum=ingested,
        max_accepted_per_recipient=max_per,
        exactly_once=once,
        all_ok=ok,
        load_before=load_before,
        load_after=os.getloadavg(),
        shards=[asdict(s) for s in shards],
        timeline=[{**x, "api_t": round(x["wall"] - api_start, 3)} for x in timeline],
    )


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(results: Sequence[Result], limit: float) -> str:
    """The Markdown table, one row per configuration."""
    head = (
        "| configuration | procs × rate | wall s | API s | requests | 429s emu/client | retries "
        "| req/s | 2xx/s | 2xx/s % of L | median 2xx/s | last 429 s | limiter Σ after ingest "
        "| once | load 1m |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in results:
        rate = "adaptive" if r.rate_per_process is None else f"{r.rate_per_process:g}"
        once = "yes" if r.all_ok else ("yes (a shard failed)" if r.exactly_once else "**NO**")
        cells = [
            r.label,
            f"{r.processes} × {rate}",
            _num(r.wall_s, 1),
            _num(r.api_s, 1),
            _num(r.emulator_requests),
            f"{r.emulator_429:,} / {r.client_throttled:,}",
            _num(r.client_retries),
            _num(r.req_per_s, 1),
            _num(r.accepted_per_s, 1),
            f"{100 * r.accepted_per_s / limit:.0f} %",
            _num(r.median_accepted_per_s, 1),
            _num(r.last_429_s, 1),
            _num(r.ingest_rate_sum, 1),
            once,
            f"{r.load_before[0]:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timelines(results: Sequence[Result]) -> str:
    """Per configuration, the emulator's 2xx/s (and 429s) between samples in the API window."""
    lines = []
    for r in results:
        cells = []
        for a, b in itertools.pairwise(r.timeline):
            if b["api_t"] < 0 or a["api_t"] > r.api_s or b["t"] <= a["t"]:
                continue
            throttled = int(b["throttled"] - a["throttled"])
            accepted = (b["requests"] - b["throttled"]) - (a["requests"] - a["throttled"])
            rate = f"{accepted / (b['t'] - a['t']):.0f}"
            cells.append(f"{rate}({throttled})" if throttled else rate)
        lines.append(f"- {r.config}: " + " ".join(cells))
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="N shard processes sharing one API key against an emulator rate limit."
    )
    parser.add_argument("--people", type=int, default=None, help="audience rows (default 100000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 people")
    parser.add_argument("--shards", type=int, default=4, help="N processes (default 4)")
    parser.add_argument("--limit", type=float, default=100.0, help="L, the emulator's req/s")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--concurrency", type=int, default=None, help="--concurrency per process")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIG_NAMES),
        help=f"comma-separated subset of {', '.join(CONFIG_NAMES)}",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between stats samples")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.people is None:
        args.people = 20_000 if args.quick else 100_000
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIG_NAMES))
    if unknown or not names:
        parser.error(f"--configs {args.configs!r}: use a comma-separated subset of {CONFIG_NAMES}")
    args.config_names = names
    if args.people < 1 or args.shards < 1 or not args.limit > 0:
        parser.error("--people and --shards must be at least 1 and --limit above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "bench/bench_shared_key.py " + " ".join(argv if argv is not None else sys.argv[1:])
    up_before = _uptime()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-shared-key-") as tmp:
        work = Path(tmp)
        audience = generate(work / f"audience.{args.format}", args.people, fmt=args.format)
        for cfg in configs(args.shards, args.limit, args.config_names):
            print(f"[shared-key] {cfg.name}: {cfg.processes} × {cfg.rate_text()}", file=sys.stderr)
            results.append(run_config(cfg, audience, work, args))
    up_after = _uptime()
    text = table(results, args.limit)
    print(f"`{command.strip()}`: {args.people:,} people, N={args.shards}, L={args.limit:g} req/s\n")
    print(text)
    print(f"\n2xx/s per ~{args.sample:g} s sample over the API window, (429s) when any:\n")
    print(timelines(results))
    print(f"\nuptime before: {up_before}\nuptime after:  {up_after}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"shared_key-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = {
        "command": command.strip(),
        "people": args.people,
        "shards": args.shards,
        "limit": args.limit,
        "format": args.format,
        "concurrency": args.concurrency,
        "uptime_before": up_before,
        "uptime_after": up_after,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {path}")
    failed = [r.config for r in results if not r.all_ok]
    if failed:
        print(f"FAILED (a shard failed or someone was sent twice): {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
