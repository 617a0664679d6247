"""How long joining webhook outcomes into a run takes at 1M people (#17).

Builds a webhook store with one DELIVERED (and, for every 10th message, an OPENED) event per
message, a run database whose ``user_pages`` lists the same message ids, then times the two
steps ``bulkbatch results --webhooks`` adds before writing results.parquet: copying the
store's outcomes for this run's messages into DuckDB (``load_webhook_outcomes``) and merging
the sources by precedence (``build_delivery``).

    .venv/bin/python bench/bench_delivery_join.py --messages 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from bulkbatch.stages.delivery import build_delivery, load_webhook_outcomes
from bulkbatch.webhooks.events import WebhookEvent
from bulkbatch.webhooks.store import WebhookStore

T0 = 1_796_000_000_000


def _events(n: int) -> list[WebhookEvent]:
    out = []
    for i in range(n):
        kinds = [("DELIVERED", {"delivered": T0 + 2000})]
        if i % 10 == 0:
            kinds.append(("OPENED", {"delivered": T0 + 2000, "opened": T0 + 60_000}))
        for status, times in kinds:
            out.append(
                WebhookEvent(
                    type="message:updated",
                    message_id=f"m{i:08d}",
                    status=status,
                    event="welcome",
                    notification="welcome",
                    recipient=f"u{i}",
                    recipient_id=f"u{i}",
                    enqueued=T0,
                    sent=T0 + 1000,
                    delivered=times.get("delivered"),
                    opened=times.get("opened"),
                    clicked=None,
                    reason=None,
                    error=None,
                    signed_at=None,
                    received_at=T0 + 70_000,
                    body=None,
                )
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    args = p.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="bb-join-") as tmp:
        store = Path(tmp) / "webhooks.sqlite"
        started = time.perf_counter()
        ws = WebhookStore(store, durability="process")
        events = _events(n)
        for i in range(0, len(events), 50_000):
            ws.insert(events[i : i + 50_000])
        ws.close()
        built = time.perf_counter() - started
        con = duckdb.connect(str(Path(tmp) / "run.duckdb"))
        con.execute("SET memory_limit = '320MB'")
        con.execute(
            "CREATE TABLE user_pages AS SELECT 0 AS job_no, 0 AS page_no, 'u' || i AS recipient, "
            f"printf('m%08d', i) AS message_id, 'ENQUEUED' AS status FROM range({n}) t(i)"
        )
        t = time.perf_counter()
        known = load_webhook_outcomes(con, store)
        loaded = time.perf_counter() - t
        t = time.perf_counter()
        build_delivery(con)
        merged = time.perf_counter() - t
        opened = con.execute(
            "SELECT count(*) FROM delivery WHERE delivery_status = 'OPENED'"
        ).fetchall()[0][0]
        con.close()
    print(f"store with {len(events):,} events for {n:,} messages built in {built:.1f} s")
    print("| messages | outcomes copied into DuckDB | merged by precedence | total |")
    print("|---:|---:|---:|---:|")
    print(f"| {known:,} | {loaded:.2f} s | {merged:.2f} s | {loaded + merged:.2f} s |")
    assert known == n and opened == -(-n // 10)


if __name__ == "__main__":
    main()
