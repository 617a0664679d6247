"""Chaos: faults, three SIGKILLs of the sender and an emulator restart; nothing lost, nobody twice.

20k users in CI (``BULKBATCH_CHAOS_USERS`` raises it; ``make bench`` runs it at 1M).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from bulkbatch.synth import generate
from tests.support import EmulatorProcess, bulkbatch, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USERS = int(os.environ.get("BULKBATCH_CHAOS_USERS", "20000"))
FAULTS = "rate_limit=60,error_rate=0.05,drop_rate=0.03,latency_ms=5,seed=13"


def send_args(audience: Path, run_dir: Path) -> list[str]:
    return [
        "send", str(audience), "--event", "welcome", "--run-dir", str(run_dir),
        "--batch-size", "250", "--concurrency", "4", "--poll-interval", "0.05",
        "--allow-failures", "--json",
    ]  # fmt: skip


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkbatch", "--quiet", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` holds, unless it finished first.

    Returns True when it was killed. The moments are random, but anchored to the run's
    progress rather than to the clock, so a loaded machine (where start-up alone can take
    seconds) still gets kills mid-ingest and mid-tracking.
    """
    wait_for(lambda: proc.poll() is not None or ready(), 180)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return True


def test_chaos_three_kills_at_random_moments(tmp_path: Path) -> None:
    audience = tmp_path / "audience.parquet"
    generate(audience, USERS, fmt="parquet", duplicate_rate=0.02, seed=21)
    run_dir = tmp_path / "run"
    db = tmp_path / "emulator.sqlite"
    port = free_port()
    rng = random.Random(2026)
    kills = 0

    emu = EmulatorProcess("--faults", FAULTS, "--progression", "polls:3", db=db, port=port).start()
    try:
        env = emu.env()
        args = send_args(audience, run_dir)
        # three SIGKILLs at random moments: twice during ingest (at a random share of the
        # audience accepted), once after the job ran (tracking, paging or results)
        expected = int(USERS * 0.97)
        first, second = rng.uniform(0.05, 0.45), rng.uniform(0.5, 0.95)

        def accepted_share(share: float) -> Callable[[], bool]:
            return lambda: emu.stats()["users_accepted"] >= share * expected

        moments = [
            accepted_share(first),
            accepted_share(second),
            lambda: emu.stats()["runs"] >= 1,
        ]
        for ready in moments:
            proc = start(args, env)
            if not kill_when(proc, ready, rng.uniform(0.0, 0.3)):
                break  # finished before the kill: nothing left to interrupt
            kills += 1
            st = emu.stats()
            print(f"kill {kills}: accepted {st['users_accepted']}, runs {st['runs']}")
            args = ["resume", str(run_dir), "--allow-failures", "--json"]
        final = bulkbatch("--quiet", "resume", str(run_dir), "--allow-failures", "--json", env=env)
        assert final.returncode == 0, final.stderr
        stats = emu.stats()
    finally:
        emu.stop()

    assert kills == 3, "the sender finished before a kill: make the scenario larger"
    summary = orjson.loads(final.stdout)
    counts = summary["counts"]
    assert summary["accounting_ok"] is True
    assert counts["input_rows"] == USERS
    assert counts["input_rows"] == counts["ingested"] + counts["duplicates"] + counts["rejected"]
    # one job, run once, every unique planned user accepted exactly once
    assert stats["jobs_created"] == 1
    assert stats["runs"] == 1
    assert stats["users_accepted"] == counts["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
    results = pq.read_table(
        run_dir / "results.parquet", columns=["outcome", "status", "message_id"]
    )
    outcome = results.column("outcome").to_pylist()
    status = results.column("status").to_pylist()
    assert len(outcome) == USERS
    assert {s for o, s in zip(outcome, status, strict=True) if o == "ingested"} == {"ENQUEUED"}


def test_emulator_restart_mid_ingest(tmp_path: Path) -> None:
    """The server goes away mid-ingest and comes back with its --db: the sender rides it out."""
    audience = tmp_path / "audience.parquet"
    generate(audience, USERS, fmt="parquet", duplicate_rate=0.02, seed=22)
    run_dir = tmp_path / "run"
    db = tmp_path / "emulator.sqlite"
    port = free_port()
    faults = "rate_limit=40,seed=5"
    emu = EmulatorProcess("--faults", faults, db=db, port=port).start()
    try:
        env = emu.env()
        proc = start(send_args(audience, run_dir), env)
        wait_for(lambda: emu.stats()["users_accepted"] >= USERS // 5, 120)
        emu.stop()
        accepted_at_stop = EmulatorProcess.accepted_in_db(db)
        time.sleep(1.5)
        emu = EmulatorProcess("--faults", faults, db=db, port=port).start()
        assert proc.wait(timeout=300) == 0
        final = bulkbatch("--quiet", "resume", str(run_dir), "--allow-failures", "--json", env=env)
        assert final.returncode == 0, final.stderr
        stats = emu.stats()
    finally:
        emu.stop()
    summary = orjson.loads(final.stdout)
    assert USERS // 5 <= accepted_at_stop < summary["counts"]["ingested"], "not mid-ingest"
    assert summary["accounting_ok"] is True
    assert stats["jobs_created"] == 1 and stats["runs"] == 1
    assert stats["users_accepted"] == summary["counts"]["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
