"""The PostgreSQL campaign registry and its leases, and sends through a PostgreSQL
``--once-per`` ledger end to end, against a real server (the ledger's claims themselves:
``test_once_pg.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

import bulkbatch
from bulkbatch.errors import StateError, UsageError
from bulkbatch.registry_pg import make_holder, open_registry
from tests.stages.test_once_pg import owners

pytest_plugins = ["tests.pgserver"]  # a real PostgreSQL server: postgres_url, pg_url


# --------------------------------------------------------------------------- registry and lease

BASE = "https://api.courier.com"


def test_registry_lookup_and_register_round_trip(pg_url: str) -> None:
    registry = open_registry(pg_url)
    assert registry.lookup("camp-a", BASE) is None
    entry = registry.register(
        "camp-a", BASE, event="welcome", run_dir="/srv/runs/a", host="w1", state={"stage": "plan"}
    )
    assert (entry.campaign, entry.event, entry.host, entry.run_dir, entry.state) == (
        "camp-a",
        "welcome",
        "w1",
        "/srv/runs/a",
        {"stage": "plan"},
    )
    assert entry.lease_holder is None and not entry.leased
    assert registry.lookup("camp-a", BASE + "/") == entry  # a trailing slash is the same Courier
    assert registry.lookup("camp-a", "https://api.eu.courier.com") is None
    # the first registration wins unless replaced
    second = registry.register("camp-a", BASE, event="welcome", run_dir="/tmp/b", host="w2")
    assert second.run_dir == "/srv/runs/a" and second.host == "w1"
    moved = registry.register(
        "camp-a", BASE, event="welcome", run_dir="/tmp/b", host="w2", replace=True
    )
    assert (moved.run_dir, moved.host, moved.state) == ("/tmp/b", "w2", {})
    assert open_registry(pg_url).lookup("camp-a", BASE) == moved


def test_a_lease_has_one_live_holder(pg_url: str) -> None:
    registry = open_registry(pg_url)
    with pytest.raises(StateError, match="not registered"):
        registry.acquire_lease("camp-a", BASE, "w1", 30)
    registry.register("camp-a", BASE, event="welcome", run_dir="/r")
    first = registry.acquire_lease("camp-a", BASE, "w1", 30)
    assert first is not None and first.holder == "w1"
    assert registry.acquire_lease("camp-a", BASE, "w2", 30) is None
    assert registry.acquire_lease("camp-a", BASE, "w1", 30) is not None  # the holder again
    entry = registry.lookup("camp-a", BASE)
    assert entry is not None and entry.leased and entry.lease_holder == "w1"
    renewed = registry.renew(first, 60, state={"stage": "send", "ingested": 10})
    assert renewed.until > first.until
    assert registry.lookup("camp-a", BASE).state == {"stage": "send", "ingested": 10}  # type: ignore[union-attr]
    assert registry.release(renewed) is True
    assert registry.release(renewed) is False
    second = registry.acquire_lease("camp-a", BASE, "w2", 30)
    assert second is not None and second.holder == "w2"
    with pytest.raises(StateError, match=r"Lost the lease on campaign camp-a.*held by w2"):
        registry.renew(first, 30)
    with pytest.raises(UsageError, match="lease TTL"):
        registry.acquire_lease("camp-a", BASE, "w3", 0)
    with pytest.raises(UsageError, match="lease TTL"):
        registry.renew(second, float("nan"))


LEASE_CHILD = textwrap.dedent(
    """
    import sys, time
    from bulkbatch.registry_pg import open_registry

    url, holder = sys.argv[1:]
    lease = open_registry(url).acquire_lease("camp-a", "https://api.courier.com", holder, 4.0)
    print("held" if lease else "refused", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_holders_lease_expires_and_another_takes_it(pg_url: str) -> None:
    registry = open_registry(pg_url)
    registry.register("camp-a", BASE, event="welcome", run_dir="/r")
    holder = make_holder()
    proc = subprocess.Popen(
        [sys.executable, "-c", LEASE_CHILD, pg_url, holder],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        assert registry.acquire_lease("camp-a", BASE, "w2", 30) is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert registry.acquire_lease("camp-a", BASE, "w2", 30) is None  # until its TTL ends
        entry = registry.lookup("camp-a", BASE)
        assert entry is not None and entry.lease_holder == holder
        deadline = time.monotonic() + 30
        lease = None
        while lease is None and time.monotonic() < deadline:
            time.sleep(0.2)
            lease = registry.acquire_lease("camp-a", BASE, "w2", 30)
        assert lease is not None and lease.holder == "w2"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- end to end


def write_csv(path: Path, ids: range) -> Path:
    pl.DataFrame(
        {"user_id": [f"u{i:05d}" for i in ids], "email": [f"p{i}@example.com" for i in ids]}
    ).write_csv(path)
    return path


def test_send_twice_through_a_postgresql_ledger_skips_the_shared_people(
    pg_url: str, tmp_path: Path
) -> None:
    monday_csv = write_csv(tmp_path / "monday.csv", range(600))
    tuesday_csv = write_csv(tmp_path / "tuesday.csv", range(400, 1000))
    common = {
        "event": "welcome",
        "emulator": True,
        "once_per": "k",
        "once_per_ledger": pg_url,
        "batch_size": 100,
        "settings": bulkbatch.Settings(poll_interval=0.02, start_rate=2000),
    }
    monday = bulkbatch.send(str(monday_csv), run_dir=tmp_path / "runs" / "monday", **common)  # type: ignore[arg-type]
    tuesday = bulkbatch.send(str(tuesday_csv), run_dir=tmp_path / "runs" / "tuesday", **common)  # type: ignore[arg-type]
    assert monday.summary()["counts"]["ingested"] == 600
    counts = tuesday.summary()["counts"]
    assert (counts["ingested"], counts["skipped"]) == (400, 200)
    assert tuesday.summary()["accounting_ok"] is True
    df = tuesday.read_results()
    skipped = df.filter(pl.col("outcome") == "skipped")
    assert skipped["user_id"].to_list() == [f"u{i:05d}" for i in range(400, 600)]
    reason = f"sent under --once-per k by campaign {monday.campaign} ({monday.path.resolve()})"
    assert skipped["reason"].unique().to_list() == [reason]
    held = owners(pg_url, "k")
    assert len(held) == 1000 and {s for _, s in held.values()} == {"sent"}
    assert {c for c, _ in held.values()} == {monday.campaign, tuesday.campaign}
    state = json.loads((tuesday.path / "state.json").read_text())
    assert state["once_per_ledger"] == pg_url


def test_a_password_in_the_ledger_url_never_reaches_the_run_directory(
    pg_url: str, tmp_path: Path
) -> None:
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@")
    run = bulkbatch.send(
        str(write_csv(tmp_path / "a.csv", range(20))),
        event="welcome",
        emulator=True,
        once_per="k",
        once_per_ledger=url,
        run_dir=tmp_path / "run",
        settings=bulkbatch.Settings(poll_interval=0.02, start_rate=2000),
    )
    assert json.loads((run.path / "state.json").read_text())["once_per_ledger"] == pg_url
    leaked = [p.name for p in run.path.rglob("*") if p.is_file() and b"s3cret-pw" in p.read_bytes()]
    assert leaked == []
