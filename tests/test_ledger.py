"""The ledger writer: records are committed in groups, and ``flush`` never waits out the
group's linger (the last page of a job, or its last batch, is on the run's critical path)."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from bulkbatch.ledger import LedgerWriter, PageRecord
from bulkbatch.state import ensure_ledger, open_run_db

LONG = 60.0  # a linger no flush may wait out


def _page(page_no: int, done: bool) -> PageRecord:
    return PageRecord.of(
        0, page_no, [f"u{page_no}"], [f"m{page_no}"], ["ENQUEUED"], next_cursor=None, done=done
    )


@pytest.mark.anyio
@pytest.mark.parametrize("records", [1, 3])
async def test_a_flush_right_after_a_put_does_not_wait_for_the_linger(
    tmp_path: Path, records: int
) -> None:
    """The writer's task has not yet begun its linger when ``flush`` is called right after
    ``put`` (as ``page_users`` does after a job's last page): the flush must still cut it
    short, not wait it out (0.5 s per job at the default linger)."""
    con = open_run_db(tmp_path)
    ensure_ledger(con)
    try:
        async with LedgerWriter(con, linger=LONG) as ledger:
            with anyio.fail_after(LONG / 4):
                for page_no in range(records):
                    await ledger.put(_page(page_no, done=page_no == records - 1))
                await ledger.flush()
            stored = con.execute("SELECT count(*) FROM user_pages").fetchall()[0][0]
            assert stored == records
    finally:
        con.close()


@pytest.mark.anyio
async def test_records_put_without_a_flush_are_committed_together(tmp_path: Path) -> None:
    """Without a flush the writer lingers to gather a group: one commit carries them all."""
    con = open_run_db(tmp_path)
    ensure_ledger(con)
    groups: list[int] = []
    try:
        async with LedgerWriter(con, on_commit=lambda g: groups.append(len(g)), linger=0.3) as led:
            for page_no in range(5):
                await led.put(_page(page_no, done=page_no == 4))
                await anyio.lowlevel.checkpoint()
        assert groups == [5]
    finally:
        con.close()
