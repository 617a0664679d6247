"""A campaign shared by workers through the PostgreSQL registry (``--once-per-ledger
postgresql://``): a fresh worker after Courier's idempotency window sends nobody again, and a
worker never sends while another holds the campaign's lease."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pytest

from bulkbatch.registry_pg import open_registry
from tests.support import EmulatorProcess, bulkbatch

pytest_plugins = ["tests.pgserver"]  # a real PostgreSQL server: pg_url

pytestmark = pytest.mark.e2e


def _audience(path: Path) -> Path:
    pl.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(3_000)],
            "email": [f"p{i}@example.com" for i in range(3_000)],
        }
    ).write_parquet(path)
    return path


def _worker(tmp_path: Path, name: str, emu: EmulatorProcess) -> tuple[Path, dict[str, str]]:
    """A fresh worker: its own working directory and data directory (no local registry)."""
    home = tmp_path / name
    home.mkdir()
    env = emu.env()
    env["BULKBATCH_DATA_DIR"] = str(home / "data")
    return home, env


def _send(
    audience: Path, ledger: str, home: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return bulkbatch(
        "--quiet", "send", str(audience), "--event", "welcome", "--run-id", "w-2026-12-01",
        "--once-per", "welcome", "--once-per-ledger", ledger, "--poll-interval", "0.05",
        "--max-job-size", "1000", "--json", env=env, cwd=home,
    )  # fmt: skip


def _first_worker_sends(
    audience: Path, ledger: str, tmp_path: Path, emu: EmulatorProcess
) -> dict[str, Any]:
    """Worker ``a`` sends the whole campaign; its ``--json`` summary."""
    home, env = _worker(tmp_path, "a", emu)
    first = _send(audience, ledger, home, env)
    assert first.returncode == 0, first.stderr
    summary: dict[str, Any] = orjson.loads(first.stdout)
    return summary


def test_a_fresh_worker_after_the_idempotency_window_sends_nobody_again(
    tmp_path: Path, pg_url: str
) -> None:
    audience = _audience(tmp_path / "aud.parquet")
    with EmulatorProcess() as emu:
        summary = _first_worker_sends(audience, pg_url, tmp_path, emu)
        assert summary["counts"]["ingested"] == 3_000 and len(summary["jobs"]) == 3
        # two days later Courier has forgotten the keys; the first worker is gone
        httpx.post(
            f"{emu.url}/_emulator/clock",
            json={"advance_seconds": 2 * 86_400},
            headers={"Authorization": f"Bearer {emu.api_key}"},
        ).raise_for_status()
        shutil.rmtree(summary["run_dir"])
        home, env = _worker(tmp_path, "b", emu)
        again = _send(audience, pg_url, home, env)
        assert again.returncode == 0, again.stderr
        repeat = orjson.loads(again.stdout)
        stats = emu.stats()
    assert repeat["campaign"] == summary["campaign"] and repeat["already_sent"] is True
    assert repeat["counts"] == summary["counts"]
    assert [j["job_id"] for j in repeat["jobs"]] == [j["job_id"] for j in summary["jobs"]]
    assert stats["jobs_created"] == 3 and stats["runs"] == 3
    assert stats["users_accepted"] == 3_000 and stats["max_accepted_per_recipient"] == 1
    entry = open_registry(pg_url).lookup(summary["campaign"], emu.url)
    assert entry is not None and entry.run_dir == repeat["run_dir"]
    assert entry.state["stage"] == "complete" and entry.lease_holder is None


def test_a_worker_does_not_send_while_another_holds_the_campaign(
    tmp_path: Path, pg_url: str
) -> None:
    audience = _audience(tmp_path / "aud.parquet")
    with EmulatorProcess() as emu:
        campaign = _first_worker_sends(audience, pg_url, tmp_path, emu)["campaign"]
        # another machine takes the campaign over and is sending it right now
        registry = open_registry(pg_url)
        registry.register(
            campaign, emu.url, event="welcome", run_dir="/srv/runs/w", host="worker-7",
            state={"stage": "send", "jobs": []}, replace=True,
        )  # fmt: skip
        lease = registry.acquire_lease(campaign, emu.url, "worker-7:4242:abcd", 600)
        assert lease is not None
        before = emu.stats()
        home, env = _worker(tmp_path, "b", emu)
        second = _send(audience, pg_url, home, env)
        after = emu.stats()
        # once that worker lets go, the same command finishes the campaign (nobody again)
        registry.release(lease)
        third = _send(audience, pg_url, home, env)
        final = emu.stats()
    assert second.returncode == 1
    err = second.stderr
    assert f"Campaign {campaign} is being sent by worker-7: /srv/runs/w" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert after["users_accepted"] == before["users_accepted"] == 3_000
    assert after["jobs_created"] == before["jobs_created"]
    assert third.returncode == 0, third.stderr
    assert final["users_accepted"] == 3_000 and final["max_accepted_per_recipient"] == 1
