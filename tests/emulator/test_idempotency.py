"""Idempotency-Key: replay of the first result, mismatch, scope, expiry."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import client_for, create_job

DAY = 24 * 3600


def advance(client: httpx.Client, seconds: float) -> int:
    r = client.post("/_emulator/clock", json={"advance_seconds": seconds})
    assert r.status_code == 200
    now: int = r.json()["now_ms"]
    return now


def test_create_job_is_replayed_for_the_same_key(http: httpx.Client, emu: Emulator) -> None:
    body = {"message": {"event": "welcome"}}
    first = http.post("/bulk", json=body, headers={"Idempotency-Key": "k1"})
    again = http.post("/bulk", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    stats = emu.stats()
    assert (stats["jobs_created"], stats["idempotent_replays"]) == (1, 1)


def test_ingest_replay_does_not_ingest_twice(http: httpx.Client, emu: Emulator) -> None:
    job = create_job(http)
    body = {"users": [{"to": {"user_id": "a"}}, {"to": {"user_id": "b"}}]}  # no recipients
    h = {"Idempotency-Key": "batch-1"}
    first = http.post(f"/bulk/{job}", json=body, headers=h)
    again = http.post(f"/bulk/{job}", json=body, headers=h)
    assert first.json() == again.json() == {"total": 2, "errors": []}
    assert http.get(f"/bulk/{job}").json()["job"]["received"] == 2
    assert emu.stats()["users_accepted"] == 2


def test_errors_from_a_started_operation_are_replayed_too(http: httpx.Client) -> None:
    job = create_job(http)
    h = {"Idempotency-Key": "run-1"}
    assert http.post(f"/bulk/{job}/run", headers=h).status_code == 202
    assert http.post(f"/bulk/{job}/run", headers=h).status_code == 202  # replayed, not a 400
    other = http.post(f"/bulk/{job}/run", headers={"Idempotency-Key": "run-2"})
    assert other.status_code == 400
    replay = http.post(f"/bulk/{job}/run", headers={"Idempotency-Key": "run-2"})
    assert replay.status_code == 400
    assert replay.json() == other.json()
    assert replay.headers["idempotent-replayed"] == "true"


def test_validation_failures_are_not_saved(http: httpx.Client) -> None:
    h = {"Idempotency-Key": "v1"}
    assert http.post("/bulk", json={"nope": 1}, headers=h).status_code == 400
    # The same key with a corrected body executes: nothing was saved for the 400.
    assert http.post("/bulk", json={"message": {"event": "e"}}, headers=h).status_code == 201


def test_same_key_with_a_different_request_replays_the_first_result(
    http: httpx.Client, emu: Emulator
) -> None:
    # Courier: "Subsequent requests with the same key return the same result" (no 409
    # idempotency_error); the emulator counts the mismatch so tests can assert there is none.
    h = {"Idempotency-Key": "k"}
    first = http.post("/bulk", json={"message": {"event": "a"}}, headers=h)
    assert first.status_code == 201
    r = http.post("/bulk", json={"message": {"event": "b"}}, headers=h)
    assert (r.status_code, r.json()) == (201, first.json())
    assert r.headers["idempotent-replayed"] == "true"
    assert emu.stats()["idempotency_mismatches"] == 1
    # A different path with the same key and an identical body replays it too.
    job = create_job(http)
    again = http.post(f"/bulk/{job}/run", headers={"Idempotency-Key": "k"})
    assert (again.status_code, again.json()) == (201, first.json())
    stats = emu.stats()
    assert (stats["jobs_created"], stats["runs"], stats["idempotency_mismatches"]) == (2, 0, 2)
    # The same request again is a replay but no mismatch.
    http.post("/bulk", json={"message": {"event": "a"}}, headers=h)
    assert emu.stats()["idempotency_mismatches"] == 2


def test_keys_are_scoped_by_api_key(make_emulator: Any) -> None:
    emu = make_emulator()  # no auth: any bearer token is accepted and scopes the key
    body = {"message": {"event": "a"}}
    with client_for(emu, "alice") as alice, client_for(emu, "bob") as bob:
        a = alice.post("/bulk", json=body, headers={"Idempotency-Key": "same"})
        b = bob.post("/bulk", json=body, headers={"Idempotency-Key": "same"})
        assert a.json()["jobId"] != b.json()["jobId"]
        assert "idempotent-replayed" not in b.headers


def test_get_ignores_idempotency_keys(http: httpx.Client) -> None:
    job = create_job(http)
    h = {"Idempotency-Key": "g"}
    assert http.get(f"/bulk/{job}", headers=h).status_code == 200
    r = http.get(f"/bulk/{job}/users", headers=h)
    assert r.status_code == 200
    assert "idempotent-replayed" not in r.headers


def test_default_expiry_is_24_hours(http: httpx.Client) -> None:
    body = {"message": {"event": "a"}}
    h = {"Idempotency-Key": "exp"}
    first = http.post("/bulk", json=body, headers=h).json()["jobId"]
    advance(http, DAY - 60)
    assert http.post("/bulk", json=body, headers=h).json()["jobId"] == first
    advance(http, 120)
    fresh = http.post("/bulk", json=body, headers=h)
    assert fresh.status_code == 201
    assert fresh.json()["jobId"] != first
    assert "idempotent-replayed" not in fresh.headers


@pytest.mark.parametrize("form", ["epoch_ms", "epoch_s", "iso"])
def test_x_idempotency_expiration_extends_the_replay_window(http: httpx.Client, form: str) -> None:
    now_ms = advance(http, 0)
    expires_ms = now_ms + 3 * DAY * 1000
    value = {
        "epoch_ms": str(expires_ms),
        "epoch_s": str(expires_ms // 1000),
        "iso": dt.datetime.fromtimestamp(expires_ms / 1000, tz=dt.UTC).isoformat(),
    }[form]
    body = {"message": {"event": "a"}}
    h = {"Idempotency-Key": f"long-{form}", "x-idempotency-expiration": value}
    first = http.post("/bulk", json=body, headers=h).json()["jobId"]
    advance(http, 2 * DAY)
    assert http.post("/bulk", json=body, headers=h).json()["jobId"] == first
    advance(http, DAY + 60)
    assert http.post("/bulk", json=body, headers=h).json()["jobId"] != first


def test_x_idempotency_expiration_below_24h_is_raised_to_24h(http: httpx.Client) -> None:
    now_ms = advance(http, 0)
    body = {"message": {"event": "a"}}
    h = {"Idempotency-Key": "short", "x-idempotency-expiration": str(now_ms + 60_000)}
    first = http.post("/bulk", json=body, headers=h).json()["jobId"]
    advance(http, 3600)
    assert http.post("/bulk", json=body, headers=h).json()["jobId"] == first


def test_bad_x_idempotency_expiration_is_400(http: httpx.Client) -> None:
    h = {"Idempotency-Key": "bad", "x-idempotency-expiration": "next tuesday"}
    r = http.post("/bulk", json={"message": {"event": "a"}}, headers=h)
    assert r.status_code == 400
    assert "x-idempotency-expiration" in r.json()["message"]
