"""The event store: durability settings, outcome derivation by precedence, export."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.errors import StateError
from bulkbatch.webhooks import (
    OUTCOMES_SCHEMA,
    STATUS_RANK,
    WebhookStore,
    WebhookStoreError,
    delivery_outcomes,
    export_events,
    export_outcomes,
    parse_event,
)
from bulkbatch.webhooks.errors import PayloadError
from tests.webhooks.helpers import message_event

T0 = 1_764_000_000_000


def ev(mid: str, status: str, received: int = 1, **fields: object) -> object:
    return parse_event(message_event(mid, status, **fields), received_at=received)


def outcomes(path: Path) -> dict[str, dict[str, object]]:
    table = delivery_outcomes(path, batch_size=7).read_all()
    assert table.schema == OUTCOMES_SCHEMA
    return {row["message_id"]: row for row in table.to_pylist()}


def test_store_is_wal_and_fsyncs(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with WebhookStore(path, durability="process") as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_engagement_before_delivery_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        # arrival order: OPENED, ENQUEUED, DELIVERED, OPENED again, SENT
        store.insert([ev("m1", "OPENED", 5, enqueued=T0, opened=T0 + 900, delivered=T0 + 50)])
        store.insert([ev("m1", "ENQUEUED", 6, enqueued=T0)])
        store.insert(
            [
                ev("m1", "DELIVERED", 7, enqueued=T0, sent=T0 + 10, delivered=T0 + 50),
                ev("m1", "OPENED", 8, enqueued=T0, opened=T0 + 900, delivered=T0 + 50),
                ev("m1", "SENT", 9, enqueued=T0, sent=T0 + 10),
            ]
        )
        assert store.count() == 5
    row = outcomes(path)["m1"]
    assert row["delivery_status"] == "OPENED"
    assert row["events"] == 5
    assert int(row["delivered_at"].timestamp() * 1000) == T0 + 50
    assert int(row["opened_at"].timestamp() * 1000) == T0 + 900
    assert int(row["sent_at"].timestamp() * 1000) == T0 + 10
    assert row["clicked_at"] is None
    assert row["reason"] is None


def test_failures_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        store.insert(
            [
                ev("bounce", "UNDELIVERABLE", reason="BOUNCED", error="mailbox full"),
                ev("bounce", "DELIVERED", delivered=T0),
                ev("bounce", "SENT"),
                ev("noroute", "UNROUTABLE", reason="NO_PROVIDERS", error="No providers added"),
                ev("noroute", "ENQUEUED"),
                ev("cancel-lost", "CANCELED"),
                ev("cancel-lost", "SENT", sent=T0),
                ev("odd", "SOMETHING_NEW"),
                ev("odd2", "SOMETHING_NEW"),
                ev("odd2", "ENQUEUED"),
            ]
        )
    got = outcomes(path)
    assert got["bounce"]["delivery_status"] == "UNDELIVERABLE"
    assert got["bounce"]["reason"] == "BOUNCED"
    assert got["bounce"]["error"] == "mailbox full"
    assert got["noroute"]["delivery_status"] == "UNROUTABLE"
    assert got["noroute"]["reason"] == "NO_PROVIDERS"
    assert got["cancel-lost"]["delivery_status"] == "SENT"
    assert got["odd"]["delivery_status"] == "SOMETHING_NEW"
    assert got["odd2"]["delivery_status"] == "ENQUEUED"


def test_other_event_types_are_kept_but_play_no_part(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    body = orjson.dumps({"type": "audiences:updated", "data": {"id": "aud-1"}})
    with WebhookStore(path) as store:
        store.insert([parse_event(body, received_at=1), ev("m", "SENT")])
    assert set(outcomes(path)) == {"m"}
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT body FROM events WHERE type = 'audiences:updated'")
        assert stored.fetchone()[0] == body


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"data": {}}',
        b'{"type": "message:updated"}',
        b'{"type": "message:updated", "data": {"status": "SENT"}}',
        b'{"type": "message:updated", "data": {"id": "m"}}',
        b'{"type": "message:updated", "data": {"id": 5, "status": "SENT"}}',
    ],
)
def test_bad_shapes_are_payload_errors(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_event(body, received_at=1)


def test_odd_field_types_are_kept_with_the_raw_body() -> None:
    body = message_event("m", "SENT", sent="1764000000000", recipient=42)
    event = parse_event(body, received_at=1)
    assert event.sent == 1764000000000
    assert event.recipient == "42"
    assert event.body == body
    assert parse_event(message_event("m", "SENT", sent=T0), received_at=1).body is None


def test_store_errors_are_state_errors(tmp_path: Path) -> None:
    with pytest.raises(WebhookStoreError) as exc:
        delivery_outcomes(tmp_path / "missing.sqlite")
    assert isinstance(exc.value, StateError)
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(WebhookStoreError, match="schema version 99"):
        WebhookStore(newer)


def test_outcomes_can_be_read_while_a_writer_holds_the_store(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        store.insert([ev("a", "SENT")])
        store._conn.execute("BEGIN IMMEDIATE")
        store._conn.executemany(
            "INSERT INTO events (type, message_id, status, received_at) VALUES (?, ?, ?, 1)",
            [("message:updated", "b", "SENT")],
        )
        assert set(outcomes(path)) == {"a"}  # a consistent snapshot, not blocked
        store._conn.execute("ROLLBACK")


def test_export_events_and_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        store.insert([ev("a", "SENT", sent=T0), ev("a", "DELIVERED"), ev("b", "ENQUEUED")])
    n = export_events(path, tmp_path / "events.parquet")
    table = pq.read_table(tmp_path / "events.parquet")
    assert n == table.num_rows == 3
    assert table.column("message_id").to_pylist() == ["a", "a", "b"]
    assert table.column("status").to_pylist() == ["SENT", "DELIVERED", "ENQUEUED"]
    assert table.schema.field("sent").type == pa.timestamp("ms", tz="UTC")
    assert export_outcomes(path, tmp_path / "outcomes.parquet") == 2
    by_id = {r["message_id"]: r for r in pq.read_table(tmp_path / "outcomes.parquet").to_pylist()}
    assert by_id["a"]["delivery_status"] == "DELIVERED"


def test_outcomes_register_in_duckdb(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        store.insert([ev(f"m{i}", "DELIVERED", delivered=T0 + i) for i in range(100)])
    con = duckdb.connect()
    con.register("outcomes", delivery_outcomes(path))
    row = con.execute(
        "SELECT count(*), max(delivered_at) FROM outcomes WHERE delivery_status = 'DELIVERED'"
    ).fetchone()
    assert row is not None and row[0] == 100


# -- order independence -----------------------------------------------------------------

LIFECYCLES = [
    ["ENQUEUED", "SENT", "DELIVERED", "OPENED", "CLICKED"],
    ["ENQUEUED", "SENT", "DELIVERED", "OPENED"],
    ["ENQUEUED", "SENT", "DELIVERED"],
    ["ENQUEUED", "ROUTED", "SENT", "UNDELIVERABLE"],
    ["ENQUEUED", "UNROUTABLE"],
    ["ENQUEUED", "DELAYED", "CANCELED"],
    ["ENQUEUED", "SENT"],
]


def lifecycle_events(mid: str, life: list[str]) -> list[bytes]:
    data: dict[str, object] = {"enqueued": T0}
    stamps = {"SENT": "sent", "DELIVERED": "delivered", "OPENED": "opened", "CLICKED": "clicked"}
    bodies = []
    for i, status in enumerate(life):
        if status in stamps:
            data[stamps[status]] = T0 + 1000 * (i + 1)
        extra = {"reason": "BOUNCED"} if status in ("UNDELIVERABLE", "UNROUTABLE") else {}
        bodies.append(message_event(mid, status, **data, **extra))
    return bodies


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lives=st.lists(st.sampled_from(range(len(LIFECYCLES))), min_size=1, max_size=12),
    data=st.data(),
)
def test_outcome_is_independent_of_order_duplicates_and_batching(
    tmp_path_factory: pytest.TempPathFactory, lives: list[int], data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("prop") / "w.sqlite"
    bodies: list[bytes] = []
    expected: dict[str, str] = {}
    for n, life in enumerate(lives):
        mid = f"m{n}"
        expected[mid] = LIFECYCLES[life][-1]
        bodies += lifecycle_events(mid, LIFECYCLES[life])
    dups = data.draw(st.lists(st.sampled_from(bodies), max_size=10))
    shuffled = data.draw(st.permutations(bodies + dups))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    with WebhookStore(path) as store:
        start = 0
        for cut in [*cuts, len(shuffled)]:
            store.insert(parse_event(b, received_at=1) for b in shuffled[start:cut])
            start = max(start, cut)
        incremental = outcomes(path)
        store.rebuild_messages()
    assert outcomes(path) == incremental
    assert {m: r["delivery_status"] for m, r in incremental.items()} == expected
    for mid, row in incremental.items():
        life = LIFECYCLES[lives[int(mid[1:])]]
        assert (row["delivered_at"] is not None) == ("DELIVERED" in life)
        assert (row["reason"] == "BOUNCED") == (life[-1] in ("UNDELIVERABLE", "UNROUTABLE"))


def test_every_lifecycle_ends_on_its_highest_rank() -> None:
    for life in LIFECYCLES:
        ranks = [STATUS_RANK[s] for s in life]
        assert ranks == sorted(ranks), life


def test_reading_outcomes_does_not_import_pandas(tmp_path: Path) -> None:
    """The results of a webhook-tracked run read the store's outcomes in the run's process:
    building those columns with ``pa.array`` imported pandas (47 MiB, 0.4 s) for nothing."""
    pytest.importorskip("pandas")
    path = tmp_path / "w.sqlite"
    with WebhookStore(path) as store:
        store.insert([ev("a", "SENT", sent=T0), ev("a", "DELIVERED"), ev("b", "ENQUEUED")])
    script = (
        "import sys\n"
        "from bulkbatch.webhooks import delivery_outcomes, events_reader\n"
        f"assert delivery_outcomes({str(path)!r}).read_all().num_rows == 2\n"
        f"assert events_reader({str(path)!r}).read_all().num_rows == 3\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"
