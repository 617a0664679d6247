"""The CLI (``python -m bulkbatch.emulator``) as a subprocess, and a ``--db`` restart mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from bulkbatch.emulator import emulator_command
from tests.emulator.emulator_helpers import all_users

KEY = "sk_restart_test"


@contextmanager
def emulator_process(
    *args: str, env_key: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = dict(os.environ)
    env.pop("BULKBATCH_EMULATOR_API_KEY", None)
    if env_key:
        env["BULKBATCH_EMULATOR_API_KEY"] = env_key
    cmd = [sys.executable, "-m", "bulkbatch.emulator", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("bulkbatch emulator listening on http://127.0.0.1:"), line
        yield line.strip().rsplit(" ", 1)[-1], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def restartable(db: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[str]]]:
    args = ("--db", str(db), "--progression", "polls:1", "--flavor", "tutorial")
    with (
        emulator_process(*args, env_key=KEY) as (url, proc),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as client,
    ):
        yield client, proc


def test_db_restart_in_the_middle_of_a_job(tmp_path: Path) -> None:
    db = tmp_path / "emu.sqlite"
    users1 = [{"recipient": f"r{i}", "profile": {"email": f"r{i}@example.com"}} for i in range(150)]
    with restartable(db) as (client, proc):
        job = client.post("/bulk", json={"message": {"event": "e"}}).json()["jobId"]
        r = client.post(f"/bulk/{job}", json={"users": users1}, headers={"Idempotency-Key": "b1"})
        assert r.json() == {"total": 150, "errors": []}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0

    with restartable(db) as (client, proc):
        assert client.get(f"/bulk/{job}").json()["job"]["received"] == 150
        # The idempotency record survived: the same batch is replayed, not re-ingested.
        replay = client.post(
            f"/bulk/{job}", json={"users": users1}, headers={"Idempotency-Key": "b1"}
        )
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == {"total": 150, "errors": []}
        # Continue ingesting with one duplicate.
        more = [
            {"recipient": "r0"},
            {"recipient": "r150", "profile": {"email": "x@example.com"}},
        ]
        r = client.post(f"/bulk/{job}", json={"users": more})
        assert r.json() == {
            "total": 151,
            "errors": [{"user": {"recipient": "r0"}, "error": "Duplicate user"}],
        }
        assert client.post(f"/bulk/{job}/run").status_code == 202
        assert client.get(f"/bulk/{job}").json()["job"]["status"] == "COMPLETED"
        items = all_users(client, job)
        assert [u["recipient"] for u in items] == [f"r{i}" for i in range(151)]
        assert all(u["status"] == "ENQUEUED" for u in items)
        mid = items[0]["messageId"]
        assert client.get(f"/messages/{mid}").json()["status"] == "SENT"
        stats = client.get("/_emulator/stats").json()
        assert stats["jobs_created"] == 1
        assert stats["users_accepted"] == 151
        assert stats["idempotent_replays"] == 1
        assert stats["max_accepted_per_recipient"] == 1

    with restartable(db) as (client, _proc):
        # Messages and their progress survived the second restart.
        assert client.get(f"/messages/{mid}").json()["status"] == "DELIVERED"
        assert client.post(f"/bulk/{job}/run").status_code == 400
        assert client.get("/_emulator/stats").json()["runs"] == 1


def test_cli_requires_the_key_from_the_environment(tmp_path: Path) -> None:
    with emulator_process("--flavor", "tutorial", env_key="from-env") as (url, proc):
        assert httpx.post(f"{url}/bulk", json={"message": {"event": "e"}}).status_code == 401
        ok = httpx.post(
            f"{url}/bulk",
            json={"message": {"event": "e"}},
            headers={"Authorization": "Bearer from-env"},
        )
        assert ok.status_code == 201
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert "from-env" not in proc.stderr.read()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--faults", "error_rate=2"], "error_rate"),
        (["--faults", "bogus=1"], "unknown fault key 'bogus'"),
        (["--faults", "rate_limit"], "key=value"),
        (["--progression", "polls:0"], "polls:N"),
        (["--progression", "sometimes"], "'immediate', 'polls:N'"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(emulator_command, args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_help_documents_the_options() -> None:
    result = CliRunner().invoke(emulator_command, ["--help"])
    assert result.exit_code == 0
    for word in (
        "--faults",
        "rate_limit",
        "drop_rate",
        "max_users_per_call",
        "polls:N",
        "seconds:T",
        "Example:",
        "BULKBATCH_EMULATOR_API_KEY",
    ):
        assert word in result.output
