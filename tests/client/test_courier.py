"""CourierClient over httpx.MockTransport: status mapping, retries, keys, secrets.

Retry-After parsing and its cap are in ``test_retry_after.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from bulkbatch.client.courier import (
    ClientStats,
    CourierClient,
    IngestResult,
    Job,
    MessageDetails,
    MessagesPage,
    RetryEvent,
    UsersPage,
)
from bulkbatch.client.ratelimit import AdaptiveLimiter
from bulkbatch.config import Settings
from bulkbatch.errors import (
    ApiError,
    ApiUnavailable,
    AuthenticationError,
    BadResponse,
    ClientError,
    JobAlreadyRun,
    JobAlreadySubmitted,
    NotFound,
    RateLimited,
    Retryable,
    ServerError,
    Terminal,
    UsageError,
)
from tests.client.support import JOB, SECRET, ManualClock, Recorder, err, make_client


@pytest.fixture
async def ok_client() -> AsyncIterator[tuple[CourierClient, Recorder]]:
    rec = Recorder(httpx.Response(201, json={"jobId": JOB}))
    async with make_client(rec) as client:
        yield client, rec


# -- happy paths ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_job_sends_message_key_and_headers(
    ok_client: tuple[CourierClient, Recorder],
) -> None:
    client, rec = ok_client
    job_id = await client.create_job({"event": "welcome"}, idempotency_key="run-1:create")
    assert job_id == JOB
    (req,) = rec.requests
    assert req.method == "POST"
    assert req.url == httpx.URL("https://api.courier.test/bulk")
    assert orjson.loads(req.content) == {"message": {"event": "welcome"}}
    assert req.headers["Idempotency-Key"] == "run-1:create"
    assert req.headers["Authorization"] == f"Bearer {SECRET}"
    assert req.headers["Accept"] == "application/json"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("bulkbatch/")


@pytest.mark.anyio
async def test_no_authorization_header_without_key() -> None:
    rec = Recorder(httpx.Response(201, json={"jobId": JOB}))
    async with make_client(rec, api_key=None) as client:
        await client.create_job({"event": "e"})
    assert "authorization" not in rec.requests[0].headers
    # Without a caller key, one is made up so that retries are still safe.
    assert rec.keys[0] and rec.keys[0].startswith("bulkbatch-")


@pytest.mark.anyio
async def test_create_job_without_job_id_is_an_error() -> None:
    rec = Recorder(httpx.Response(201, json={"id": "x"}))
    async with make_client(rec) as client:
        with pytest.raises(BadResponse, match="jobId is missing") as info:
            await client.create_job({"event": "e"})
    assert isinstance(info.value, ApiError) and isinstance(info.value, Terminal)
    assert len(rec.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_add_users_accepts_any_2xx_without_body(status: int) -> None:
    rec = Recorder(httpx.Response(status))
    async with make_client(rec) as client:
        result = await client.add_users(JOB, [{"recipient": "u1"}])
    assert result == IngestResult(status=status, total=None, errors=[])
    assert rec.requests[0].url.path == f"/bulk/{JOB}"
    assert orjson.loads(rec.requests[0].content) == {"users": [{"recipient": "u1"}]}


@pytest.mark.anyio
async def test_add_users_keeps_ingest_body() -> None:
    errors = [{"user": {"recipient": "u1"}, "error": "Duplicate user"}]
    rec = Recorder(httpx.Response(200, json={"total": 41, "errors": errors}))
    async with make_client(rec) as client:
        result = await client.add_users(JOB, [{"recipient": "u1"}, {"recipient": "u2"}])
    assert result == IngestResult(status=200, total=41, errors=errors)


@pytest.mark.anyio
async def test_add_users_sends_pre_encoded_bytes_as_is() -> None:
    body = b'{"users":[{"recipient":"a"},{"recipient":"b"}]}'
    rec = Recorder(httpx.Response(200, json={"total": 2}))
    async with make_client(rec) as client:
        result = await client.add_users(JOB, body, idempotency_key="k")
    assert rec.requests[0].content == body
    assert rec.requests[0].headers["content-type"] == "application/json"
    assert result.total == 2 and result.errors == []


@pytest.mark.anyio
@pytest.mark.parametrize("status", [202, 204, 200])
async def test_run_job_accepts_any_2xx(status: int) -> None:
    rec = Recorder(httpx.Response(status))
    async with make_client(rec) as client:
        assert await client.run_job(JOB, idempotency_key="run") is None
    assert rec.requests[0].url.path == f"/bulk/{JOB}/run"
    assert rec.requests[0].method == "POST"


@pytest.mark.anyio
async def test_retrieve_job_and_list_users() -> None:
    job = {
        "job": {
            "definition": {"event": "E"},
            "enqueued": 2,
            "failures": 0,
            "received": 3,
            "status": "PROCESSING",
        }
    }
    users = {
        "items": [{"recipient": "a", "status": "ENQUEUED", "messageId": "m1"}],
        "paging": {"cursor": "c2", "more": True},
    }
    last = {"items": [], "paging": {"cursor": None, "more": False}}
    rec = Recorder(
        httpx.Response(200, json=job),
        httpx.Response(200, json=users),
        httpx.Response(200, json=last),
    )
    async with make_client(rec) as client:
        assert await client.retrieve_job(JOB) == Job("PROCESSING", 2, 0, 3, {"event": "E"})
        page = await client.list_users(JOB)
        assert page == UsersPage(users["items"], "c2", True)
        assert await client.list_users(JOB, cursor="c2") == UsersPage([], None, False)
    assert "cursor" not in rec.requests[1].url.params
    assert rec.requests[2].url.params["cursor"] == "c2"
    assert rec.requests[0].method == "GET"
    assert "idempotency-key" not in rec.requests[0].headers


@pytest.mark.anyio
async def test_messages_endpoints_and_comma_joined_lists() -> None:
    msg = {"id": "m1", "status": "DELIVERED"}
    page = {"results": [msg], "paging": {"cursor": "n", "more": True}}
    rec = Recorder(httpx.Response(200, json=msg), httpx.Response(200, json=page))
    async with make_client(rec) as client:
        details = await client.retrieve_message("m1")
        assert details == MessageDetails("m1", "DELIVERED")
        assert details.raw == msg and details.get("status") == "DELIVERED"
        got = await client.list_messages(
            status=["SENT", "DELIVERED"], provider=("a", "b"), archived=False, tag=None, event="E"
        )
    assert got == MessagesPage([MessageDetails("m1", "DELIVERED")], "n", True)
    assert rec.requests[0].url.path == "/messages/m1"
    params = rec.requests[1].url.params
    assert params["status"] == "SENT,DELIVERED"
    assert params["provider"] == "a,b"
    assert params["archived"] == "false"
    assert params["event"] == "E"
    assert "tag" not in params


@pytest.mark.anyio
async def test_empty_ids_are_refused_client_side(
    ok_client: tuple[CourierClient, Recorder],
) -> None:
    client, rec = ok_client
    with pytest.raises(ValueError, match="job id"):
        await client.run_job("")
    with pytest.raises(ValueError, match="message id"):
        await client.retrieve_message("")
    assert rec.requests == []


@pytest.mark.anyio
async def test_ids_are_escaped_in_paths(ok_client: tuple[CourierClient, Recorder]) -> None:
    client, rec = ok_client
    rec.script = [httpx.Response(202)]
    await client.run_job("a/../b")
    assert rec.requests[0].url.raw_path == b"/bulk/a%2F..%2Fb/run"


# -- error mapping ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "exc_type", "text"),
    [
        (err(401, "Unauthorized"), AuthenticationError, "Check COURIER_API_KEY"),
        (err(403, "Forbidden"), AuthenticationError, "workspace of COURIER_BASE_URL"),
        (err(404, "Not Found"), NotFound, f"No bulk job {JOB}"),
        (err(400, "BulkJobAlreadySubmittedError"), JobAlreadySubmitted, "already run"),
        (err(400, "BulkJobDuplicateInvocationError"), JobAlreadyRun, "runs only once"),
        (err(400, "The 'event' parameter is required."), ClientError, "'event' parameter"),
        (err(422, "nope"), ClientError, "HTTP 422: nope (invalid_request_error)"),
        (httpx.Response(418, text="<html>" + "x" * 500), ClientError, "<html>xxx"),
    ],
)
async def test_terminal_statuses_map_to_the_tree_and_are_not_retried(
    response: httpx.Response, exc_type: type[Exception], text: str
) -> None:
    rec = Recorder(response)
    clock = ManualClock()
    async with make_client(rec, clock=clock) as client:
        with pytest.raises(exc_type) as info:
            await client.run_job(JOB)
    assert type(info.value) is exc_type
    assert isinstance(info.value, Terminal)
    assert text in str(info.value)
    assert f"POST /bulk/{JOB}/run failed with HTTP {response.status_code}" in str(info.value)
    assert len(rec.requests) == 1
    assert clock.sleeps == []


@pytest.mark.anyio
async def test_non_json_error_body_is_cut_to_200_characters() -> None:
    rec = Recorder(httpx.Response(400, text="y" * 1000))
    async with make_client(rec) as client:
        with pytest.raises(ClientError) as info:
            await client.retrieve_job(JOB)
    assert info.value.api_message == "y" * 200
    assert info.value.status == 400
    assert info.value.path == f"/bulk/{JOB}"


@pytest.mark.anyio
async def test_404_hint_names_the_message_id() -> None:
    rec = Recorder(err(404, "Not Found"))
    async with make_client(rec) as client:
        with pytest.raises(NotFound, match="No message m-42 is visible"):
            await client.retrieve_message("m-42")


@pytest.mark.anyio
async def test_request_id_is_reported() -> None:
    rec = Recorder(err(400, "bad", headers={"x-request-id": "req-7"}))
    async with make_client(rec) as client:
        with pytest.raises(ClientError, match=r"\[request id req-7\]"):
            await client.create_job({"event": "e"})


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_429_is_retried_with_the_same_key_and_honours_retry_after() -> None:
    rec = Recorder(
        err(429, "Too Many", headers={"Retry-After": "7"}), httpx.Response(201, json={"jobId": JOB})
    )
    clock = ManualClock()
    calls: list[RetryEvent] = []
    async with make_client(rec, clock=clock, on_retry=calls.append) as client:
        assert await client.create_job({"event": "e"}, idempotency_key="K") == JOB
        stats = client.stats
    assert rec.keys == ["K", "K"]
    # The limiter pauses everyone for 7 s and the retry waits at least 7 s.
    assert sum(clock.sleeps) >= 7.0
    (event,) = calls
    assert (event.method, event.path, event.attempt, event.max_attempts) == ("POST", "/bulk", 1, 4)
    assert event.status == 429 and event.throttled and event.will_retry
    assert event.reason == "HTTP 429 rate limited; Retry-After 7 s"
    assert event.wait >= 7.0
    assert stats.requests == 2 and stats.retries == 1 and stats.throttled == 1
    assert stats.status_counts == {429: 1, 201: 1}


@pytest.mark.anyio
async def test_add_users_rotates_key_after_5xx_but_not_after_429_or_timeouts() -> None:
    rec = Recorder(
        err(500, "Internal"),
        httpx.ReadTimeout("slow"),
        err(503, "Unavailable"),
        err(429, "Too many", headers={"Retry-After": "1"}),
        httpx.Response(200, json={"total": 10, "errors": []}),
    )
    async with make_client(rec, max_attempts=5) as client:
        result = await client.add_users(JOB, [{"recipient": "u"}], idempotency_key="run:b7")
    assert result.total == 10
    assert rec.keys == [
        "run:b7",
        "run:b7:retry-1",
        "run:b7:retry-1",
        "run:b7:retry-2",
        "run:b7:retry-2",
    ]
    # The same body every time.
    assert len({r.content for r in rec.requests}) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["create_job", "run_job"])
async def test_create_and_run_never_rotate_the_key(method: str) -> None:
    ok = httpx.Response(201, json={"jobId": JOB})
    rec = Recorder(err(500), err(502), ok)
    async with make_client(rec) as client:
        if method == "create_job":
            await client.create_job({"event": "e"}, idempotency_key="K")
        else:
            await client.run_job(JOB, idempotency_key="K")
    assert rec.keys == ["K", "K", "K"]


@pytest.mark.anyio
@pytest.mark.parametrize("jitter", ["drawn", "tiny"])
async def test_5xx_gives_up_after_max_attempts_with_a_note(
    jitter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tiny``: a full-jitter draw under the limiter's token interval (1 ms at 1,000/s),
    so the next try also waits for its token: the fake clock then records three sleeps for
    two backoff waits (CI saw it once)."""
    if jitter == "tiny":
        monkeypatch.setattr("bulkbatch.client.retry.random.uniform", lambda a, b: 0.0005)
    rec = Recorder(err(500, "Internal Server Error"))
    clock = ManualClock()
    events: list[RetryEvent] = []
    async with make_client(rec, clock=clock, max_attempts=3, on_retry=events.append) as client:
        with pytest.raises(ServerError) as info:
            await client.retrieve_job(JOB)
    assert len(rec.requests) == 3
    assert "gave up after 3 attempts" in str(info.value)
    assert any("gave up after 3 attempts" in n for n in info.value.__notes__ or [])
    assert "--max-attempts (max_attempts=)" in str(info.value)
    assert isinstance(info.value, Retryable)
    waits = [e.wait for e in events if e.will_retry]
    assert len(waits) == 2  # two backoff waits...
    assert all(w in clock.sleeps for w in waits)  # ...both on the fake clock, none real
    assert sum(clock.sleeps) < sum(waits) + 0.01  # and nothing else waited longer than a token


@pytest.mark.anyio
async def test_dropped_connection_is_retried_then_api_unavailable() -> None:
    rec = Recorder(httpx.RemoteProtocolError("Server disconnected without sending a response."))
    async with make_client(rec, max_attempts=4) as client:
        with pytest.raises(ApiUnavailable) as info:
            await client.add_users(JOB, [{"recipient": "u"}], idempotency_key="k")
        assert client.stats.transport_errors == 4
    text = str(info.value)
    assert f"POST /bulk/{JOB}" in text
    assert "api.courier.test" in text
    assert "RemoteProtocolError" in text
    assert "after 4 attempts" in text
    assert rec.keys == ["k"] * 4  # no 5xx answer, so no rotation


@pytest.mark.anyio
async def test_timeout_then_success() -> None:
    rec = Recorder(httpx.ConnectTimeout("connect"), httpx.Response(202))
    async with make_client(rec) as client:
        await client.run_job(JOB, idempotency_key="r")
    assert rec.keys == ["r", "r"]


@pytest.mark.anyio
async def test_5xx_retry_after_is_honoured() -> None:
    rec = Recorder(err(503, headers={"Retry-After": "12"}), httpx.Response(202))
    clock = ManualClock()
    async with make_client(rec, clock=clock) as client:
        await client.run_job(JOB)
    assert clock.sleeps and clock.sleeps[-1] >= 12.0


@pytest.mark.anyio
async def test_every_attempt_takes_a_limiter_token_and_reports() -> None:
    class SpyLimiter(AdaptiveLimiter):
        def __init__(self) -> None:
            super().__init__(100.0, clock=ManualClock())
            self.log: list[str] = []

        async def acquire(self) -> None:
            self.log.append("acquire")

        def on_success(self) -> None:
            self.log.append("ok")

        def on_throttled(self, retry_after: float | None, *, sent_at: float | None = None) -> None:
            self.log.append(f"429:{retry_after}")

    spy = SpyLimiter()
    rec = Recorder(err(429, headers={"retry-after-ms": "250"}), err(500), httpx.Response(202))
    settings = Settings(base_url="https://x.test", max_attempts=5)
    async with CourierClient(
        settings, transport=httpx.MockTransport(rec), limiter=spy, clock=ManualClock()
    ) as client:
        await client.run_job(JOB)
    assert spy.log == ["acquire", "429:0.25", "acquire", "acquire", "ok"]


# -- secrets ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_api_key_never_in_errors_or_reprs() -> None:
    echo = err(401, f"Invalid key {SECRET}")
    rec = Recorder(echo)
    settings = Settings(base_url="https://api.courier.test", api_key=SECRET)
    assert SECRET not in repr(settings)
    async with make_client(rec) as client:
        assert SECRET not in repr(client)
        assert SECRET not in repr(client.stats)
        with pytest.raises(AuthenticationError) as info:
            await client.create_job({"event": "e"})
        assert SECRET not in str(info.value)
        assert SECRET not in repr(info.value)
        assert "***" in str(info.value)
        rec.script = [httpx.ConnectError(f"failed for {SECRET}")]
        with pytest.raises(ApiUnavailable) as info2:
            await client.run_job(JOB)
        assert SECRET not in str(info2.value)
    # And the key was really sent, so the checks above can fail.
    assert rec.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_stats_default() -> None:
    assert ClientStats() == ClientStats(0, 0, 0, {}, 0)


# -- retries are visible ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_on_retry_reports_every_retry_and_every_throttle_without_header_values() -> None:
    rec = Recorder(
        err(503, headers={"Retry-After": "2"}),
        httpx.ReadTimeout("slow"),
        err(429, headers={"Retry-After": "600"}),
        err(429),
    )
    events: list[RetryEvent] = []
    async with make_client(rec, max_attempts=4, on_retry=events.append) as client:
        with pytest.raises(RateLimited):
            await client.add_users(JOB, [{"recipient": "u"}], idempotency_key="run:b1")
    assert [(e.attempt, e.status, e.will_retry) for e in events] == [
        (1, 503, True),
        (2, None, True),
        (3, 429, True),
        (4, 429, False),  # a throttle with no retry after it is still reported
    ]
    assert [e.reason for e in events] == [
        "HTTP 503; Retry-After 2 s",
        "ReadTimeout (no answer in 30 s)",
        "HTTP 429 rate limited; Retry-After 600 s capped at 30 s (--max-backoff (max_backoff=))",
        "HTTP 429 rate limited",
    ]
    assert all(e.method == "POST" and e.path == f"/bulk/{JOB}" for e in events)
    assert all(e.max_attempts == 4 for e in events)
    assert events[0].wait >= 2.0 and events[2].wait == 30.0 and events[3].wait == 0.0
    assert events[3].throttled and not events[1].throttled
    shown = " ".join(f"{e} {e!r}" for e in events)
    for secret in (SECRET, "run:b1", "Bearer"):
        assert secret not in shown
    assert str(events[0]) == (
        f"POST /bulk/{JOB}: attempt 1 of 4 failed (HTTP 503; Retry-After 2 s); "
        f"retrying in {events[0].wait:.1f} s"
    )


@pytest.mark.anyio
async def test_terminal_errors_are_not_reported_as_retries() -> None:
    events: list[RetryEvent] = []
    async with make_client(Recorder(err(400, "bad")), on_retry=events.append) as client:
        with pytest.raises(ClientError):
            await client.run_job(JOB)
    assert events == []


@pytest.mark.anyio
async def test_timeout_message_names_the_http_timeout_setting() -> None:
    rec = Recorder(httpx.ReadTimeout("timed out"))
    async with make_client(rec, max_attempts=1) as client:
        with pytest.raises(ApiUnavailable) as info:
            await client.retrieve_job(JOB)
    text = str(info.value)
    assert "raise --http-timeout (http_timeout=); now 30 s" in text
    assert "--timeout" not in text.replace("--http-timeout", "")
    assert "--max-attempts" not in text and "--max-backoff" not in text


@pytest.mark.anyio
async def test_give_up_note_names_the_flag_and_keyword() -> None:
    rec = Recorder(err(500))
    async with make_client(rec, max_attempts=2) as client:
        with pytest.raises(ServerError) as info:
            await client.retrieve_job(JOB)
    assert str(info.value).endswith(
        "(gave up after 2 attempts; allow more with --max-attempts (max_attempts=))"
    )


def test_unsupported_scheme_is_a_usage_error_not_a_network_one() -> None:
    with pytest.raises(UsageError, match="must start with https://"):  # before any request
        Settings(base_url="ftp://api.courier.test", api_key=SECRET)


@pytest.mark.anyio
async def test_a_redirect_is_never_followed() -> None:
    moved = httpx.Response(301, headers={"Location": "https://evil.example/bulk?key=1"})
    rec = Recorder(moved, httpx.Response(200, json={"jobId": JOB}))
    async with make_client(rec) as client:
        with pytest.raises(BadResponse) as info:
            await client.create_job({"event": "e"})
    assert len(rec.requests) == 1
    text = str(info.value)
    assert "redirect to https://evil.example," in text and "key=1" not in text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"job": {"status": "DONE", "enqueued": 0, "failures": 0, "received": 0}}, "job.status"),
        ({"job": {"status": "COMPLETED", "enqueued": 1, "failures": 0}}, "job.received is missing"),
        ({"job": {"status": "COMPLETED", "enqueued": True, "failures": 0, "received": 1}}, "True"),
        (
            {"job": {"status": "COMPLETED", "enqueued": -1, "failures": 0, "received": 1}},
            "negative",
        ),
        ({"job": []}, "job is [], not an object"),
        ([], "the body is [], not an object"),
    ],
)
async def test_wrong_job_shapes_are_bad_responses(body: Any, problem: str) -> None:
    async with make_client(Recorder(httpx.Response(200, json=body))) as client:
        with pytest.raises(BadResponse, match=problem.replace("[", r"\[").replace("]", r"\]")):
            await client.retrieve_job(JOB)


@pytest.mark.anyio
async def test_a_malformed_ingest_body_is_a_bad_response() -> None:
    rec = Recorder(httpx.Response(200, json={"total": "x", "errors": []}))
    async with make_client(rec) as client:
        with pytest.raises(BadResponse, match="total is 'x', not an integer"):
            await client.add_users(JOB, [{"recipient": "a"}])
