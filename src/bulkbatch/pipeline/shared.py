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
  most the lease's 60 s; a worker that loses its lease stops sending, and so does one whose
  renewal has not come back 5 s before the lease would run out (a busy or silent database):
  the lease is a promise with a deadline, kept by this worker's clock too.

Runs on their own in-process emulator are never shared. Library code: nothing is printed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from bulkbatch.dburl import is_postgres_url
from bulkbatch.errors import StateError
from bulkbatch.state import RunState

__all__ = ["LEASE_TTL", "SharedCampaign"]

LEASE_TTL = 60.0
"""Seconds a lease lasts unless renewed; renewed every third of it."""

_T = TypeVar("_T")


def _margin() -> float:
    """How long before its lease runs out a worker whose renewal has not come back stops
    (5 s of the 60): time for the cancelled requests to leave before anyone may take over."""
    return LEASE_TTL / 12


async def _within(seconds: float, call: Callable[[], _T]) -> _T:
    """``call()`` (a blocking registry call), or TimeoutError when it has not returned in
    ``seconds``. It runs in a daemon thread that is abandoned on timeout: a call stuck on a
    database that does not answer must hold up neither this run nor the process's exit
    (anyio's worker threads are not daemons, so ``to_thread`` alone would do the latter)."""
    outcome: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task to raise
            outcome.append((False, exc))
        finally:
            finished.set()

    threading.Thread(target=run, name="bulkbatch registry", daemon=True).start()
    if not await anyio.to_thread.run_sync(finished.wait, max(0.0, seconds), abandon_on_cancel=True):
        raise TimeoutError
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


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
        asked = anyio.current_time()  # the lease runs at least LEASE_TTL from here
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
            if anyio.current_time() > asked + LEASE_TTL - _margin():  # a slow database
                raise self._unconfirmed()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, lease, asked + LEASE_TTL)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the body's own error, or the lease lost
            raise _first(group) from None
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(TimeoutError):
                # a database that does not answer lets the lease run out instead (<= 60 s)
                await _within(LEASE_TTL / 3, lambda: self._let_go(lease))

    def _let_go(self, lease: Any) -> None:
        """Store the last snapshot and give the lease up (nothing to do when it was lost)."""
        with contextlib.suppress(StateError):
            self.registry.renew(lease, LEASE_TTL, state=snapshot(self.state))
            self.registry.release(lease)

    async def _renew(self, lease: Any, valid_until: float) -> None:
        """Renew every third of the TTL, with a fresh snapshot. A renewal extends the lease
        to at least LEASE_TTL from when it was sent (the database's clock starts it later),
        so this worker knows until when it holds the campaign by its own clock. A renewal
        that has not come back by :func:`_margin` before then stops the run: the lease
        would run out, and another worker could take the campaign and send beside this one.
        """
        while True:
            await anyio.sleep_until(valid_until - LEASE_TTL * 2 / 3)  # a third into it
            asked = anyio.current_time()
            try:
                await _within(
                    valid_until - _margin() - asked,
                    lambda: self.registry.renew(lease, LEASE_TTL, state=snapshot(self.state)),
                )
            except TimeoutError:
                raise self._unconfirmed() from None
            valid_until = asked + LEASE_TTL

    def _unconfirmed(self) -> StateError:
        return StateError(
            f"Campaign {self.state.campaign}: the campaign registry {self.registry.db.display} "
            "did not confirm this worker's lease before it would run out (the database is "
            "busy or not answering), and then another worker could take the campaign. "
            f"Sending stopped so that nobody is sent twice; 'bulkbatch resume "
            f"{self.state.run_dir}' continues once the database answers."
        )
