"""Issue #15 defects: the token never stored, control routes behind the key, bad --db and
--api-key refused with one line, auth and size checked before the body, the clock guarded."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bulkbatch.emulator import EmulatorConfigError, create_app, emulator_command
from bulkbatch.emulator.handlers import MAX_BODY_BYTES
from tests.emulator.emulator_helpers import API_KEY, client_for, create_job

TOKEN = "sk_live_very_secret_token_4242"


def test_the_bearer_token_never_reaches_the_database_file(
    make_emulator: Any, tmp_path: Path
) -> None:
    db = tmp_path / "emu.sqlite"
    emu = make_emulator(db=db, api_key=TOKEN)
    with client_for(emu, TOKEN) as client:
        h = {"Idempotency-Key": "k1"}
        first = client.post("/bulk", json={"message": {"event": "e"}}, headers=h)
        again = client.post("/bulk", json={"message": {"event": "e"}}, headers=h)
        assert again.headers["idempotent-replayed"] == "true"
        assert first.json() == again.json()
    emu.stop()
    for path in tmp_path.iterdir():  # the database, its WAL and shared-memory files
        assert TOKEN.encode() not in path.read_bytes(), path.name


def test_control_routes_need_the_key(make_emulator: Any) -> None:
    emu = make_emulator(api_key=API_KEY)
    with client_for(emu, None) as anonymous:
        for method, path in (
            ("GET", "/_emulator/stats"),
            ("GET", "/_emulator/config"),
            ("POST", "/_emulator/reset"),
            ("POST", "/_emulator/clock"),
        ):
            r = anonymous.request(method, path)
            assert r.status_code == 401, path
        # A browser's "simple" request (text/plain, no Authorization) cannot reset it either.
        r = anonymous.post("/_emulator/reset", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 401
    with client_for(emu) as client:
        create_job(client)
        assert client.get("/_emulator/stats").json()["jobs_created"] == 1


def test_an_empty_api_key_is_refused() -> None:
    with pytest.raises(EmulatorConfigError, match="empty"):
        create_app(api_key="")
    result = CliRunner().invoke(emulator_command, ["--api-key", ""])
    assert result.exit_code == 2
    assert "empty" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", ["missing folder", "not a database"])
def test_a_bad_db_path_is_one_clear_line(tmp_path: Path, case: str) -> None:
    if case == "missing folder":
        db = tmp_path / "nope" / "emu.sqlite"
    else:
        db = tmp_path / "notes.txt"
        db.write_text("this is not sqlite\n" * 100)
    result = CliRunner().invoke(emulator_command, ["--port", "0", "--db", str(db)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(db) in lines[0]
    assert "--db" in lines[0]
    assert "Traceback" not in result.output


def test_unauthenticated_requests_are_refused_before_the_body_is_read(make_emulator: Any) -> None:
    emu = make_emulator(api_key=API_KEY)
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        # Promise 1 GB and send none of it: the 401 must come back anyway.
        sock.sendall(
            b"POST /bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401")


def test_an_oversized_body_is_413_before_it_is_read(make_emulator: Any) -> None:
    emu = make_emulator(api_key=API_KEY)
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\n".encode()
            + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")
    assert b"over the limit" in head


def test_unauthenticated_requests_do_not_spend_rate_limit_tokens(make_emulator: Any) -> None:
    emu = make_emulator(api_key=API_KEY, faults="rate_limit=1")
    with client_for(emu, "wrong") as intruder:
        for _ in range(20):
            assert intruder.get("/messages").status_code == 401
    with client_for(emu) as client:
        assert client.get("/messages").status_code == 200


@pytest.mark.parametrize("value", [-1, "nan", "inf", "-inf", 1e300, "soon"])
def test_the_clock_refuses_bad_advances(make_emulator: Any, value: Any) -> None:
    emu = make_emulator()
    with client_for(emu, None) as client:
        before = client.post("/_emulator/clock", json={"advance_seconds": 0}).json()["now_ms"]
        r = client.post("/_emulator/clock", json={"advance_seconds": value})
        assert r.status_code == 400
        assert r.json()["type"] == "invalid_request_error"
        assert "advance_seconds" in r.json()["message"]
        after = client.post("/_emulator/clock", json={"advance_seconds": 0}).json()["now_ms"]
        assert after - before < 60_000
