"""The ``current`` flavor (the default): OpenAPI answers and strict request validation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import API_KEY, all_users, client_for, create_job

BAD = "invalid_request_error"


@pytest.fixture
def current(make_emulator: Any) -> Iterator[httpx.Client]:
    emu = make_emulator(flavor="current", api_key=API_KEY, progression="immediate")
    with client_for(emu) as client:
        yield client


def test_the_default_flavor_is_current() -> None:
    assert Emulator().flavor == "current"


def test_sdk_flow_answers_200_204_204(make_emulator: Any) -> None:
    from courier import Courier

    emu = make_emulator(flavor="current", api_key=API_KEY)
    sdk = Courier(api_key=API_KEY, base_url=emu.url, max_retries=0)
    raw = sdk.bulk.with_raw_response.create_job(message={"event": "welcome"})
    assert raw.status_code == 200
    job_id = raw.parse().job_id
    users = [{"recipient": f"u{i}", "profile": {"email": f"u{i}@example.com"}} for i in range(3)]
    ingest = sdk.bulk.with_raw_response.add_users(job_id, users=users)
    assert (ingest.status_code, ingest.http_response.content) == (204, b"")
    run = sdk.bulk.with_raw_response.run_job(job_id)
    assert (run.status_code, run.http_response.content) == (204, b"")
    assert sdk.bulk.retrieve_job(job_id).job.received == 3
    sdk.close()


def test_duplicates_are_still_stored_once_without_a_body(current: httpx.Client) -> None:
    job = create_job(current)
    body = {"users": [{"recipient": "a"}, {"recipient": "a"}, {"recipient": "b"}]}
    r = current.post(f"/bulk/{job}", json=body)
    assert (r.status_code, r.content) == (204, b"")
    assert current.get(f"/bulk/{job}").json()["job"]["received"] == 2
    assert current.get("/_emulator/stats").json()["duplicate_users"] == 1


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "message.event is required."),
        ({"event": ""}, "message.event is required (it is an empty string)."),
        ({"template": "T"}, "message.event is required."),
        ({"event": "e", "locale": "en_US"}, "message.locale must be an object (or null)"),
        ({"event": "e", "data": [1]}, "message.data must be an object (or null), not an array"),
        ({"event": "e", "brand": 5}, "message.brand must be a string (or null), not a number"),
        ({"event": "e", "content": {"text": "hi"}}, "message.content must be exactly one of"),
        (
            {"event": "e", "content": {"title": "t", "body": "b", "version": "1", "elements": []}},
            "ElementalContentSugar {title, body} or ElementalContent {version, elements}",
        ),
        ({"event": "e", "routing": {"channels": ["sms"]}}, "message.routing is not a field"),
        ({"message": {"template": "T"}, "event": "e"}, "message.message is not a field"),
    ],
)
def test_create_job_is_validated_against_the_spec(
    current: httpx.Client, message: dict[str, Any], error: str
) -> None:
    r = current.post("/bulk", json={"message": message})
    assert r.status_code == 400
    assert r.json()["type"] == BAD
    assert error in r.json()["message"]
    assert current.get("/_emulator/stats").json()["jobs_created"] == 0


def test_create_job_without_message_names_it(current: httpx.Client) -> None:
    for body in ({}, {"message": None}):
        r = current.post("/bulk", json=body)
        assert r.status_code == 400
        assert r.json()["message"].startswith("message ")


@pytest.mark.parametrize(
    "content",
    [
        {"title": "Hi", "body": "there"},
        {"version": "2022-01-01", "elements": [{"type": "text", "content": "x", "align": "left"}]},
    ],
)
def test_both_elemental_forms_are_accepted(current: httpx.Client, content: Any) -> None:
    message = {"event": "e", "content": content, "locale": {"fr": {"x": 1}}, "brand": None}
    assert current.post("/bulk", json={"message": message}).status_code == 200


@pytest.mark.parametrize(
    ("user", "error"),
    [
        ({"recipient": 5}, "users[1].recipient must be a string (or null), not a number"),
        ({"to": "x@example.com"}, "users[1].to must be an object, not a string"),
        ({"profile": "x@example.com"}, "users[1].profile must be an object (or null)"),
        (
            {"preferences": {"notifications": {"n1": {"status": "MAYBE"}}}},
            (
                "users[1].preferences.notifications.n1.status must be one of "
                "OPTED_IN, OPTED_OUT, REQUIRED, not 'MAYBE'"
            ),
        ),
        ("oops", "users[1] must be an object, not a string"),
    ],
)
def test_ingest_is_validated_as_a_whole(current: httpx.Client, user: Any, error: str) -> None:
    job = create_job(current)
    r = current.post(f"/bulk/{job}", json={"users": [{"recipient": "ok"}, user]})
    assert r.status_code == 400
    assert error in r.json()["message"]
    assert current.get(f"/bulk/{job}").json()["job"]["received"] == 0


def test_ingest_without_users_array(current: httpx.Client) -> None:
    job = create_job(current)
    assert current.post(f"/bulk/{job}", json={}).json()["message"] == "users is required."
    r = current.post(f"/bulk/{job}", json={"users": {"recipient": "x"}})
    assert r.json()["message"] == "users must be an array, not an object."


def test_a_deliberately_wrong_request_is_refused_and_responses_meet_the_contract(
    make_emulator: Any,
) -> None:
    emu = make_emulator(flavor="current", progression="immediate", check_contract=True)
    with client_for(emu, None) as client:
        assert client.post("/bulk", json={"message": {"locale": "en"}}).status_code == 400
        assert client.post("/bulk", json={"message": {"event": "e", "locale": "en"}}).is_error
        job = create_job(client)
        users = [{"recipient": "a", "profile": {"email": "a@example.com"}}, {"recipient": "b"}]
        assert client.post(f"/bulk/{job}", json={"users": users}).status_code == 204
        assert client.post(f"/bulk/{job}/run").status_code == 204
        client.get(f"/bulk/{job}")
        items = all_users(client, job)
        for item in items:
            client.get(f"/messages/{item['messageId']}")
            client.get(f"/messages/{item['messageId']}/history")
            client.get(f"/messages/{item['messageId']}/output")
        client.get("/messages", params={"status": "DELIVERED"})
        stats = client.get("/_emulator/stats").json()
    assert stats["contract_checked"] >= 10
    assert stats["contract_violations"] == 0, stats["contract_violation_details"]
