"""Messages API fidelity: pages of 10, every documented filter, cancel, history."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.emulator.emulator_helpers import all_users, client_for, create_job


def send(client: httpx.Client, message: dict[str, Any], users: list[Any]) -> dict[str, str]:
    job = create_job(client, message)
    assert client.post(f"/bulk/{job}", json={"users": users}).is_success
    assert client.post(f"/bulk/{job}/run").is_success
    client.get(f"/bulk/{job}")
    client.get(f"/bulk/{job}")
    return {u["recipient"]: u["messageId"] for u in all_users(client, job)}


def listed(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get("/messages", params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["results"]) <= 10
        out += body["results"]
        if not body["paging"]["more"]:
            return out
        cursor = body["paging"]["cursor"]


@pytest.fixture
def tutorial(make_emulator: Any) -> Any:
    emu = make_emulator(flavor="tutorial", progression="immediate", routes=["alerts=sms"])
    with client_for(emu, None) as client:
        yield client


def test_pages_of_ten_without_providers(tutorial: httpx.Client) -> None:
    users = [{"recipient": f"r{i}", "profile": {"email": f"r{i}@example.com"}} for i in range(23)]
    ids = send(tutorial, {"event": "e"}, users)
    first = tutorial.get("/messages").json()
    assert len(first["results"]) == 10 and first["paging"]["more"] is True
    rows = listed(tutorial)
    assert len(rows) == 23
    assert all("providers" not in row for row in rows)
    documented = {"id", "status", "enqueued", "sent", "delivered", "opened", "clicked"}
    documented |= {"recipient", "event", "notification", "error", "reason"}
    assert all(set(row) <= documented for row in rows)
    one = tutorial.get(f"/messages/{ids['r0']}").json()
    assert one["providers"][0]["provider"] == "emulator-email"


def test_every_documented_filter(tutorial: httpx.Client) -> None:
    tagged = {
        "message": {"template": "T", "metadata": {"tags": ["spring", "promo"], "trace_id": "tr-1"}},
    }
    users = [
        {"recipient": "a", "profile": {"email": "a@example.com"}, "to": {"list_id": "L1"}},
        {"recipient": "b", "profile": {"email": "b@example.com"}, "to": {"tenant_id": "acme"}},
        {
            "recipient": "c",
            "profile": {"email": "c@example.com"},
            "to": {"context": {"tenant_id": "acme"}},
        },
    ]
    send(tutorial, tagged, users)
    send(tutorial, {"event": "alerts"}, [{"recipient": "d", "profile": {"phone_number": "+1"}}])

    def who(**params: Any) -> list[str]:
        return sorted(row["recipient"] for row in listed(tutorial, **params))

    assert who(tag="promo") == ["a", "b", "c"]
    assert who(tag="nope") == []
    assert who(tags="nope,spring") == ["a", "b", "c"]
    assert who(traceId="tr-1") == ["a", "b", "c"]
    assert who(traceId="other") == []
    assert who(list="L1") == ["a"]
    assert who(tenant_id="acme") == ["b", "c"]
    assert who(provider="emulator-sms") == ["d"]
    assert who(provider="sendgrid") == []
    assert who(notification="T") == ["a", "b", "c"]
    assert who(event="alerts") == ["d"]
    assert who(archived="true") == who() == ["a", "b", "c", "d"]
    r = tutorial.get("/messages", params={"archived": "maybe"})
    assert r.status_code == 400
    assert "archived must be true or false" in r.json()["message"]


def test_cancel_before_sent_and_409_after(make_emulator: Any) -> None:
    emu = make_emulator(flavor="current", progression="polls:1")
    with client_for(emu, None) as client:
        users = [{"recipient": r, "profile": {"email": f"{r}@example.com"}} for r in "ab"]
        ids = send(client, {"event": "e"}, users)
        r = client.post(f"/messages/{ids['a']}/cancel")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "CANCELED" and body["canceledAt"] >= body["enqueued"]
        # Canceled is final: reads do not advance it, a second cancel is a 409.
        assert client.get(f"/messages/{ids['a']}").json()["status"] == "CANCELED"
        assert client.get(f"/messages/{ids['a']}").json()["status"] == "CANCELED"
        assert [m["recipient"] for m in listed(client, status="CANCELED")] == ["a"]
        again = client.post(f"/messages/{ids['a']}/cancel")
        assert again.status_code == 409
        assert again.headers["x-should-retry"] == "false"
        assert client.get(f"/messages/{ids['b']}").json()["status"] == "SENT"
        late = client.post(f"/messages/{ids['b']}/cancel")
        assert late.status_code == 409
        assert late.json()["id"] == ids["b"] and late.json()["status"] == "SENT"
        assert client.post("/messages/nope/cancel").status_code == 404


def test_history_has_ms_timestamps_and_documented_types(make_emulator: Any) -> None:
    emu = make_emulator(flavor="current", progression="seconds:5")
    with client_for(emu, None) as client:
        job = create_job(client, {"event": "e", "data": {"plan": "pro"}})
        users = [{"recipient": "a", "profile": {"email": "a@example.com"}}, {"recipient": "n"}]
        client.post(f"/bulk/{job}", json={"users": users})
        client.post(f"/bulk/{job}/run")
        client.post("/_emulator/clock", json={"advance_seconds": 15})
        ids = {u["recipient"]: u["messageId"] for u in all_users(client, job)}
        items = client.get(f"/messages/{ids['a']}/history").json()["results"]
        assert [i["type"] for i in items] == ["ENQUEUED", "SENT", "DELIVERED"]
        assert items[0]["data"] == {"plan": "pro"} and items[0]["recipient"] == "a"
        assert items[1]["ts"] - items[0]["ts"] == 5000
        assert items[2]["ts"] - items[0]["ts"] == 10_000
        assert all(i["ts"] > 1_600_000_000_000 for i in items)
        only = client.get(f"/messages/{ids['a']}/history", params={"type": "SENT"}).json()
        assert [i["type"] for i in only["results"]] == ["SENT"]
        unroutable = client.get(f"/messages/{ids['n']}/history").json()["results"]
        assert [i["type"] for i in unroutable] == ["ENQUEUED", "UNROUTABLE"]
        assert client.get("/messages/nope/history").status_code == 404
