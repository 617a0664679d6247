"""A campaign shared by workers on many machines, through the PostgreSQL registry.

With ``--once-per-ledger postgresql://...`` the ledger's database also holds the campaign
registry (:mod:`bulkbatch.registry_pg`), which does for workers on many machines what the
per-user registry (:mod:`bulkbatch.identity`) does on one:

* **where the campaign lives.** After planning, the campaign is registered (the first
  registration wins). When this machine already holds it in another directory, that run
  continues (as with the local registry). When another machine held it, its last snapshot —
  the jobs, their ids, which ran — seeds this run: jobs that ran are tracked, never ingested
  or run again, and jobs created are continued under their ids. This holds after Courier's
  idempotency window (24 h) too, when replaying the keys no longer would;
* **who sends it.** Sending, tracking and writing results happen under a lease (60 s,
  renewed every 20 s with a fresh snapshot, judged by the database's clock): a retry that
  starts while the first try is still alive on another worker stops at once with one line
  naming it, instead of sending beside it. A worker killed with SIGKILL blocks a retry for at
  most the lease's 60 s; a worker that loses its lease stops sending.

Runs on their own in-process emulator are never shared. Library code: nothing is printed.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from bulkbatch.dburl import is_postgres_url
from bulkbatch.errors import StateError
from bulkbatch.state import RunState

__all__ = ["LEASE_TTL", "SharedCampaign"]

LEASE_TTL = 60.0
"""Seconds a lease lasts unless renewed; renewed every third of it."""


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation."""
    cancelled = anyio.get_cancelled_exc_class()
    for exc in group.exceptions:
        inner = _first(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(inner, cancelled):
            return inner
    return group.exceptions[0]


def snapshot(state: RunState) -> dict[str, Any]:
    """What another worker needs to continue this campaign without sending anyone twice."""
    return {
        "stage": "complete"
        if state.done("results")
        else next(
            (s for s in ("plan", "send", "track", "results") if not state.done(s)), "complete"
        ),
        "jobs": [
            {"job_no": j.job_no, "job_id": j.job_id, "ingested": j.ingested, "run": j.run}
            for j in state.jobs
            if j.job_id
        ],
    }


def seed(state: RunState, snap: dict[str, Any]) -> int:
    """Take the job ids (and which jobs ran) another worker recorded; returns how many jobs
    had already run. The same campaign id means the same plan, so job numbers match."""
    ran = 0
    by_no = {j.job_no: j for j in state.jobs}
    for rec in snap.get("jobs") or []:
        job = by_no.get(int(rec.get("job_no", -1)))
        if job is None or not rec.get("job_id") or job.job_id:
            continue
        job.job_id = str(rec["job_id"])
        if rec.get("run"):
            job.ingested = job.run = True
            ran += 1
    return ran


class SharedCampaign:
    """This run's entry in the PostgreSQL registry (see the module's docstring)."""

    def __init__(self, url: str, state: RunState, base_url: str) -> None:
        from bulkbatch.registry_pg import make_holder, open_registry

        self.registry = open_registry(url)
        self.state = state
        self.base_url = base_url
        self.holder = make_holder()

    @classmethod
    def for_run(cls, ledger: str | None, state: RunState, base_url: str) -> SharedCampaign | None:
        """The shared entry when the ledger is PostgreSQL and the run sends to a real Courier."""
        if not ledger or not is_postgres_url(ledger) or state.emulator:
            return None
        return cls(ledger, state, base_url)

    def adopt(self) -> RunState | None:
        """Register the campaign (the first registration wins); returns the run on this
        machine that already holds it, which the caller continues instead."""
        state = self.state
        here = str(state.run_dir.resolve())
        entry = self.registry.register(
            state.campaign, self.base_url, event=str(state.message.get("event", "")),
            run_dir=here, state=snapshot(state),
        )  # fmt: skip
        other = Path(entry.run_dir)
        if entry.run_dir != here and entry.host == socket.gethostname():
            return RunState.load(other) if RunState.exists(other) else None
        return None

    def _take_over(self) -> None:
        """Under the lease: when another run (another machine, or a directory since lost)
        holds the entry, seed this run's jobs from its snapshot and move the entry here."""
        state = self.state
        here = str(state.run_dir.resolve())
        entry = self.registry.lookup(state.campaign, self.base_url)
        if entry is None or entry.run_dir == here:
            return
        if seed(state, entry.state):
            state.replayed = True  # sent before, by another worker
            state.save()
        self.registry.register(
            state.campaign, self.base_url, event=str(state.message.get("event", "")),
            run_dir=here, state=snapshot(state), replace=True,
        )  # fmt: skip

    @asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """Hold the campaign's lease while the body runs; renew it with a fresh snapshot.

        :raises StateError: another worker holds it (named), or the lease was lost mid-run
        """
        state, reg = self.state, self.registry
        await anyio.to_thread.run_sync(self.adopt)  # registered (a resumed run may predate it)
        lease = await anyio.to_thread.run_sync(
            reg.acquire_lease, state.campaign, self.base_url, self.holder, LEASE_TTL
        )
        if lease is None:
            entry = await anyio.to_thread.run_sync(reg.lookup, state.campaign, self.base_url)
            where = f"{entry.host}: {entry.run_dir}" if entry else "another worker"
            until = (
                entry.lease_until.isoformat(timespec="seconds")
                if entry and entry.lease_until
                else "soon"
            )
            raise StateError(
                f"Campaign {state.campaign} is being sent by {where} (its lease runs until "
                f"{until}). This worker stops so nobody is sent twice; retry after that one "
                "finishes or dies (a dead worker's lease ends within a minute)."
            )
        try:
            await anyio.to_thread.run_sync(self._take_over)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, lease)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the body's own error, or the lease lost
            raise _first(group) from None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._let_go, lease)

    def _let_go(self, lease: Any) -> None:
        """Store the last snapshot and give the lease up (nothing to do when it was lost)."""
        with contextlib.suppress(StateError):
            self.registry.renew(lease, LEASE_TTL, state=snapshot(self.state))
            self.registry.release(lease)

    async def _renew(self, lease: Any) -> None:
        while True:
            await anyio.sleep(LEASE_TTL / 3)
            await anyio.to_thread.run_sync(
                lambda: self.registry.renew(lease, LEASE_TTL, state=snapshot(self.state))
            )
