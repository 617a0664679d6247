"""Overlapping --once-per runs never both send one person; cancel stops exactly what was not
sent yet (#14). Real CLI processes against a real emulator process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import polars as pl
import pytest

from tests.support import EmulatorProcess, bulkbatch

pytestmark = pytest.mark.e2e


def _audience(path: Path, ids: range) -> Path:
    pl.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in ids],
            "email": [f"p{i}@example.com" for i in ids],
        }
    ).write_parquet(path)
    return path


def test_two_overlapping_once_per_runs_accept_each_person_once(tmp_path: Path) -> None:
    first = _audience(tmp_path / "a.parquet", range(6000))
    second = _audience(tmp_path / "b.parquet", range(3000, 9000))
    ledger = tmp_path / "shared-ledger.sqlite"
    with EmulatorProcess() as emu:
        procs = []
        for name, audience in (("a", first), ("b", second)):
            cmd = [sys.executable, "-m", "bulkbatch", "--quiet", "send", str(audience),
                   "--event", "welcome", "--once-per", "welcome-2026", "--once-per-ledger",
                   str(ledger), "--run-dir", name, "--poll-interval", "0.05", "--json"]  # fmt: skip
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
            procs.append(subprocess.Popen(cmd, env=emu.env(), cwd=tmp_path, **pipes))
            time.sleep(0.3)  # the second starts while the first is loading or planning
        outputs = [p.communicate(timeout=240) for p in procs]
        stats = emu.stats()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    a, b = (orjson.loads(out)["counts"] for out, _ in outputs)
    # 9,000 different people, each accepted once, whichever run claimed the overlap
    assert a["ingested"] + b["ingested"] == 9000
    assert a["skipped"] + b["skipped"] == 3000
    assert stats["users_accepted"] == 9000
    assert stats["max_accepted_per_recipient"] == 1


def test_cancel_stops_exactly_the_messages_not_sent_yet(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.parquet", range(300))
    # messages advance one step per 3 reads: unread ones stay ENQUEUED (not sent)
    with EmulatorProcess("--progression", "polls:3") as emu:
        started = bulkbatch(
            "--quiet", "send", str(audience), "--event", "welcome", "--run-dir", "r",
            "--no-wait", "--json", env=emu.env(), cwd=tmp_path,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        # let the job finish its fan-out, then read 40 messages until they are SENT
        auth = {"Authorization": f"Bearer {emu.api_key}"}
        state = orjson.loads((tmp_path / "r" / "state.json").read_bytes())
        job_id = state["jobs"][0]["job_id"]
        for _ in range(3):
            httpx.get(f"{emu.url}/bulk/{job_id}", headers=auth, timeout=10)
        page = httpx.get(f"{emu.url}/bulk/{job_id}/users", headers=auth, timeout=10).json()
        early = [u["messageId"] for u in page["items"][:40]]
        for mid in early:
            for _ in range(9):
                httpx.get(f"{emu.url}/messages/{mid}", headers=auth, timeout=10)
        canceled = bulkbatch("--quiet", "cancel", "r", "--json", env=emu.env(), cwd=tmp_path)
        assert canceled.returncode == 0, canceled.stderr
        info = orjson.loads(canceled.stdout)
        again = bulkbatch("--quiet", "resume", "r", env=emu.env(), cwd=tmp_path)
    assert info["too_late"] == 40 and info["canceled"] == 260 and info["jobs_never_run"] == 0
    results = pl.read_parquet(tmp_path / "r" / "results.parquet")
    assert results.filter(pl.col("outcome") == "canceled").height == 260
    too_late = results.filter(pl.col("cancel") == "too late")
    assert sorted(too_late["message_id"].to_list()) == sorted(early)
    assert again.returncode == 1 and "was canceled" in again.stderr
