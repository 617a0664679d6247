"""Chaos: faults, three SIGKILLs of the sender and an emulator restart; nothing lost, nobody twice.

The scenario lives in ``bulkbatch.testing.chaos`` (one implementation, also behind
``bench/chaos.py``); here it runs at 20k users (``BULKBATCH_CHAOS_USERS`` raises it) and every invariant is asserted. ``make bench``
runs it at 1M and reports how long recovery took.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulkbatch.testing.chaos import run_chaos, run_restart, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USERS = int(os.environ.get("BULKBATCH_CHAOS_USERS", "20000"))


def test_chaos_three_kills_at_random_moments(tmp_path: Path) -> None:
    report = run_chaos(USERS, tmp_path)
    print(report["kills"])
    assert [k["phase"] for k in report["kills"]] == ["ingest", "ingest", "after run"]
    first, second, third = report["kills"]
    assert 0 < first["users_accepted"] < second["users_accepted"]
    assert first["runs"] <= second["runs"] <= third["runs"] and third["runs"] >= 1
    assert verdict(report) == []
    counts = report["summary"]["counts"]
    assert counts["input_rows"] == USERS
    # every input row is in results.parquet, every ingested one ENQUEUED
    assert report["rows"]["rows"] == USERS
    assert report["rows"]["ingested/ENQUEUED"] == counts["ingested"]
    assert report["stats"]["requests_by_status"].get("429", 0) > 0
    assert report["stats"]["requests_by_status"].get("500", 0) > 0
    assert report["stats"]["dropped_connections"] > 0


def test_emulator_restart_mid_ingest(tmp_path: Path) -> None:
    """The server goes away mid-ingest and comes back with its --db: the sender rides it out."""
    report = run_restart(USERS, tmp_path)
    assert report["sender_exit"] == 0
    assert USERS // 5 <= report["accepted_at_stop"] < report["summary"]["counts"]["ingested"]
    assert verdict(report) == []
