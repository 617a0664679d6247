"""Chaos: a send through a faulty emulator, SIGKILLed three times and resumed, and a send
that rides out an emulator restart; nothing may be lost or sent twice.

    .venv/bin/python bench/chaos.py      # the same scenario at 1M users, as a Markdown report

``tests/e2e/test_chaos.py`` runs the same code at 20k users and asserts on what it returns;
it lives in the package (``bulkbatch.testing``) so tests and benchmarks share one copy.
The kill moments are random (seeded) but anchored to progress: two at random shares of
the audience accepted, one at a random moment after the job ran, so they land mid-ingest
and mid-tracking even on a loaded machine where start-up alone takes seconds.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bulkbatch.testing.process import EmulatorProcess

FAULTS = "rate_limit=25,error_rate=0.05,drop_rate=0.03,latency_ms=5,seed=13"
API_KEY = "sk_test_chaos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def Server(db: Path, port: int, faults: str, progression: str = "polls:3") -> EmulatorProcess:
    """The chaos emulator: a --db file on a fixed port, so it restarts on the same state."""
    return EmulatorProcess(
        "--faults", faults, "--progression", progression,
        db=db, port=port, api_key=API_KEY, capture_stderr=False,
    )  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def send_args(audience: Path, run_dir: Path) -> list[str]:
    return [
        "send", str(audience), "--event", "welcome", "--run-dir", str(run_dir),
        "--batch-size", "250", "--concurrency", "4", "--poll-interval", "0.05",
        "--json",
    ]  # fmt: skip


def resume_args(run_dir: Path) -> list[str]:
    return ["resume", str(run_dir), "--json"]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkbatch", "--quiet", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def finish(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bulkbatch", "--quiet", *args],
        env=env, capture_output=True, text=True, check=False, timeout=7200,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bulkbatch {args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return orjson.loads(proc.stdout), time.monotonic() - started


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` s after ``ready()`` holds, unless it finished; True if killed."""
    wait_for(lambda: proc.poll() is not None or ready(), 3600)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def run_chaos(
    users: int, workdir: Path, *, seed: int = 2026, faults: str = FAULTS
) -> dict[str, Any]:
    """Three SIGKILLs at random progress-anchored moments, a resume after each, then the end."""
    from bulkbatch.synth import generate

    audience = workdir / "audience.parquet"
    generate(audience, users, fmt="parquet", duplicate_rate=0.02, seed=21)
    run_dir = workdir / "run"
    rng = random.Random(seed)
    server = Server(workdir / "emulator.sqlite", free_port(), faults).start()
    kills: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        env = server.env()
        expected = int(users * 0.97)

        def accepted_share(share: float) -> Callable[[], bool]:
            return lambda: server.stats()["users_accepted"] >= share * expected

        runs_before = [0]  # runs seen at the previous kill

        def another_run() -> bool:
            # a job ran since the last kill (with several jobs, one may have run already)
            return bool(server.stats()["runs"] > runs_before[0])

        moments = [
            ("ingest", accepted_share(rng.uniform(0.05, 0.45))),
            ("ingest", accepted_share(rng.uniform(0.5, 0.95))),
            ("after run", another_run),
        ]
        args = send_args(audience, run_dir)
        for phase, ready in moments:
            proc_started = time.monotonic()
            proc = start(args, env)
            if not kill_when(proc, ready, rng.uniform(0.0, 0.3)):
                break
            st = server.stats()
            runs_before[0] = st["runs"]
            kills.append(
                {
                    "phase": phase,
                    "users_accepted": st["users_accepted"],
                    "runs": st["runs"],
                    "seconds_alive": round(time.monotonic() - proc_started, 2),
                }
            )
            args = resume_args(run_dir)
        summary, last_resume = finish(args, env)
        stats = server.stats()
    finally:
        server.stop()
    return {
        "users": users,
        "kills": kills,
        "last_resume_seconds": round(last_resume, 2),
        "total_seconds": round(time.monotonic() - started, 2),
        "summary": summary,
        "stats": stats,
        "rows": _result_rows(run_dir),
    }


def run_restart(
    users: int, workdir: Path, *, faults: str = "rate_limit=40,seed=5"
) -> dict[str, Any]:
    """Stop the emulator mid-ingest and start it again on the same --db and port."""
    from bulkbatch.synth import generate

    audience = workdir / "audience.parquet"
    generate(audience, users, fmt="parquet", duplicate_rate=0.02, seed=22)
    run_dir = workdir / "run"
    db = workdir / "emulator.sqlite"
    port = free_port()
    server = Server(db, port, faults, progression="polls:2").start()
    started = time.monotonic()
    try:
        env = server.env()
        proc = start(send_args(audience, run_dir), env)
        wait_for(lambda: server.stats()["users_accepted"] >= users // 5, 3600)
        down_at = time.monotonic()
        server.stop()
        accepted_at_stop = _accepted_in_db(db)
        time.sleep(1.5)
        server = Server(db, port, faults, progression="polls:2").start()
        downtime = time.monotonic() - down_at
        code = proc.wait(timeout=7200)
        summary, _ = finish(resume_args(run_dir), env)
        stats = server.stats()
    finally:
        server.stop()
    return {
        "users": users,
        "sender_exit": code,
        "accepted_at_stop": accepted_at_stop,
        "downtime_seconds": round(downtime, 2),
        "total_seconds": round(time.monotonic() - started, 2),
        "summary": summary,
        "stats": stats,
    }


def _accepted_in_db(db: Path) -> int:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM users").fetchone()[0])
    finally:
        con.close()


def _result_rows(run_dir: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "results.parquet", columns=["outcome", "status"])
    counts: dict[str, int] = {"rows": table.num_rows}
    for outcome, status in zip(
        table.column("outcome").to_pylist(), table.column("status").to_pylist(), strict=True
    ):
        key = f"{outcome}/{status}" if outcome == "ingested" else outcome
        counts[key] = counts.get(key, 0) + 1
    return counts


def verdict(report: dict[str, Any]) -> list[str]:
    """What must hold; an empty list means nothing was lost or sent twice."""
    s, c = report["stats"], report["summary"]["counts"]
    problems = []
    if not report["summary"]["accounting_ok"]:
        problems.append("accounting does not add up")
    if c["input_rows"] != c["ingested"] + c["duplicates"] + c["rejected"]:
        problems.append("input rows != ingested + duplicates + rejected")
    jobs = report["summary"]["jobs"]
    if len({j["job_id"] for j in jobs}) != len(jobs):
        problems.append("a job id appears twice in the run")
    if s["jobs_created"] != len(jobs):
        problems.append(f"{s['jobs_created']} jobs created for a run of {len(jobs)}")
    if s["runs"] != len(jobs):
        problems.append(f"{s['runs']} runs for a run of {len(jobs)} jobs")
    if s["users_accepted"] != c["ingested"]:
        problems.append(f"server accepted {s['users_accepted']} but {c['ingested']} ingested")
    if s["max_accepted_per_recipient"] != 1:
        problems.append(f"a recipient was accepted {s['max_accepted_per_recipient']} times")
    return problems
