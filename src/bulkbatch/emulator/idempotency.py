"""Idempotency records: the saved answer of each ``Idempotency-Key``, per bearer-token scope.

A record is ``(scope, key) -> (request hash, status, body, expiry)`` in the ``idempotency``
table; the scope is a salted hash of the token, never the token itself. The HTTP side (when
to replay, when a key is reused for another request) is in :mod:`.handlers`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from bulkbatch.emulator.store import Store

__all__ = ["Idempotency", "request_hash"]


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class Idempotency:
    """The idempotency records of one :class:`~.store.Store` (same lock, same file)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _salt(self) -> bytes:
        conn = self._store.conn
        row = conn.execute("SELECT value FROM meta WHERE key='scope_salt'").fetchone()
        if row:
            return bytes.fromhex(row[0])
        salt = secrets.token_bytes(16)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('scope_salt', ?)", (salt.hex(),))
        return salt

    def scope(self, token: str) -> str:
        """The idempotency scope of a bearer token: a salted hash, never the token itself
        (the salt is random per database, so the file alone does not confirm a guess)."""
        with self._store.lock:
            return hmac.new(self._salt(), token.encode(), hashlib.sha256).hexdigest()

    def lookup(self, scope: str, key: str) -> tuple[int, bytes, str] | None:
        """The saved ``(status, body, request_hash)`` of an unexpired key, else ``None``."""
        store = self._store
        with store.lock:
            row = store.conn.execute(
                "SELECT request_hash, status, body, expires_ms FROM idempotency "
                "WHERE scope=? AND key=?",
                (scope, key),
            ).fetchone()
            if row is None:
                return None
            if row[3] <= store.now_ms():
                store.conn.execute("DELETE FROM idempotency WHERE scope=? AND key=?", (scope, key))
                return None
            return int(row[1]), bytes(row[2]), str(row[0])

    def save(
        self, scope: str, key: str, request_hash: str, status: int, body: bytes, expires_ms: int
    ) -> None:
        with self._store.lock:
            self._store.conn.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                (scope, key, request_hash, status, body, expires_ms),
            )
