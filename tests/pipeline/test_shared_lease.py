"""The campaign lease is a promise with a deadline: a worker that cannot renew it in time
stops sending before it runs out, however the renewal is held up.

Against a real PostgreSQL server. The renewal is held up the way a busy database holds it:
another transaction keeps the campaign's row locked (``SELECT ... FOR UPDATE``), so the
renewal's UPDATE waits (up to the ledger's lock timeout, longer than the lease). A renewal
that raises is the old, easy case; a renewal that neither succeeds nor fails is the one
that let a worker keep sending after its lease had run out, beside the retry that took it.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import psycopg
import pytest

from bulkbatch.errors import StateError
from bulkbatch.pipeline import shared
from bulkbatch.pipeline.shared import SharedCampaign
from bulkbatch.state import RunState

pytest_plugins = ["tests.pgserver"]  # a real PostgreSQL server: pg_url

BASE_URL = "https://api.courier.com"
TTL = 3.0  # seconds; renewed every 1 s


@pytest.fixture
def campaign(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SharedCampaign:
    monkeypatch.setattr(shared, "LEASE_TTL", TTL)
    state = RunState(run_dir=tmp_path, run_id="r", campaign="c-lease", message={"event": "e"})
    state.save()
    return SharedCampaign(pg_url, state, BASE_URL)


def lease_until(pg_url: str) -> float:
    """The lease's end as a UNIX time, by the database's clock (this machine's)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM lease_until) FROM bulkbatch_campaigns WHERE campaign = %s",
            ["c-lease"],
        ).fetchone()
    assert row and row[0] is not None
    return float(row[0])


def test_a_held_up_renewal_stops_the_sender_before_its_lease_runs_out(
    campaign: SharedCampaign, pg_url: str
) -> None:
    sending_until: list[float] = []
    lease_end: list[float] = []
    blocker: list[psycopg.Connection[tuple[object, ...]]] = []

    async def send_while_holding() -> None:
        async with campaign.holding():
            lease_end.append(lease_until(pg_url))  # nobody renews it from here on
            conn = psycopg.connect(pg_url)  # a transaction that keeps the row locked
            conn.execute("SELECT * FROM bulkbatch_campaigns WHERE campaign = 'c-lease' FOR UPDATE")
            blocker.append(conn)
            while True:  # "sending": every request checks the clock
                sending_until.append(time.time())
                assert sending_until[-1] < lease_end[0] + 30, "still sending long after"
                await anyio.sleep(0.05)

    started = time.time()
    try:
        with pytest.raises(StateError) as caught:
            anyio.run(send_while_holding)
        stopped = time.time()
    finally:
        for conn in blocker:
            conn.close()
    assert sending_until, "the body never ran"
    assert sending_until[-1] < lease_end[0], (
        f"sent {sending_until[-1] - lease_end[0]:.2f} s after the lease ran out"
    )
    assert stopped - started < TTL * 2  # letting go does not wait for the locked row either
    message = str(caught.value)
    assert "\n" not in message
    assert "c-lease" in message and "lease" in message and "renew" in message


def test_a_renewal_in_time_keeps_the_lease(campaign: SharedCampaign, pg_url: str) -> None:
    async def hold_through_three_renewals() -> float:
        async with campaign.holding():
            first = lease_until(pg_url)
            await anyio.sleep(TTL * 1.2)
            return lease_until(pg_url) - first

    assert anyio.run(hold_through_three_renewals) > 0  # renewed, and nothing raised


def test_a_take_over_that_outlasts_the_lease_sends_nothing(
    campaign: SharedCampaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeding from another worker's snapshot happens under the lease, before any renewal;
    when the database makes it take longer than the lease, the body never starts."""
    take_over = campaign._take_over

    def slow_take_over() -> None:
        time.sleep(TTL)
        take_over()

    monkeypatch.setattr(campaign, "_take_over", slow_take_over)
    started: list[bool] = []

    async def send_while_holding() -> None:
        async with campaign.holding():
            started.append(True)

    with pytest.raises(StateError, match="did not confirm this worker's lease"):
        anyio.run(send_while_holding)
    assert not started
