"""Four shards of a 40k audience as separate processes on one Courier; one shard SIGKILLed
and retried by a fresh worker (another working directory, no registry); the merge adds up
and the emulator accepted every person exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest

from bulkbatch.synth import generate
from tests.support import EmulatorProcess, bulkbatch, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 4


def _args(audience: Path, shard: int, *extra: str) -> list[str]:
    return [
        "--quiet", "send", str(audience), "--event", "welcome", "--shard", f"{shard}/{N}",
        "--run-id", "nightly-2026-12-01", "--batch-size", "200", "--poll-interval", "0.1",
        "--json", *extra,
    ]  # fmt: skip


def _worker(emu: EmulatorProcess, home: Path) -> dict[str, str]:
    """A worker's environment: its own data directory (no registry shared with others)."""
    env = emu.env()
    env["BULKBATCH_DATA_DIR"] = str(home / "data")
    return env


def test_shards_with_a_killed_worker_send_everyone_once(tmp_path: Path) -> None:
    audience = tmp_path / "audience.csv"
    generate(audience, 40_000, fmt="csv", duplicate_rate=0.05, seed=20)
    workers = [tmp_path / f"worker{i}" for i in range(N + 1)]
    for w in workers:
        w.mkdir()
    with EmulatorProcess() as emu:
        # shard 2 starts slowly on worker 2 and is SIGKILLed mid-ingest (its retry below runs
        # with the default pace: tuning is not part of the campaign, so the keys are the same)
        slow = _args(audience, 2, "--rate", "20", "--concurrency", "2")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulkbatch", *slow],
            cwd=workers[2],
            env=_worker(emu, workers[2]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: emu.stats()["users_accepted"] >= 2_000, timeout=90)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        killed_at = emu.stats()["users_accepted"]
        # the other shards, side by side, each on its own worker
        others = {
            i: subprocess.Popen(
                [sys.executable, "-m", "bulkbatch", *_args(audience, i)],
                cwd=workers[i],
                env=_worker(emu, workers[i]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in (0, 1, 3)
        }
        summaries = {}
        for i, p in others.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            summaries[i] = orjson.loads(out)
        # the retry lands on a fresh worker: another directory, no run dir, no registry
        retry = bulkbatch(*_args(audience, 2), cwd=workers[N], env=_worker(emu, workers[N]))
        assert retry.returncode == 0, retry.stderr
        summaries[2] = orjson.loads(retry.stdout)
        stats = emu.stats()

    assert 2_000 <= killed_at < summaries[2]["counts"]["ingested"]
    assert summaries[2]["run_dir"].startswith(str(workers[N]))
    # the merge of the four finished shards
    run_dirs = [summaries[i]["run_dir"] for i in range(N)]
    merged = bulkbatch("--quiet", "merge", *run_dirs, "--out", str(tmp_path / "all"), "--json")
    assert merged.returncode == 0, merged.stderr
    info = orjson.loads(merged.stdout)
    c = info["counts"]
    assert info["input_rows"] == 40_000 == c["input_rows"]
    assert c["ingested"] + c["duplicates"] + c["rejected"] + c["filtered"] + c["skipped"] == 40_000
    assert c["duplicates"] > 0
    # nobody twice: every ingested person accepted exactly once, across shards and the retry
    assert stats["users_accepted"] == c["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
    rows = pl.read_parquet(tmp_path / "all" / "**" / "*.parquet", hive_partitioning=True)
    assert rows.height == 40_000 and rows["row_number"].n_unique() == 40_000
    ingested = rows.filter(pl.col("outcome") == "ingested")
    assert ingested["recipient"].n_unique() == ingested.height
