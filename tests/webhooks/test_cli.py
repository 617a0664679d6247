"""``bulkbatch webhooks``: help, refusing to start without a secret, export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from bulkbatch.webhooks import WebhookStore, parse_event
from bulkbatch.webhooks.cli import webhooks_command
from tests.webhooks.helpers import SECRET, message_event


def test_help_has_examples() -> None:
    runner = CliRunner()
    for args in ([], ["serve"], ["export"]):
        result = runner.invoke(webhooks_command, [*args, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output
    serve_help = runner.invoke(webhooks_command, ["serve", "--help"]).output
    assert "COURIER_WEBHOOK_SECRET" in serve_help
    assert "127.0.0.1" in serve_help


def test_serve_refuses_without_a_secret(tmp_path: Path) -> None:
    env = {"COURIER_WEBHOOK_SECRET": ""}
    result = CliRunner().invoke(
        webhooks_command, ["serve", "--store", str(tmp_path / "s.sqlite")], env=env
    )
    assert result.exit_code == 2
    assert "no webhook secret" in result.output


def test_a_secret_is_never_echoed_on_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bulkbatch.webhooks", "serve", "--store", str(tmp_path / "s")),
            *("--secret", SECRET, "--insecure-no-signature"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert SECRET not in proc.stdout + proc.stderr


def test_export(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    with WebhookStore(store) as s:
        s.insert(parse_event(message_event("m", st), received_at=1) for st in ("SENT", "OPENED"))
    runner = CliRunner()
    result = runner.invoke(webhooks_command, ["export", str(store), str(tmp_path / "e.parquet")])
    assert result.exit_code == 0, result.output
    assert "wrote 2 events" in result.output
    assert pq.read_table(tmp_path / "e.parquet").column("status").to_pylist() == ["SENT", "OPENED"]
    out = tmp_path / "o.parquet"
    result = runner.invoke(webhooks_command, ["export", str(store), str(out), "--outcomes"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("delivery_status").to_pylist() == ["OPENED"]


def test_serve_defaults_are_the_receivers() -> None:
    """The CLI states its defaults without importing the receiver (which loads starlette)."""
    from bulkbatch.webhooks import receiver

    params = {p.name: p for p in webhooks_command.commands["serve"].params}
    assert params["body_timeout"].default == receiver.DEFAULT_BODY_TIMEOUT
    assert params["max_body_bytes"].default == receiver.DEFAULT_MAX_BODY_BYTES
