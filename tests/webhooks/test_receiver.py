"""The receiver app: status codes, nothing stored for rejects, JSON log lines without secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulkbatch.errors import UsageError
from bulkbatch.webhooks import WebhookConfigError, WebhookStore, delivery_outcomes
from bulkbatch.webhooks.receiver import create_app
from bulkbatch.webhooks.server import WebhookReceiver
from tests.webhooks.helpers import PATH, SECRET, message_event, signed_headers


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "webhooks.sqlite"


@pytest.fixture
def client(store: Path) -> Iterator[httpx.Client]:
    """A client of a real receiver (uvicorn in a thread, 127.0.0.1, a free port)."""
    with (
        WebhookReceiver(store, secrets=SECRET, max_body_bytes=4096) as rx,
        httpx.Client(base_url=rx.url, timeout=10) as c,
    ):
        yield c


def stored(store: Path) -> int:
    with WebhookStore(store) as s:
        return s.count()


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "bulkbatch.webhooks" and "webhook_rejected" in r.getMessage()
    ]


def test_a_signed_event_is_stored_and_acknowledged(client: httpx.Client, store: Path) -> None:
    body = message_event("1-abc", "DELIVERED", delivered=1764000000000)
    r = client.post(PATH, content=body, headers=signed_headers(body))
    assert r.status_code == 200
    rows = delivery_outcomes(store).read_all().to_pylist()
    assert [(x["message_id"], x["delivery_status"]) for x in rows] == [("1-abc", "DELIVERED")]
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["committed"] == 1


@pytest.mark.parametrize("case", ["wrong_secret", "unsigned", "tampered", "malformed", "stale"])
def test_bad_signatures_get_401_and_are_stored_nowhere(
    client: httpx.Client, store: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    body = message_event("1-abc", "DELIVERED")
    headers = signed_headers(body)
    if case == "wrong_secret":
        headers = signed_headers(body, secret="not-the-secret")
    elif case == "unsigned":
        del headers["courier-signature"]
    elif case == "tampered":
        body = body.replace(b"DELIVERED", b"DELIVERE_")
    elif case == "malformed":
        headers["courier-signature"] = "t=now,signature=SECRET-LOOKING-VALUE"
    elif case == "stale":
        headers = signed_headers(body, t=1_600_000_000_000)
    with caplog.at_level(logging.INFO, logger="bulkbatch.webhooks"):
        r = client.post(PATH, content=body, headers=headers)
    assert r.status_code == 401
    assert stored(store) == 0
    lines = rejected_lines(caplog)
    assert len(lines) == 1
    assert lines[0]["status"] == 401
    assert str(lines[0]["reason"]).startswith("signature_")
    text = caplog.text
    assert SECRET not in text
    if "courier-signature" in headers:
        assert headers["courier-signature"] not in text
        assert headers["courier-signature"].split("signature=")[1] not in text


def test_wrong_content_type_is_415(client: httpx.Client, store: Path) -> None:
    body = message_event("1-abc", "SENT")
    headers = signed_headers(body) | {"content-type": "text/plain"}
    assert client.post(PATH, content=body, headers=headers).status_code == 415
    headers = signed_headers(body) | {"content-type": "application/json; charset=utf-8"}
    assert client.post(PATH, content=body, headers=headers).status_code == 200
    assert stored(store) == 1


def test_declared_oversize_is_413_before_reading(client: httpx.Client, store: Path) -> None:
    body = b'{"type":"message:updated","data":{"id":"x","status":"SENT","pad":"' + b"x" * 5000
    body += b'"}}'
    r = client.post(PATH, content=body, headers=signed_headers(body))
    assert r.status_code == 413
    assert stored(store) == 0


def test_bad_json_and_shape_are_400(client: httpx.Client, store: Path) -> None:
    for body in (b"{not json", b'{"type": "message:updated", "data": {"id": "x"}}', b"[]"):
        r = client.post(PATH, content=body, headers=signed_headers(body))
        assert r.status_code == 400, body
    assert stored(store) == 0


def test_only_post_is_allowed(client: httpx.Client) -> None:
    assert client.get(PATH).status_code == 405


def test_refuses_to_start_without_a_secret(store: Path) -> None:
    with pytest.raises(WebhookConfigError) as exc:
        create_app(store)
    assert isinstance(exc.value, UsageError)
    assert exc.value.exit_code == 2
    with pytest.raises(WebhookConfigError):
        create_app(store, secrets=SECRET, insecure_no_signature=True)


def test_insecure_mode_accepts_unsigned_events(store: Path) -> None:
    with (
        WebhookReceiver(store, insecure_no_signature=True) as rx,
        httpx.Client(base_url=rx.url) as client,
    ):
        body = message_event("m", "SENT")
        r = client.post(PATH, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert client.get("/healthz").json()["signatures"] is False
    assert stored(store) == 1


def test_chunked_oversize_is_413_while_streaming(store: Path) -> None:
    # a real server: the body has no Content-Length and grows past the limit mid-stream
    with WebhookReceiver(store, secrets=SECRET, max_body_bytes=4096) as rx:
        assert rx.host == "127.0.0.1"

        def chunks() -> Iterator[bytes]:
            yield b'{"type":"message:updated","data":{"pad":"'
            for _ in range(20):
                yield b"x" * 1000
            yield b'"}}'

        headers = {"content-type": "application/json", "courier-signature": "t=1,signature=0"}
        with httpx.Client(timeout=10) as http:
            r = http.post(rx.webhook_url, content=chunks(), headers=headers)
            assert r.status_code == 413
            body = message_event("m", "SENT")
            assert http.post(rx.webhook_url, content=body, headers=signed_headers(body)).is_success
    assert stored(store) == 1


def test_store_failure_is_503_so_courier_retries(store: Path) -> None:
    with WebhookReceiver(store, secrets=SECRET) as rx, httpx.Client(base_url=rx.url) as client:
        rx.app.state.writer.close()  # the writer is gone: events cannot be committed
        body = message_event("m", "SENT")
        assert client.post(PATH, content=body, headers=signed_headers(body)).status_code == 503
        assert client.get("/healthz").status_code == 503


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(store: Path) -> None:
    """A client that sends its headers and then only part of the body held a connection
    (and a task) for ever: each read waited for more. The body now has a deadline."""
    import socket
    import time

    with WebhookReceiver(store, secrets=SECRET, body_timeout=1.0) as rx:
        port = int(rx.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /webhooks/courier HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"type":'
            )
            started = time.monotonic()
            answer = b""
            while chunk := s.recv(4096):  # until the receiver closes the connection
                answer += chunk
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b'"body_timeout"' in answer
        assert waited < 8
        with httpx.Client(timeout=10) as http:  # the receiver still serves
            body = message_event("m", "SENT")
            assert http.post(rx.webhook_url, content=body, headers=signed_headers(body)).is_success
    assert stored(store) == 1
