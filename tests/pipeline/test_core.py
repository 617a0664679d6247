"""The pipeline's send: how jobs share the run's write slots, and how many jobs it waits on
and pages at once.

Jobs ingest side by side (up to four lanes), and every POST takes one of ``--concurrency``
write slots. A job may use every slot the others leave free: with a quarter each, a lane
between two jobs (creating the next, reading its first bodies) left its slots idle, and a
1M-person send at 150 ms per request took 14.6-16.0 s instead of 13.3-13.5 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl

import bulkbatch
from bulkbatch.progress import ProgressEvent

FAST = bulkbatch.Settings(poll_interval=0.02, start_rate=2000)


def test_a_lone_job_uses_every_write_slot(tmp_path: Path) -> None:
    # One job of 16 batches, --concurrency 8: two lanes, whose equal shares were 4 each.
    frame = pl.DataFrame(
        {"user_id": [f"u{i}" for i in range(160)], "email": [f"u{i}@x.com" for i in range(160)]}
    )
    with bulkbatch.Emulator(progression="immediate", faults="latency_ms=100") as emu:
        run = bulkbatch.send(
            frame,
            event="welcome",
            settings=FAST.with_(base_url=emu.url, concurrency=8),
            batch_size=10,
            run_dir=tmp_path / "r",
        )
        stats = emu.stats()
    assert run.summary()["accounting_ok"] is True
    assert len(run.job_ids) == 1 and stats["ingest_attempts"] == 16
    assert 4 < stats["most_ingests_in_flight"] <= 8  # never more than --concurrency


def test_every_job_that_has_run_is_waited_on_even_with_more_jobs_than_read_slots(
    tmp_path: Path,
) -> None:
    """--concurrency 1 lets four reads run at once. Eight jobs that have run are all polled
    while none completes: their result pages will queue at the client's read gate, which
    serves the job with the most pages left first. One job per read slot (as before) left
    the other four unpolled until a whole job was paged, and then paged them alone."""
    frame = pl.DataFrame(
        {"user_id": [f"u{i}" for i in range(80)], "email": [f"u{i}@x.com" for i in range(80)]}
    )
    polled: set[int] = set()
    done: dict[str, Any] = {}

    def progress(event: ProgressEvent) -> None:
        if event.stage == "wait":
            polled.add(int(event.extra["job_no"]))

    with bulkbatch.Emulator(progression="seconds:3600") as emu:  # no job completes alone

        def send() -> None:
            done["run"] = bulkbatch.send(
                frame,
                event="welcome",
                settings=FAST.with_(base_url=emu.url, concurrency=1),
                batch_size=10,
                max_job_size=10,
                run_dir=tmp_path / "r",
                progress=progress,
            )

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 30
        while len(polled) < 8 and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        waited_on = len(polled)
        httpx.post(f"{emu.url}/_emulator/clock", json={"advance_seconds": 7200}).raise_for_status()
        sender.join(60)
    assert waited_on == 8
    assert done["run"].summary()["accounting_ok"] is True and len(done["run"].job_ids) == 8
