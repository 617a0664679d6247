"""The Messages API methods: typed answers, SDK filter names, cancel's 409, resend."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from bulkbatch.client.courier import (
    HistoryEvent,
    MessageContent,
    MessageDetails,
    MessageHistory,
    MessagesPage,
)
from bulkbatch.client.models import RenderedBlock, RenderedContent, RenderOutput
from bulkbatch.errors import BadResponse, ClientError, NotFound
from tests.client.support import Recorder, make_client

MESSAGE: dict[str, Any] = {
    "id": "1-abc",
    "status": "DELIVERED",
    "enqueued": 1_700_000_000_000,
    "sent": 1_700_000_001_000,
    "delivered": 1_700_000_002_000,
    "recipient": "u1",
    "event": "welcome",
    "notification": "N1",
    "error": None,
    "reason": None,
    "providers": [{"provider": "sendgrid", "status": "DELIVERED"}],
}


@pytest.mark.anyio
async def test_retrieve_message_is_typed() -> None:
    rec = Recorder(httpx.Response(200, json=MESSAGE))
    async with make_client(rec) as client:
        m = await client.retrieve_message("1-abc")
    assert m == MessageDetails(
        id="1-abc",
        status="DELIVERED",
        enqueued=1_700_000_000_000,
        sent=1_700_000_001_000,
        delivered=1_700_000_002_000,
        recipient="u1",
        event="welcome",
        notification="N1",
        providers=[{"provider": "sendgrid", "status": "DELIVERED"}],
    )
    assert m.opened is None and m.clicked is None and m.raw == MESSAGE
    assert rec.requests[0].url.path == "/messages/1-abc"


@pytest.mark.anyio
async def test_list_messages_takes_the_sdk_filters() -> None:
    page = {"results": [MESSAGE], "paging": {"cursor": None, "more": False}}
    rec = Recorder(httpx.Response(200, json=page))
    async with make_client(rec) as client:
        got = await client.list_messages(
            archived=True,
            cursor="c",
            enqueued_after="2026-01-01T00:00:00Z",
            event="welcome",
            list_id="L",
            message_id="1-abc",
            notification="N1",
            provider=["sendgrid", "twilio"],
            recipient="u1",
            status=("DELIVERED", "SENT"),
            tag="t1",
            tags="a,b",
            tenant_id="T",
            trace_id="tr",
        )
    assert isinstance(got, MessagesPage) and got.results[0].id == "1-abc"
    assert got.cursor is None and got.more is False
    assert dict(rec.requests[0].url.params) == {
        "archived": "true",
        "cursor": "c",
        "enqueued_after": "2026-01-01T00:00:00Z",
        "event": "welcome",
        "list": "L",
        "messageId": "1-abc",
        "notification": "N1",
        "provider": "sendgrid,twilio",
        "recipient": "u1",
        "status": "DELIVERED,SENT",
        "tag": "t1",
        "tags": "a,b",
        "tenant_id": "T",
        "traceId": "tr",
    }


@pytest.mark.anyio
async def test_message_content() -> None:
    body = {
        "results": [
            {
                "channel": "email",
                "channel_id": "ch1",
                "content": {
                    "html": "<p>Hi</p>",
                    "title": "T",
                    "body": "B",
                    "subject": "S",
                    "text": "Hi",
                    "blocks": [{"type": "text", "text": "Hi"}],
                },
            }
        ]
    }
    rec = Recorder(httpx.Response(200, json=body))
    async with make_client(rec) as client:
        got = await client.message_content("1-abc")
    assert got == MessageContent(
        [
            RenderOutput(
                "email",
                "ch1",
                RenderedContent("<p>Hi</p>", "T", "B", "S", "Hi", [RenderedBlock("text", "Hi")]),
            )
        ]
    )
    assert rec.requests[0].url.path == "/messages/1-abc/output"


@pytest.mark.anyio
async def test_message_history_with_a_type_filter() -> None:
    body = {"results": [{"type": "ENQUEUED", "ts": 1, "event": "welcome"}, {"type": "SENT"}]}
    rec = Recorder(httpx.Response(200, json=body))
    async with make_client(rec) as client:
        got = await client.message_history("1-abc", type="ENQUEUED")
    assert got == MessageHistory([HistoryEvent("ENQUEUED", 1), HistoryEvent("SENT", None)])
    assert got.results[0].raw["event"] == "welcome"
    assert rec.requests[0].url.path == "/messages/1-abc/history"
    assert rec.requests[0].url.params["type"] == "ENQUEUED"


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "state"), [(200, "CANCELED"), (409, "DELIVERED")])
async def test_cancel_returns_the_record_on_200_and_409(status: int, state: str) -> None:
    rec = Recorder(httpx.Response(status, json={**MESSAGE, "status": state}))
    async with make_client(rec) as client:
        got = await client.cancel_message("1-abc", idempotency_key="cancel-1")
    assert got.status == state
    req = rec.requests[0]
    assert (req.method, req.url.path) == ("POST", "/messages/1-abc/cancel")
    assert req.headers["idempotency-key"] == "cancel-1"
    assert req.content == b"" and "content-type" not in req.headers


@pytest.mark.anyio
async def test_resend_returns_the_new_message_id() -> None:
    rec = Recorder(httpx.Response(200, json={"messageId": "1-new"}))
    async with make_client(rec) as client:
        assert await client.resend_message("1-abc") == "1-new"
    assert rec.requests[0].url.path == "/messages/1-abc/resend"
    assert rec.requests[0].headers["idempotency-key"].startswith("bulkbatch-")


@pytest.mark.anyio
async def test_message_errors_map_to_the_tree() -> None:
    rec = Recorder(
        httpx.Response(404, json={"message": "Not Found"}),
        httpx.Response(400, json={"message": "bad"}),
        httpx.Response(200, json={"id": "m", "status": "SENT", "sent": "yesterday"}),
    )
    async with make_client(rec) as client:
        with pytest.raises(NotFound, match="No message m is visible"):
            await client.message_content("m")
        with pytest.raises(ClientError):
            await client.message_history("m")
        with pytest.raises(BadResponse, match="sent is 'yesterday', not an integer"):
            await client.retrieve_message("m")


@pytest.mark.anyio
async def test_list_message_results_are_checked() -> None:
    page = {"results": [{"status": "SENT"}], "paging": {"more": False}}
    rec = Recorder(httpx.Response(200, content=orjson.dumps(page)))
    async with make_client(rec) as client:
        with pytest.raises(BadResponse, match=r"results\[0\]\.id is missing"):
            await client.list_messages()
