"""The Bulk API over real HTTP: the official SDK for the happy path, raw httpx for errors."""

from __future__ import annotations

import concurrent.futures
import re
from typing import Any

import httpx
import pytest

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import (
    API_KEY,
    INGESTED,
    all_users,
    client_for,
    create_job,
    flavor_of,
)

ID_RE = re.compile(r"^1-[0-9a-f]{8}-[0-9a-f]{24}$")
NOT_FOUND = {"message": "Not Found", "type": "invalid_request_error"}


def users(n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"recipient": f"u{i}", "profile": {"email": f"u{i}@example.com"}, **extra}
        for i in range(start, start + n)
    ]


def test_sdk_flow_create_ingest_run_retrieve_page_and_message(sdk: Any, emu: Emulator) -> None:
    job = sdk.bulk.create_job(message={"event": "welcome", "data": {"plan": "pro"}})
    assert ID_RE.match(job.job_id)

    raw = sdk.bulk.with_raw_response.add_users(job.job_id, users=users(150))
    assert raw.status_code == 200
    assert raw.http_response.json() == {"total": 150, "errors": []}
    raw = sdk.bulk.with_raw_response.add_users(job.job_id, users=users(100, start=150))
    assert raw.json() == {"total": 250, "errors": []}

    assert sdk.bulk.run_job(job.job_id) is None
    first = sdk.bulk.retrieve_job(job.job_id)
    assert first.job.status == "PROCESSING"
    assert first.job.received == 250
    second = sdk.bulk.retrieve_job(job.job_id)  # polls:2 → the 2nd poll completes
    assert (second.job.status, second.job.enqueued, second.job.failures) == ("COMPLETED", 250, 0)
    assert second.job.definition.event == "welcome"

    seen: list[Any] = []
    page = sdk.bulk.list_users(job.job_id)
    pages = 1
    while page.paging.more:
        assert len(page.items) == 100
        seen.extend(page.items)
        page = sdk.bulk.list_users(job.job_id, cursor=page.paging.cursor)
        pages += 1
    seen.extend(page.items)
    assert pages == 3
    assert page.paging.cursor is None
    assert [u.recipient for u in seen] == [f"u{i}" for i in range(250)]
    assert {u.status for u in seen} == {"ENQUEUED"}
    message_ids = {u.message_id for u in seen}
    assert len(message_ids) == 250
    assert all(ID_RE.match(m) for m in message_ids)

    message = sdk.messages.retrieve(seen[0].message_id)
    assert message.id == seen[0].message_id
    assert message.status == "ENQUEUED"
    assert message.recipient == "u0"
    assert message.event == "welcome"
    assert isinstance(message.enqueued, int) and message.enqueued > 1_600_000_000_000


def test_sdk_accepts_nested_message_shape(sdk: Any) -> None:
    job = sdk.bulk.create_job(
        message={"message": {"template": "TPL1"}, "data": {"company": "Acme"}}  # type: ignore[typeddict-item]
    )
    assert ID_RE.match(job.job_id)
    got = sdk.bulk.retrieve_job(job.job_id)
    assert got.job.definition.to_dict() == {
        "message": {"template": "TPL1"},
        "data": {"company": "Acme"},
    }


def test_duplicates_are_reported_per_user_and_total_is_cumulative(http: httpx.Client) -> None:
    job = create_job(http)
    r = http.post(f"/bulk/{job}", json={"users": users(3)})
    assert r.json() == {"total": 3, "errors": []}
    again = [{"recipient": "u1", "data": {"x": 1}}, {"recipient": "new"}, {"recipient": "new"}]
    r = http.post(f"/bulk/{job}", json={"users": again})
    assert r.status_code == 200
    assert r.json() == {
        "total": 4,
        "errors": [
            {"user": {"recipient": "u1", "data": {"x": 1}}, "error": "Duplicate user"},
            {"user": {"recipient": "new"}, "error": "Duplicate user"},
        ],
    }
    # The first copy wins: the stored u1 keeps its original payload.
    stored = {u["recipient"]: u for u in all_users(http, job)}
    assert stored["u1"]["profile"] == {"email": "u1@example.com"}
    assert "data" not in stored["u1"]


def test_users_without_recipient_get_a_generated_one_and_never_dedupe(http: httpx.Client) -> None:
    job = create_job(http)
    body = {"users": [{"to": {"user_id": "spike"}}, {"to": {"user_id": "spike"}}]}
    assert http.post(f"/bulk/{job}", json=body).json() == {"total": 2, "errors": []}
    assert http.post(f"/bulk/{job}", json=body).json() == {"total": 4, "errors": []}
    items = all_users(http, job)
    recipients = [u["recipient"] for u in items]
    assert len(set(recipients)) == 4
    assert all(isinstance(r, str) and len(r) >= 16 for r in recipients)
    assert all(u["status"] == "PENDING" and "messageId" not in u for u in items)


def test_a_user_that_is_not_an_object_is_an_ingestion_error(http: httpx.Client) -> None:
    job = create_job(http)
    r = http.post(f"/bulk/{job}", json={"users": ["oops", {"recipient": "ok"}]})
    assert r.json() == {
        "total": 1,
        "errors": [{"user": "oops", "error": "Error occurred during ingestion"}],
    }


def test_ingest_after_run_and_second_run_are_400(http: httpx.Client) -> None:
    job = create_job(http)
    http.post(f"/bulk/{job}", json={"users": users(1)})
    r = http.post(f"/bulk/{job}/run")
    assert (r.status_code, r.content) == (202, b"")
    r = http.post(f"/bulk/{job}", json={"users": users(1, start=5)})
    assert r.status_code == 400
    assert r.json() == {"message": "BulkJobAlreadySubmittedError", "type": "invalid_request_error"}
    r = http.post(f"/bulk/{job}/run")
    assert r.status_code == 400
    assert r.json() == {
        "message": "BulkJobDuplicateInvocationError",
        "type": "invalid_request_error",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/bulk/1-00000000-000000000000000000000000"),
        ("GET", "/bulk/nope/users"),
        ("POST", "/bulk/nope/run"),
        ("GET", "/messages/1-00000000-000000000000000000000000"),
        ("GET", "/messages/nope/output"),
        ("POST", "/bulk/{job}/users"),  # ingest has no /users suffix
        ("GET", "/no/such/path"),
    ],
)
def test_unknown_jobs_messages_and_paths_are_404(
    http: httpx.Client, method: str, path: str
) -> None:
    job = create_job(http)
    r = http.request(method, path.format(job=job), json={"users": []})
    assert r.status_code == 404
    assert r.json() == NOT_FOUND


def test_ingest_into_unknown_job_is_404(http: httpx.Client) -> None:
    r = http.post("/bulk/1-00000000-000000000000000000000000", json={"users": users(1)})
    assert (r.status_code, r.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "The 'message' parameter is required."),
        ({"message": None}, "The 'message' parameter is required."),
        ({"message": {"data": {"a": 1}}}, "The 'event' parameter is required."),
        ({"message": {"message": {"routing": {}}}}, "The 'event' parameter is required."),
        ({"message": {"event": ""}}, "The 'event' parameter is required."),
    ],
)
def test_create_job_validation(http: httpx.Client, body: dict[str, Any], message: str) -> None:
    r = http.post("/bulk", json=body)
    assert r.status_code == 400
    assert r.json() == {"message": message, "type": "invalid_request_error"}


@pytest.mark.parametrize("message", [{"template": "T"}, {"content": {"title": "a", "body": "b"}}])
def test_create_job_accepts_template_or_content_without_event(
    http: httpx.Client, message: dict[str, Any]
) -> None:
    assert http.post("/bulk", json={"message": message}).status_code == 201


@pytest.mark.parametrize("body", [{}, {"users": None}, {"users": {"recipient": "x"}}, []])
def test_ingest_requires_users_array(http: httpx.Client, body: object) -> None:
    job = create_job(http)
    r = http.post(f"/bulk/{job}", json=body)
    assert r.status_code == 400
    assert r.json() == {
        "message": "The 'users' parameter is required.",
        "type": "invalid_request_error",
    }


def test_invalid_json_is_400_with_a_clear_message(http: httpx.Client) -> None:
    job = create_job(http)
    for path in ("/bulk", f"/bulk/{job}"):
        r = http.post(path, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert r.json()["type"] == "invalid_request_error"
        assert r.json()["message"].startswith("The request body is not valid JSON")


def test_auth_is_required_when_a_key_is_configured(emu: Emulator) -> None:
    for key in (None, "wrong-key"):
        with client_for(emu, key) as client:
            for method, path in (("POST", "/bulk"), ("GET", "/bulk/x"), ("GET", "/messages")):
                r = client.request(method, path, json={"message": {"event": "e"}})
                assert r.status_code == 401
                assert r.json() == {"message": "Unauthorized", "type": "authentication_error"}
    assert emu.stats()["jobs_created"] == 0


def test_no_auth_needed_without_a_configured_key(make_emulator: Any) -> None:
    emu = make_emulator()
    with client_for(emu, None) as client:
        assert client.post("/bulk", json={"message": {"event": "e"}}).status_code == 201


def test_more_than_max_users_per_call_is_502_and_nothing_is_stored(http: httpx.Client) -> None:
    job = create_job(http)
    assert http.post(f"/bulk/{job}", json={"users": users(1000)}).json()["total"] == 1000
    r = http.post(f"/bulk/{job}", json={"users": users(1001, start=1000)})
    assert r.status_code == 502
    assert r.json()["type"] == "api_error"
    assert "1001" in r.json()["message"]
    assert http.get(f"/bulk/{job}").json()["job"]["received"] == 1000


def test_max_users_per_call_is_configurable(make_emulator: Any) -> None:
    emu = make_emulator(faults="max_users_per_call=10")
    with client_for(emu, None) as client:
        job = create_job(client)
        assert client.post(f"/bulk/{job}", json={"users": users(10)}).status_code == 200
        assert client.post(f"/bulk/{job}", json={"users": users(11)}).status_code == 502


def test_bad_cursor_is_400(http: httpx.Client) -> None:
    job = create_job(http)
    for cursor in ("!!!", "eyJ4IjoxfQ"):  # garbage; valid base64 JSON of the wrong shape
        r = http.get(f"/bulk/{job}/users", params={"cursor": cursor})
        assert r.status_code == 400
        assert r.json()["type"] == "invalid_request_error"
        assert "cursor" in r.json()["message"]


def test_empty_job_lists_no_users(http: httpx.Client) -> None:
    job = create_job(http)
    r = http.get(f"/bulk/{job}/users")
    assert r.json() == {"items": [], "paging": {"cursor": None, "more": False}}


def test_get_job_shows_definition_as_sent(http: httpx.Client) -> None:
    message = {"event": "E1", "brand": "B", "locale": {"fr": {}}, "data": {"k": [1, 2]}}
    job = create_job(http, message)
    assert http.get(f"/bulk/{job}").json() == {
        "job": {
            "definition": message,
            "enqueued": 0,
            "failures": 0,
            "received": 0,
            "status": "CREATED",
        }
    }


def test_stats_count_the_most_ingests_in_flight(make_emulator: Any) -> None:
    """``most_ingests_in_flight``: how many ``POST /bulk/{id}`` a client kept open at once
    (this process), counted from arrival to answer, so the latency fault is inside it."""
    emu = make_emulator(api_key=API_KEY, faults="latency_ms=500")  # all five overlap
    with client_for(emu) as client:
        job_id = create_job(client)
        assert client.get("/_emulator/stats").json()["most_ingests_in_flight"] == 0

        def ingest(start: int) -> int:
            r = client.post(f"/bulk/{job_id}", json={"users": users(5, start=start)})
            return r.status_code

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            codes = list(pool.map(ingest, range(0, 25, 5)))
        assert codes == [INGESTED[flavor_of(client)]] * 5
        client.post(f"/bulk/{job_id}", json={"users": users(5, start=25)})  # one alone
        stats = client.get("/_emulator/stats").json()
        assert stats["most_ingests_in_flight"] == 5 and stats["ingest_attempts"] == 6
        client.post("/_emulator/reset")
        assert client.get("/_emulator/stats").json()["most_ingests_in_flight"] == 0
