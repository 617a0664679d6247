"""The campaign registry in PostgreSQL, with a lease: which worker runs a campaign instance.

The per-user registry (:mod:`bulkbatch.identity`) lets the same command from another
directory on *one machine* continue a campaign's run. Workers on many machines (Airflow,
Dagster) need the same answer from a place they all reach, and they need one more thing:
when a scheduler retries a task while the first attempt is still alive, exactly one of them
may run the campaign. This module keeps both in the database of the PostgreSQL
``--once-per`` ledger (table ``bulkbatch_campaigns``, created with the ledger's schema):

* :meth:`PgRegistry.register` / :meth:`PgRegistry.lookup`: one row per campaign instance and
  Courier (keyed by a hash of the base URL: the same campaign sent to another Courier is
  another send), naming the host and run directory holding it, the event, and a small JSON
  ``state`` the holder keeps current (e.g. its stage and counts);
* :meth:`PgRegistry.acquire_lease` / :meth:`PgRegistry.renew` / :meth:`PgRegistry.release`:
  at most one live holder per campaign instance.

Why a row lease with an expiry (``lease_until``), not a session advisory lock: an advisory
lock lives only as long as one connection, so a worker would have to keep a connection open
and healthy for a whole send (hours); a network blip, an idle-connection timeout, a server
restart or a pooler in transaction mode (PgBouncer) would silently drop it while the worker
keeps sending; and after a network partition the server may hold a dead session's lock until
TCP keepalive gives up (by default, hours). A row lease is bounded by its TTL whatever
happens to connections, survives reconnects (each call is one short transaction), is visible
(who holds it, on which host, until when), and works through any pooler. The price: a worker
killed with SIGKILL keeps the lease until its TTL runs out, so pick a TTL of about three
renew intervals (e.g. renew every 20 s with a 60 s TTL). Expiry is decided by the database's
clock (``now()``), never the workers', so skewed worker clocks cannot make two holders.
A holder must renew before its TTL runs out and stop sending when :meth:`PgRegistry.renew`
raises: by then another worker may hold the campaign.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from bulkbatch.errors import StateError, UsageError
from bulkbatch.stages.once_pg import PgDatabase

if TYPE_CHECKING:
    import psycopg

__all__ = ["CampaignEntry", "Lease", "PgRegistry", "base_url_hash", "make_holder", "open_registry"]

_COLUMNS = (
    "campaign, base_url_hash, event, host, run_dir, state, lease_holder, lease_until, "
    "lease_until > now(), updated_at"
)


def base_url_hash(base_url: str) -> str:
    """The registry's key for a Courier: a hash of its base URL (trailing ``/`` ignored)."""
    return hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:16]


def make_holder() -> str:
    """A lease holder name unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class CampaignEntry:
    """A registered campaign instance: where it lives and who holds its lease."""

    campaign: str
    base_url_hash: str
    event: str
    host: str  # the machine whose file system holds run_dir
    run_dir: str
    state: dict[str, Any]
    lease_holder: str | None  # the last holder (None once released)
    lease_until: datetime | None
    leased: bool  # a holder's lease is live now (by the database's clock)
    updated_at: datetime


@dataclass(frozen=True)
class Lease:
    """A live lease: ``holder`` may run ``campaign`` at the Courier of ``base_url_hash``
    until ``until`` (the database's clock), unless it renews."""

    campaign: str
    base_url_hash: str
    holder: str
    until: datetime


def _ttl_interval(ttl: float) -> float:
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise UsageError(f"A lease TTL of {ttl!r} seconds is not allowed; give a number > 0.")
    return float(ttl)


def _entry(row: tuple[Any, ...]) -> CampaignEntry:
    campaign, url_hash, event, host, run_dir, state, holder, until, live, updated = row
    return CampaignEntry(
        campaign, url_hash, event, host, run_dir, dict(state), holder, until, bool(live), updated
    )


class PgRegistry:
    """The campaign registry and leases in a PostgreSQL database (one short transaction
    per call; usable from any thread). Open it with :func:`open_registry`."""

    def __init__(self, url: str, *, lock_timeout: float = 60.0) -> None:
        self.db = PgDatabase(url, "campaign registry", lock_timeout=lock_timeout)
        self.location = self.db.location
        with self.db.transaction():  # connect and create the schema now: fail early
            pass

    def __repr__(self) -> str:
        return f"PgRegistry({self.db.display!r})"

    def lookup(self, campaign: str, base_url: str) -> CampaignEntry | None:
        """The registered instance of ``campaign`` at ``base_url``, if any."""
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM bulkbatch_campaigns "
                "WHERE campaign = %s AND base_url_hash = %s",
                [campaign, base_url_hash(base_url)],
            ).fetchone()
        return None if row is None else _entry(row)

    def register(
        self,
        campaign: str,
        base_url: str,
        *,
        event: str,
        run_dir: str,
        host: str | None = None,
        state: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> CampaignEntry:
        """Record that ``run_dir`` on ``host`` (default: this machine) holds ``campaign`` at
        ``base_url``, and return the row as stored.

        The first registration wins: when another one exists, ``replace=False`` leaves it
        and returns it (so a caller learns where the campaign already lives), and
        ``replace=True`` moves it here (event, host, run_dir, state; the lease is kept).
        """
        _check(campaign)
        params = {
            "campaign": campaign,
            "hash": base_url_hash(base_url),
            "event": event,
            "host": host or socket.gethostname(),
            "run_dir": run_dir,
            "state": orjson.dumps(state or {}).decode(),
            "replace": replace,
        }
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO bulkbatch_campaigns AS c (campaign, base_url_hash, event, host, "
                "run_dir, state, updated_at) VALUES (%(campaign)s, %(hash)s, %(event)s, "
                "%(host)s, %(run_dir)s, %(state)s::jsonb, now()) "
                "ON CONFLICT (campaign, base_url_hash) DO UPDATE SET event = excluded.event, "
                "host = excluded.host, run_dir = excluded.run_dir, state = excluded.state, "
                "updated_at = now() WHERE %(replace)s",
                params,
            )
            return self._row(conn, campaign, str(params["hash"]))

    def acquire_lease(self, campaign: str, base_url: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease of a registered campaign for ``ttl`` seconds, or None while another
        holder's lease is live. Taking it again as the same holder extends it.

        :raises StateError: the campaign is not registered (call :meth:`register` first)
        """
        _check(campaign, holder)
        seconds = _ttl_interval(ttl)
        url_hash = base_url_hash(base_url)
        with self.db.transaction() as conn:
            row = conn.execute(
                "UPDATE bulkbatch_campaigns SET lease_holder = %s, "
                "lease_until = now() + make_interval(secs => %s), updated_at = now() "
                "WHERE campaign = %s AND base_url_hash = %s AND (lease_holder IS NULL "
                "OR lease_until <= now() OR lease_holder = %s) RETURNING lease_until",
                [holder, seconds, campaign, url_hash, holder],
            ).fetchone()
            if row is None:
                self._row(conn, campaign, url_hash)  # raises when it is not registered
                return None
        return Lease(campaign, url_hash, holder, row[0])

    def renew(self, lease: Lease, ttl: float, *, state: dict[str, Any] | None = None) -> Lease:
        """Extend ``lease`` by ``ttl`` seconds from now (and store ``state``, when given).

        Renewing a lease that expired still works while nobody else took it.

        :raises StateError: the lease was lost (released, or taken by another holder after
            it expired): stop running the campaign
        """
        seconds = _ttl_interval(ttl)
        with self.db.transaction() as conn:
            row = conn.execute(
                "UPDATE bulkbatch_campaigns SET lease_until = now() + make_interval(secs => %s), "
                "state = coalesce(%s::jsonb, state), updated_at = now() "
                "WHERE campaign = %s AND base_url_hash = %s AND lease_holder = %s "
                "RETURNING lease_until",
                [
                    seconds,
                    None if state is None else orjson.dumps(state).decode(),
                    lease.campaign,
                    lease.base_url_hash,
                    lease.holder,
                ],
            ).fetchone()
            if row is None:
                now = self._row(conn, lease.campaign, lease.base_url_hash)
                raise StateError(
                    f"Lost the lease on campaign {lease.campaign} in the campaign registry "
                    f"{self.db.display}: it is now held by {now.lease_holder or 'nobody'}. "
                    "Stop this worker; the holder continues the campaign."
                )
        return Lease(lease.campaign, lease.base_url_hash, lease.holder, row[0])

    def release(self, lease: Lease) -> bool:
        """Give ``lease`` up now (another worker may take it at once). True when it was
        still ours; False when it had already been taken or released."""
        with self.db.transaction() as conn:
            released = conn.execute(
                "UPDATE bulkbatch_campaigns SET lease_holder = NULL, lease_until = NULL, "
                "updated_at = now() WHERE campaign = %s AND base_url_hash = %s "
                "AND lease_holder = %s",
                [lease.campaign, lease.base_url_hash, lease.holder],
            ).rowcount
        return bool(released)

    def _row(
        self, conn: psycopg.Connection[tuple[Any, ...]], campaign: str, url_hash: str
    ) -> CampaignEntry:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM bulkbatch_campaigns "
            "WHERE campaign = %s AND base_url_hash = %s",
            [campaign, url_hash],
        ).fetchone()
        if row is None:
            raise StateError(
                f"Campaign {campaign} is not registered in the campaign registry "
                f"{self.db.display}; register it before taking its lease."
            )
        return _entry(row)


def _check(*values: str) -> None:
    if not all(values):
        raise UsageError(f"The campaign registry needs non-empty names; got {values!r}.")


def open_registry(url: str, *, lock_timeout: float = 60.0) -> PgRegistry:
    """The campaign registry in the PostgreSQL database at ``url`` (the ``--once-per-ledger``
    URL; a password-free ``location`` opened earlier in this process works too).

    :raises UsageError: not a PostgreSQL URL, or psycopg is not installed
    :raises StateError: the database cannot be reached (one line, password redacted)
    """
    return PgRegistry(url, lock_timeout=lock_timeout)
