"""Messages: what a user row becomes after fan-out, and the ``/messages`` endpoints.

A message's status is derived from its row and the clock (:class:`~.states.MessageStates`):
under ``polls:N`` every N-th read of a message advances it a step, and each step reached (or a
cancellation) is queued as a webhook event when there is an outbox. Reads (``GET /messages``,
``GET /messages/{id}`` and its ``history`` and ``output``), cancellation and the webhook
payloads are here; the rows are written by :mod:`.jobs`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from bulkbatch.emulator.cursors import decode_cursor, encode_cursor
from bulkbatch.emulator.outbox import CANCELED_STEP
from bulkbatch.emulator.rules import (
    ValidationError,
    as_dict,
    content_text,
    merged_data,
    not_found,
    render,
)
from bulkbatch.emulator.states import CANCELABLE, CANCELED, Timeline
from bulkbatch.emulator.store import JsonDict, Store

__all__ = ["MESSAGES_PAGE_SIZE", "Messages"]

MESSAGES_PAGE_SIZE = 10  # GET /messages: "Only 10 can be fetched at a time" (tracking §3.1)


class Messages:
    """The messages of one :class:`~.store.Store` (same lock, same file).

    :param settle: completes the jobs that are due (``seconds:T``) before each read
    """

    def __init__(self, store: Store, settle: Callable[[], None]) -> None:
        self._store = store
        self._conn = store.conn
        self._lock = store.lock
        self._settle = settle

    _MESSAGE_COLUMNS = (
        "u.id, u.message_id, u.recipient, u.outcome, u.channel, u.enqueued_ms, u.step, "
        "u.reads, u.sent_ms, u.done_ms, u.canceled_ms, j.event, j.notification"
    )
    _MESSAGE_FROM = "FROM users u JOIN jobs j ON j.num = u.job"

    def _details(self, row: tuple[Any, ...], now: int, providers: bool) -> JsonDict:
        """MessageDetails (+ ``providers`` for ``GET /messages/{id}`` only)."""
        outcome, enq, step = row[3], row[5], row[6]
        sent, done, canceled = row[8], row[9], row[10]
        at = self._store.states.timeline((outcome, enq, step, sent, done, canceled), now)
        return self._details_at(row, at, providers)

    def _details_at(self, row: tuple[Any, ...], at: Timeline, providers: bool) -> JsonDict:
        _id, mid, recipient, _o, channel, enq, _s, _r, _sent, _done, _c, ev, nt = row
        details: JsonDict = {
            "id": mid,
            "status": at.status,
            "enqueued": enq,
            "recipient": recipient,
            "event": ev,
            "notification": nt,
        }
        if at.sent is not None:
            details["sent"] = at.sent
        if at.status == "DELIVERED":
            details["delivered"] = at.done
        if at.status == "UNDELIVERABLE":
            details["reason"] = "BOUNCED"
            details["error"] = "The email address bounced (emulated: '.invalid' domain)."
        elif at.status == "UNROUTABLE":
            details["reason"] = "NO_CHANNELS"
            details["error"] = "No channel of the job could be routed for this recipient."
        if providers:
            details["providers"] = []
            if at.sent is not None and channel:
                provider: JsonDict = {
                    "channel": {"key": channel, "name": channel},
                    "provider": f"emulator-{channel}",
                    "status": at.status,
                    "sent": at.sent,
                }
                if "delivered" in details:
                    provider["delivered"] = details["delivered"]
                if at.status == "UNDELIVERABLE":
                    provider["error"] = details["error"]
                details["providers"].append(provider)
        return details

    def webhook_payload(self, user_id: int, step: int) -> JsonDict | None:
        """The ``message:updated`` event of a message at ``step`` (``CANCELED_STEP``: its
        cancellation): ``data`` is ``GET /messages/{id}`` as it stood then, plus the
        webhook-only ``recipientId`` (and ``canceledAt``). ``None`` if the message is gone."""
        with self._lock:
            found = self._conn.execute(
                f"SELECT {self._MESSAGE_COLUMNS} {self._MESSAGE_FROM} WHERE u.id = ?", (user_id,)
            ).fetchone()
            if found is None or found[1] is None:
                return None
            row = tuple(found)
            outcome, enq, sent, done, canceled = row[3], row[5], row[8], row[9], row[10]
            if step == CANCELED_STEP:
                at = Timeline(CANCELED, 0, enq, None, None, canceled)
            else:
                at = self._store.states.at_step(outcome, enq, step, sent, done)
            data = self._details_at(row, at, providers=True)
            data["recipientId"] = row[2]
            if step == CANCELED_STEP:
                data["canceledAt"] = canceled
            return {"type": "message:updated", "data": data}

    def _advance(self, rows: list[tuple[Any, ...]], now: int) -> list[tuple[Any, ...]]:
        """``polls:N``: count one read of each message; every N-th read advances a step."""
        if self._store.progression.mode != "polls" or not rows:
            return rows
        n = self._store.progression.polls
        out = []
        updates = []
        changed: list[tuple[int, int]] = []
        for row in rows:
            rid, mid, rec, outcome, channel, enq, step, reads, sent, done, canceled, ev, nt = row
            reads += 1
            if reads % n == 0 and canceled is None:
                before = step
                step, sent, done = self._store.states.advance(outcome, step, sent, done, now)
                if step != before:
                    changed.append((rid, step))
            updates.append((step, reads, sent, done, rid))
            out.append(
                (rid, mid, rec, outcome, channel, enq, step, reads, sent, done, canceled, ev, nt)
            )
        self._conn.executemany(
            "UPDATE users SET step=?, reads=?, sent_ms=?, done_ms=? WHERE id=?", updates
        )
        if self._store.webhooks is not None:
            self._store.webhooks.add(changed)
        return out

    def _message_row(self, message_id: str) -> tuple[Any, ...]:
        row = self._conn.execute(
            f"SELECT {self._MESSAGE_COLUMNS} {self._MESSAGE_FROM} WHERE u.message_id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            raise not_found()
        return tuple(row)

    def retrieve_message(self, message_id: str) -> JsonDict:
        with self._lock:
            self._settle()
            now = self._store.now_ms()
            (row,) = self._advance([self._message_row(message_id)], now)
            return self._details(row, now, providers=True)

    def cancel_message(self, message_id: str) -> tuple[int, JsonDict]:
        """200 + the record with ``canceledAt`` while not yet sent; 409 + the record after."""
        with self._lock:
            self._settle()
            now = self._store.now_ms()
            row = self._message_row(message_id)
            details = self._details(row, now, providers=False)
            if details["status"] not in CANCELABLE:
                return 409, details
            self._conn.execute("UPDATE users SET canceled_ms=? WHERE id=?", (now, row[0]))
            if self._store.webhooks is not None:
                self._store.webhooks.add([(row[0], CANCELED_STEP)])
            details = self._details((*row[:10], now, *row[11:]), now, providers=False)
            details["canceledAt"] = now
            return 200, details

    def message_history(self, message_id: str, type_: str | None) -> JsonDict:
        """``{results: [...]}``: one item per step reached, ``ts`` in epoch ms, oldest first."""
        with self._lock:
            self._settle()
            now = self._store.now_ms()
            row = self._message_row(message_id)
            rid, _mid, recipient, outcome, channel, enq, step, _r, sent, done, canceled = row[:11]
            at = self._store.states.timeline((outcome, enq, step, sent, done, canceled), now)
            (payload, definition) = self._conn.execute(
                "SELECT u.payload, j.definition FROM users u JOIN jobs j ON j.num = u.job "
                "WHERE u.id = ?",
                (rid,),
            ).fetchone()
            user, job = orjson.loads(payload), orjson.loads(definition)
            items: list[JsonDict] = [
                {
                    "ts": enq,
                    "type": "ENQUEUED",
                    "data": merged_data(job, user),
                    "event": row[11],
                    "profile": as_dict(user.get("profile")),
                    "override": as_dict(job.get("override")),
                    "recipient": recipient,
                }
            ]
            routed = {
                "channel": {"id": channel},
                "integration": {"id": f"emulator-{channel}", "provider": f"emulator-{channel}"},
            }
            if at.sent is not None:
                items.append({"ts": at.sent, "type": "SENT", **routed})
            if at.status == "DELIVERED":
                items.append({"ts": at.done, "type": "DELIVERED", **routed, "reference": {}})
            elif at.status == "UNDELIVERABLE":
                error = "The email address bounced (emulated: '.invalid' domain)."
                items.append(
                    {"ts": at.done, "type": "UNDELIVERABLE", **routed, "error_message": error}
                )
            elif at.status == "UNROUTABLE":
                items.append(
                    {
                        "ts": at.done,
                        "type": "UNROUTABLE",
                        "channel": {"id": None},
                        "reason": "NO_CHANNELS",
                    }
                )
            if type_:
                items = [i for i in items if i["type"] == type_]
            return {"results": items}

    def _message_filters(self, query: Mapping[str, list[str]], params: JsonDict) -> list[str]:
        """SQL conditions for the documented ``GET /messages`` filters (ANDed; within one
        filter, any value matches). Values may be comma-joined or repeated."""

        def values(name: str) -> list[str]:
            return [v for raw in query.get(name, []) for v in raw.split(",") if v]

        where = ["u.message_id IS NOT NULL"]
        payload = "json_extract(u.payload, '$.to.{}')"
        metadata = "json_extract(j.definition, '$.message.metadata.{}')"
        tags = (
            "(SELECT value FROM json_each(j.definition, '$.message.metadata.tags') "
            "WHERE json_type(j.definition, '$.message.metadata.tags') = 'array')"
        )
        for name, column in (
            ("status", self._store.states.status_sql()),
            ("recipient", "u.recipient"),
            ("event", "j.event"),
            ("notification", "j.notification"),
            ("messageId", "u.message_id"),
            ("provider", "'emulator-' || u.channel"),
            ("list", payload.format("list_id")),
            (
                "tenant_id",
                f"COALESCE({payload.format('tenant_id')}, {payload.format('context.tenant_id')})",
            ),
            ("traceId", metadata.format("trace_id")),
        ):
            wanted = values(name)
            if wanted:
                keys = [f"{name}{i}" for i in range(len(wanted))]
                params.update(zip(keys, wanted, strict=True))
                where.append(f"({column}) IN ({', '.join(':' + k for k in keys)})")
        wanted_tags = values("tag") + values("tags")
        if wanted_tags:
            params["tags"] = orjson.dumps(wanted_tags).decode()
            where.append(f"EXISTS (SELECT 1 FROM json_each(:tags) t WHERE t.value IN {tags})")
        after = values("enqueued_after")
        if after:
            params["enqueued_after"] = self._parse_time(after[0])
            where.append("u.enqueued_ms > :enqueued_after")
        return where

    def list_messages(self, query: Mapping[str, list[str]]) -> JsonDict:
        """``GET /messages``: newest first, 10 a page, no ``providers`` on the rows.

        A list read counts as a read of each message on the page (``polls:N``); the page
        shows each status as it was before this read. ``archived`` is accepted and changes
        nothing: the emulator never archives a message.
        """
        with self._lock:
            self._settle()
            now = self._store.now_ms()
            params: JsonDict = {"now": now, "step_ms": self._store.progression.step_ms}
            where = self._message_filters(query, params)
            cursor = query.get("cursor", [""])[0]
            if cursor:
                key = decode_cursor(cursor)
                if not (
                    isinstance(key, list) and len(key) == 2 and all(isinstance(k, int) for k in key)
                ):
                    raise ValidationError(f"Invalid cursor {cursor!r}.")
                params["c_enq"], params["c_id"] = key
                where.append(
                    "(u.enqueued_ms < :c_enq OR (u.enqueued_ms = :c_enq AND u.id < :c_id))"
                )
            rows = [
                tuple(r)
                for r in self._conn.execute(
                    f"SELECT {self._MESSAGE_COLUMNS} {self._MESSAGE_FROM} "
                    f"WHERE {' AND '.join(where)} ORDER BY u.enqueued_ms DESC, u.id DESC "
                    f"LIMIT {MESSAGES_PAGE_SIZE + 1}",
                    params,
                )
            ]
            more = len(rows) > MESSAGES_PAGE_SIZE
            rows = rows[:MESSAGES_PAGE_SIZE]
            results = [self._details(r, now, providers=False) for r in rows]
            self._advance(rows, now)
            next_cursor = encode_cursor([rows[-1][5], rows[-1][0]]) if more else None
            return {"paging": {"cursor": next_cursor, "more": more}, "results": results}

    @staticmethod
    def _parse_time(text: str) -> int:
        if re.fullmatch(r"\d+", text):
            return int(text)
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"Invalid enqueued_after {text!r}: expected an ISO-8601 date or epoch ms."
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)

    def message_output(self, message_id: str) -> JsonDict:
        """Render the job's inline content with the user's merged data."""
        with self._lock:
            self._settle()
            row = self._conn.execute(
                "SELECT u.payload, u.channel, u.outcome, j.definition FROM users u "
                "JOIN jobs j ON j.num = u.job WHERE u.message_id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                raise not_found()
            payload, channel, outcome, definition_json = row
            if outcome == "UNROUTABLE":
                return {"results": []}
            definition = orjson.loads(definition_json)
            user = orjson.loads(payload)
            data = merged_data(definition, user)
            content = definition.get("content") or as_dict(definition.get("message")).get("content")
            title, body = content_text(content)
            title, body = render(title, data), render(body, data)
            return {
                "results": [
                    {
                        "channel": channel,
                        "channel_id": f"emulator-{channel}",
                        "content": {
                            "blocks": [{"type": "text", "text": body}] if body else [],
                            "body": body,
                            "html": f"<p>{html.escape(body)}</p>" if body else "",
                            "subject": title,
                            "text": body,
                            "title": title,
                        },
                    }
                ]
            }
