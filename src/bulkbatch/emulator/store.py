"""What every part of the emulator shares: the database, its lock, its clock, the counters.

:class:`Store` opens the database (:mod:`.database`) and holds the settings the rules read
(progression, flavor, routes) and the webhook outbox, when there is one. Its public methods
take one re-entrant lock, and the parts built on it (:mod:`.jobs`, :mod:`.messages`,
:mod:`.idempotency`) take the same one, so the backend can be used from the server's
event-loop thread and from a test thread.

The stats counters live in memory and are written to ``meta`` by :meth:`Store.flush_counters`
(and read back on start), like the clock offset of :meth:`Store.advance_clock`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from bulkbatch.emulator.database import TABLES, open_database
from bulkbatch.emulator.faults import EmulatorConfigError
from bulkbatch.emulator.rules import Progression
from bulkbatch.emulator.states import MessageStates

if TYPE_CHECKING:
    from bulkbatch.emulator.outbox import Outbox

__all__ = ["COUNTER_NAMES", "FLAVORS", "WEBHOOK_COUNTERS", "JsonDict", "Store"]

JsonDict = dict[str, Any]

FLAVORS = ("current", "tutorial")
# Webhook counters (``webhooks_pending`` is the outbox's row count): see outbox.py.
WEBHOOK_COUNTERS = (
    "webhooks_events",
    "webhooks_duplicated",
    "webhooks_reordered",
    "webhooks_sent",
    "webhooks_delivered",
    "webhooks_retried",
    "webhooks_dropped",
)
COUNTER_NAMES = (
    "jobs_created",
    "runs",
    "requests",
    "ingest_attempts",
    "users_accepted",
    "duplicate_users",
    "dropped_connections",
    "idempotent_replays",
    "idempotency_mismatches",
    *WEBHOOK_COUNTERS,
)


class Store:
    """The emulator's database, lock, clock, settings and counters."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        progression: str | Progression = "polls:2",
        clock: Callable[[], float] = time.time,
        flavor: str = "current",
        routes: Mapping[str, list[str]] | None = None,
    ) -> None:
        if flavor not in FLAVORS:
            raise EmulatorConfigError(f"bad flavor {flavor!r}: expected 'current' or 'tutorial'")
        self.progression = Progression.parse(progression)
        self.states = MessageStates(self.progression)
        self.flavor = flavor
        self.routes = dict(routes or {})
        self._clock = clock
        self._offset_ms = 0
        self._lock = threading.RLock()
        self.path = os.fspath(db) if db is not None else ":memory:"
        self._conn = open_database(self.path)
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._by_status: dict[str, int] = {}
        self._max_cache: tuple[int, int] | None = None
        self.webhooks: Outbox | None = None  # set by create_app with --webhook-url
        row = self._conn.execute("SELECT value FROM meta WHERE key='counters'").fetchone()
        if row:
            saved = orjson.loads(row[0])
            for name in COUNTER_NAMES:
                self._counters[name] = int(saved.get(name, 0))
            self._by_status = {str(k): int(v) for k, v in saved.get("by_status", {}).items()}
        offset = self._conn.execute("SELECT value FROM meta WHERE key='clock_offset_ms'").fetchone()
        if offset:
            self._offset_ms = int(offset[0])

    # -- housekeeping -------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def close(self) -> None:
        with self._lock:
            self.flush_counters()
            self._conn.close()

    def now_ms(self) -> int:
        return int(self._clock() * 1000) + self._offset_ms

    def advance_clock(self, seconds: float) -> int:
        """Move the emulator's clock forward (tests of expiry and ``seconds:T``)."""
        with self._lock:
            self._offset_ms += int(seconds * 1000)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clock_offset_ms', ?)", (str(self._offset_ms),)
            )
            return self.now_ms()

    def reset(self) -> None:
        """Forget every job, user, message, idempotency record and counter."""
        with self._lock:
            self._conn.execute("BEGIN")
            for table in TABLES:
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("COMMIT")
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)
            self._by_status = {}
            self._max_cache = None
            self._offset_ms = 0
            if self.webhooks is not None:
                self.webhooks.reset()

    # -- counters -------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def count_status(self, status: int) -> None:
        with self._lock:
            key = str(status)
            self._by_status[key] = self._by_status.get(key, 0) + 1

    def flush_counters(self) -> None:
        with self._lock:
            value = orjson.dumps({**self._counters, "by_status": self._by_status}).decode()
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('counters', ?)", (value,))

    def stats(self) -> JsonDict:
        with self._lock:
            c = self._counters
            stats = {
                "jobs_created": c["jobs_created"],
                "runs": c["runs"],
                "requests": c["requests"],
                "requests_by_status": dict(sorted(self._by_status.items())),
                "ingest_attempts": c["ingest_attempts"],
                "users_accepted": c["users_accepted"],
                "duplicate_users": c["duplicate_users"],
                "dropped_connections": c["dropped_connections"],
                "max_accepted_per_recipient": self._max_accepted_per_recipient(),
                "idempotent_replays": c["idempotent_replays"],
                "idempotency_mismatches": c["idempotency_mismatches"],
            }
            if self.webhooks is not None:  # only with --webhook-url
                stats.update({name: c[name] for name in WEBHOOK_COUNTERS})
                stats["webhooks_pending"] = self.webhooks.pending()
            return stats

    def _max_accepted_per_recipient(self) -> int:
        # Derived from persisted rows: within a job a recipient is unique, so only a
        # recipient present in several jobs can count more than once.
        total = self._conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        if self._max_cache is not None and self._max_cache[0] == total:
            return self._max_cache[1]
        if total == 0:
            value = 0
        else:
            jobs = self._conn.execute("SELECT COUNT(DISTINCT job) FROM users").fetchone()[0]
            if jobs <= 1:
                value = 1
            else:
                value = self._conn.execute(
                    "SELECT MAX(c) FROM (SELECT COUNT(*) AS c FROM users GROUP BY recipient)"
                ).fetchone()[0]
        self._max_cache = (total, int(value))
        return int(value)
