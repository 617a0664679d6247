"""Seeded faults: 429 + Retry-After, 500, dropped connections, latency; never on /_emulator."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import client_for, create_job


def test_rate_limit_answers_429_with_retry_after(make_emulator: Any) -> None:
    emu = make_emulator(faults="rate_limit=5")
    with client_for(emu, None) as client:
        job = create_job(client)  # one token
        statuses = [client.get(f"/bulk/{job}") for _ in range(20)]
    limited = [r for r in statuses if r.status_code == 429]
    ok = [r for r in statuses if r.status_code == 200]
    assert 3 <= len(ok) <= 6  # the 5-token burst (less the create), plus a little refill
    assert len(limited) >= 14
    for r in limited:
        assert r.json() == {"message": "Too Many Requests", "type": "rate_limit_error"}
        assert int(r.headers["retry-after"]) >= 1
    stats = emu.stats()
    assert stats["requests_by_status"]["429"] == len(limited)


def test_rate_limit_refills(make_emulator: Any) -> None:
    emu = make_emulator(faults="rate_limit=20")
    with client_for(emu, None) as client:
        while client.get("/messages").status_code != 429:
            pass
        time.sleep(0.2)  # ~4 tokens
        assert client.get("/messages").status_code == 200


def test_error_rate_gives_500_envelopes_deterministically(make_emulator: Any) -> None:
    def sequence() -> list[int]:
        emu = make_emulator(faults="error_rate=0.5,seed=7")
        with client_for(emu, None) as client:
            codes = [client.get("/messages").status_code for _ in range(30)]
            failed = next(
                r for r in (client.get("/messages") for _ in range(100)) if r.status_code == 500
            )
            assert failed.json() == {
                "message": "Internal Server Error (emulated fault)",
                "type": "api_error",
            }
        return codes

    first, second = sequence(), sequence()
    assert first == second
    assert set(first) == {200, 500}


def test_error_rate_one_fails_every_api_call_but_never_the_control_plane(
    make_emulator: Any,
) -> None:
    emu = make_emulator(faults="error_rate=1")
    with client_for(emu, None) as client:
        assert client.post("/bulk", json={"message": {"event": "e"}}).status_code == 500
        assert client.post("/bulk/x", json={"users": []}).status_code == 500
        assert client.get("/_emulator/stats").status_code == 200
        assert client.post("/_emulator/reset").status_code == 200
        assert client.get("/_emulator/config").json()["faults"].startswith("error_rate=1")
    assert emu.stats()["requests"] == 0  # reset above


def test_ingest_attempts_count_faulted_calls(make_emulator: Any) -> None:
    emu = make_emulator(faults="error_rate=1")
    with client_for(emu, None) as client:
        for _ in range(3):
            client.post("/bulk/any", json={"users": []})
    stats = emu.stats()
    assert (stats["ingest_attempts"], stats["requests_by_status"]) == (3, {"500": 3})


def test_drop_closes_the_connection_without_a_response(make_emulator: Any) -> None:
    emu = make_emulator(faults="drop_rate=1,seed=3")
    with client_for(emu, None) as client:
        for _ in range(5):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post("/bulk", json={"message": {"event": "e"}})
    stats = emu.stats()
    assert stats["dropped_connections"] == 5
    assert stats["requests"] == 5
    assert stats["requests_by_status"] == {}
    # Some drops happened after the job was committed, some before.
    assert 0 < stats["jobs_created"] < 5


def test_drop_is_an_api_connection_error_for_the_sdk(make_emulator: Any) -> None:
    from courier import APIConnectionError, Courier

    emu = make_emulator(faults="drop_rate=1")
    client = Courier(api_key="k", base_url=emu.url, max_retries=0)
    with pytest.raises(APIConnectionError):
        client.bulk.create_job(message={"event": "e"})
    client.close()


def test_idempotency_key_survives_drops_after_commit(make_emulator: Any) -> None:
    emu: Emulator = make_emulator(faults="drop_rate=0.5,seed=11")
    job_ids = []
    drops = 0
    with client_for(emu, None) as client:
        for i in range(12):
            while True:
                try:
                    r = client.post(
                        "/bulk",
                        json={"message": {"event": "e"}},
                        headers={"Idempotency-Key": f"c{i}"},
                    )
                    break
                except httpx.TransportError:
                    drops += 1
            assert r.status_code == 201
            job_ids.append(r.json()["jobId"])
    stats = emu.stats()
    assert drops == stats["dropped_connections"] > 0
    assert stats["idempotent_replays"] > 0  # a retry found the committed, dropped result
    assert stats["jobs_created"] == len(set(job_ids)) == 12


def test_latency_is_added_to_api_requests_only(make_emulator: Any) -> None:
    emu = make_emulator(faults="latency_ms=150")
    with client_for(emu, None) as client:
        client.get("/_emulator/stats")  # warm the connection
        t0 = time.perf_counter()
        assert client.get("/messages").status_code == 200
        api = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.get("/_emulator/stats")
        control = time.perf_counter() - t0
    assert api >= 0.15
    assert control < 0.1
