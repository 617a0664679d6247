"""Delivery outcomes at scale (#17): the emulator's signed webhooks (duplicated, reordered,
some dropped) into the receiver's store, joined into results, and --reconcile fills the holes:
every ingested row ends with the delivery status GET /messages/{id} gives."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import polars as pl
import pytest

from bulkbatch.webhooks.server import WebhookReceiver
from tests.support import EmulatorProcess, bulkbatch, wait_for

pytestmark = pytest.mark.e2e

SECRET = "whsec_test_4d2c1b0a"


def _audience(path: Path) -> Path:
    n = 400
    pl.DataFrame(
        {
            "user_id": [f"u{i:04d}" for i in range(n)],
            # every 25th address bounces (the emulator's *.invalid rule)
            "email": [
                f"p{i}@{'bounce.invalid' if i % 25 == 0 else 'example.com'}" for i in range(n)
            ],
        }
    ).write_csv(path)
    return path


def test_webhooks_plus_reconcile_give_every_row_its_delivery_status(tmp_path: Path) -> None:
    store = tmp_path / "webhooks.sqlite"
    audience = _audience(tmp_path / "audience.csv")
    with WebhookReceiver(store, secrets=SECRET) as receiver:
        faults = "webhook_dup_rate=0.2,webhook_reorder_rate=0.2,webhook_drop_rate=0.1,seed=5"
        with EmulatorProcess(
            "--progression", "immediate", "--webhook-url", receiver.webhook_url,
            "--webhook-secret", SECRET, "--faults", faults,
        ) as emu:  # fmt: skip
            sent = bulkbatch(
                "--quiet", "send", str(audience), "--event", "welcome", "--run-dir", "r",
                "--poll-interval", "0.05", "--json", env=emu.env(), cwd=tmp_path,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            auth = {"Authorization": f"Bearer {emu.api_key}"}
            httpx.post(f"{emu.url}/_emulator/webhooks/flush", headers=auth, timeout=10)
            wait_for(lambda: emu.stats()["webhooks_pending"] == 0, timeout=60)
            stats = emu.stats()
            assert stats["webhooks_dropped"] > 0 and stats["webhooks_duplicated"] > 0

            joined = bulkbatch(
                "--quiet", "results", "r", "--webhooks", str(store), "--json",
                env=emu.env(), cwd=tmp_path,
            )  # fmt: skip
            assert joined.returncode == 0, joined.stderr
            before = pl.read_parquet(tmp_path / "r" / "results.parquet")

            fixed = bulkbatch(
                "--quiet", "results", "r", "--webhooks", str(store), "--reconcile", "--json",
                env=emu.env(), cwd=tmp_path,
            )  # fmt: skip
            assert fixed.returncode == 0, fixed.stderr
            after = pl.read_parquet(tmp_path / "r" / "results.parquet")
            truth = {
                mid: httpx.get(f"{emu.url}/messages/{mid}", headers=auth, timeout=10).json()[
                    "status"
                ]
                for mid in after.filter(pl.col("outcome") == "ingested")["message_id"].to_list()
            }
    ingested = after.filter(pl.col("outcome") == "ingested")
    assert ingested.height == orjson.loads(sent.stdout)["counts"]["ingested"]
    # some rows had no final status from webhooks alone (dropped deliveries) ...
    assert before.filter(pl.col("outcome") == "ingested")["delivery_status"].null_count() >= 0
    # ... and after reconciling, every row has the status the Messages API gives
    got = dict(
        zip(ingested["message_id"].to_list(), ingested["delivery_status"].to_list(), strict=True)
    )
    assert got == truth
    assert ingested["delivered_at"].dtype == pl.Datetime
    delivery = orjson.loads(fixed.stdout)["delivery"]
    assert delivery == {"DELIVERED": 384, "UNDELIVERABLE": 16}
