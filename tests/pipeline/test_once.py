"""``--once-per KEY``: a scheduled send never messages the same person twice under a key."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

import bulkbatch

FAST = bulkbatch.Settings(poll_interval=0.02, start_rate=2000)


def audience(ids: range) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in ids],
            "email": [f"person{i}@example.com" for i in ids],
        }
    )


def test_second_run_skips_people_sent_by_the_first(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with bulkbatch.Emulator(progression="immediate") as emu:
        settings = FAST.with_(base_url=emu.url)
        monday = bulkbatch.send(
            audience(range(3000)),
            event="welcome",
            once_per="welcome-2026",
            batch_size=400,
            settings=settings,
            run_dir=runs / "monday",
        )
        # Tuesday's export overlaps Monday's by 1,000 people and has 1,500 new ones.
        tuesday = bulkbatch.send(
            audience(range(2000, 4500)),
            event="welcome",
            once_per="welcome-2026",
            batch_size=400,
            settings=settings,
            run_dir=runs / "tuesday",
        )
        # another campaign key is independent
        other = bulkbatch.send(
            audience(range(2000, 2100)),
            event="promo",
            once_per="promo-june",
            settings=settings,
            run_dir=runs / "promo",
        )
        stats = emu.stats()

    assert monday.summary()["counts"]["ingested"] == 3000
    t = tuesday.summary()["counts"]
    assert t == {
        "input_rows": 2500,
        "ingested": 1500,
        "duplicates": 0,
        "rejected": 0,
        "skipped": 1000,
        "filtered": 0,
        "canceled": 0,
        "unsent": 0,
    }
    assert other.summary()["counts"]["ingested"] == 100
    df = tuesday.read_results()
    skipped = df.filter(pl.col("outcome") == "skipped")
    assert skipped["user_id"].to_list() == [f"u{i:05d}" for i in range(2000, 3000)]
    reason = f"sent under --once-per welcome-2026 by campaign {monday.campaign} "
    assert skipped["reason"].unique().to_list() == [reason + f"({monday.path.resolve()})"]
    assert skipped["message_id"].null_count() == 1000
    sent = df.filter(pl.col("outcome") == "ingested")
    assert sent["user_id"].to_list() == [f"u{i:05d}" for i in range(3000, 4500)]
    assert sent["status"].unique().to_list() == ["ENQUEUED"]
    # nobody was accepted twice across the two welcome runs (promo is another campaign)
    assert stats["users_accepted"] == 3000 + 1500 + 100
    # the ledger lives in the per-user data directory, not beside the working directory
    assert (Path(os.environ["BULKBATCH_DATA_DIR"]) / "once-per.sqlite").exists()
    assert not (runs / "once-per.duckdb").exists()
    # batches were re-cut: contiguous, at most 400, in the order of the input
    plan = tuesday.read_plan()
    assert plan["batch_no"].to_list() == sorted(plan["batch_no"].to_list())
    assert plan.group_by("batch_no").len()["len"].max() == 400
    assert set(plan["batch_no"]) == set(range(4))


def test_everyone_already_sent_means_nothing_to_send(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with bulkbatch.Emulator(progression="immediate") as emu:
        settings = FAST.with_(base_url=emu.url)
        # The identical campaign again would be found and not sent at all; a new instance
        # of it (a new --run-id) under the same key skips everyone instead.
        for name in ("first", "again"):
            run = bulkbatch.send(
                audience(range(50)),
                event="welcome",
                once_per="k",
                run_id=name,
                settings=settings,
                run_dir=runs / name,
            )
        assert emu.stats()["jobs_created"] == 1
    assert run.summary()["counts"]["skipped"] == 50
    assert run.summary()["accounting_ok"] is True
