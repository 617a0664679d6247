"""Helpers shared by the emulator tests (imported as a plain module, not a fixture)."""

from __future__ import annotations

from typing import Any

import httpx

from bulkbatch.emulator import Emulator

API_KEY = "test-key"


def client_for(emu: Emulator, api_key: str | None = API_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=emu.url, headers=headers, timeout=10)


CREATED = {"current": 200, "tutorial": 201}
INGESTED = {"current": 204, "tutorial": 200}
RAN = {"current": 204, "tutorial": 202}


def flavor_of(client: httpx.Client) -> str:
    flavor: str = client.get("/_emulator/config").json()["flavor"]
    return flavor


def create_job(client: httpx.Client, message: dict[str, Any] | None = None) -> str:
    r = client.post("/bulk", json={"message": message or {"event": "welcome"}})
    assert r.status_code == CREATED[flavor_of(client)], r.text
    job_id: str = r.json()["jobId"]
    return job_id


def all_users(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = client.get(f"/bulk/{job_id}/users", params={"cursor": cursor} if cursor else {})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 100
        items.extend(page["items"])
        if not page["paging"]["more"]:
            assert page["paging"]["cursor"] is None
            return items
        cursor = page["paging"]["cursor"]
        assert cursor
