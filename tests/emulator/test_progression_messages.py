"""Progression modes, routing rules, the Messages API, /output rendering, stats and reset."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import all_users, client_for, create_job

EPOCH_MS_2020 = 1_577_836_800_000


@pytest.fixture
def immediate(make_emulator: Any) -> Any:
    emu = make_emulator(progression="immediate")
    with client_for(emu, None) as client:
        yield client


def run_and_collect(
    client: httpx.Client, message: dict[str, Any], users: list[Any]
) -> dict[str, Any]:
    job = create_job(client, message)
    assert client.post(f"/bulk/{job}", json={"users": users}).status_code == 200
    assert client.post(f"/bulk/{job}/run").status_code == 202
    return {u["recipient"]: u for u in all_users(client, job)}


def message(client: httpx.Client, message_id: str) -> dict[str, Any]:
    r = client.get(f"/messages/{message_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_immediate_routing_rules_and_final_statuses(immediate: httpx.Client) -> None:
    users = [
        {"recipient": "ok", "profile": {"email": "ok@example.com"}},
        {"recipient": "bounce", "profile": {"email": "someone@mail.invalid"}},
        {"recipient": "to-only", "to": {"email": "x@example.com"}},
        {"recipient": "no-profile"},
        {"recipient": "bad-profile", "profile": "x@example.com"},
        {"recipient": "bad-data", "profile": {"email": "a@example.com"}, "data": [1]},
    ]
    got = run_and_collect(immediate, {"event": "welcome"}, users)
    assert {r: u["status"] for r, u in got.items()} == {
        "ok": "ENQUEUED",
        "bounce": "ENQUEUED",
        "to-only": "ENQUEUED",
        "no-profile": "ENQUEUED",
        "bad-profile": "ERROR",
        "bad-data": "ERROR",
    }
    assert "messageId" not in got["bad-profile"] and "messageId" not in got["bad-data"]

    ok = message(immediate, got["ok"]["messageId"])
    assert ok["status"] == "DELIVERED"
    assert ok["enqueued"] <= ok["sent"] <= ok["delivered"]
    assert ok["enqueued"] > EPOCH_MS_2020 and isinstance(ok["delivered"], int)
    assert "reason" not in ok

    bounce = message(immediate, got["bounce"]["messageId"])
    assert (bounce["status"], bounce["reason"]) == ("UNDELIVERABLE", "BOUNCED")
    assert "sent" in bounce and "delivered" not in bounce

    for name in ("to-only", "no-profile"):
        m = message(immediate, got[name]["messageId"])
        assert (m["status"], m["reason"]) == ("UNROUTABLE", "NO_CHANNELS")
        assert "sent" not in m and "delivered" not in m

    job = immediate.get("/messages", params={"recipient": "ok"}).json()["results"][0]
    assert job["id"] == got["ok"]["messageId"]


def test_job_counters_after_completion(immediate: httpx.Client) -> None:
    job = create_job(immediate)
    users = [{"recipient": "a", "profile": {"email": "a@example.com"}}, {"recipient": "b", "to": 1}]
    immediate.post(f"/bulk/{job}", json={"users": users})
    immediate.post(f"/bulk/{job}/run")
    got = immediate.get(f"/bulk/{job}").json()["job"]
    assert (got["status"], got["received"], got["enqueued"], got["failures"]) == (
        "COMPLETED",
        2,
        1,
        0,
    )


@pytest.mark.parametrize(
    ("route", "message_", "user", "status"),
    [
        ("e=sms", {"event": "e"}, {"profile": {"phone_number": "+1"}}, "DELIVERED"),
        ("e=sms", {"event": "e"}, {"profile": {"email": "a@b.com"}}, "UNROUTABLE"),
        (None, {"message": {"template": "T", "routing": {"channels": ["push"]}}}, {}, "DELIVERED"),
        ("e=email,sms", {"event": "e"}, {"profile": {"phone_number": "+1"}}, "DELIVERED"),
        ("e=email", {"event": "e"}, {"profile": {"email": "x@y.INVALID"}}, "UNDELIVERABLE"),
        (None, {"event": "e"}, {"profile": {"email": "x@example.com"}}, "DELIVERED"),
        ("other=sms", {"event": "e"}, {"profile": {"email": "x@example.com"}}, "DELIVERED"),
        ("T=sms", {"event": "e", "template": "T"}, {"profile": {"email": "a@b.com"}}, "UNROUTABLE"),
    ],
)
def test_channel_routing(
    make_emulator: Any,
    route: str | None,
    message_: dict[str, Any],
    user: dict[str, Any],
    status: str,
) -> None:
    # Routing is the emulator's event config (--route), as Courier routes by notification;
    # the tutorial flavor still honours a nested message.message.routing (case 3).
    emu = make_emulator(progression="immediate", routes=[route] if route else None)
    with client_for(emu, None) as client:
        got = run_and_collect(client, message_, [{"recipient": "r", **user}])
        assert message(client, got["r"]["messageId"])["status"] == status


def test_polls_progression(make_emulator: Any) -> None:
    emu = make_emulator(progression="polls:3")
    with client_for(emu, None) as client:
        job = create_job(client)
        users = [
            {"recipient": "a", "profile": {"email": "a@example.com"}},
            {"recipient": "n"},
        ]
        client.post(f"/bulk/{job}", json={"users": users})
        client.post(f"/bulk/{job}/run")
        assert [u["status"] for u in all_users(client, job)] == ["PENDING", "PENDING"]
        seen = [client.get(f"/bulk/{job}").json()["job"]["status"] for _ in range(4)]
        assert seen == ["PROCESSING", "PROCESSING", "COMPLETED", "COMPLETED"]
        by = {u["recipient"]: u for u in all_users(client, job)}
        assert by["a"]["status"] == "ENQUEUED"

        reads = [message(client, by["a"]["messageId"]) for _ in range(7)]
        assert [m["status"] for m in reads] == ["ENQUEUED"] * 2 + ["SENT"] * 3 + ["DELIVERED"] * 2
        assert "sent" not in reads[1] and "sent" in reads[2] and "delivered" in reads[5]
        assert reads[5]["delivered"] >= reads[5]["sent"] >= reads[5]["enqueued"]
        unroutable = [message(client, by["n"]["messageId"])["status"] for _ in range(3)]
        assert unroutable == ["ENQUEUED", "ENQUEUED", "UNROUTABLE"]


def test_seconds_progression(make_emulator: Any) -> None:
    emu = make_emulator(progression="seconds:10")
    with client_for(emu, None) as client:
        job = create_job(client)
        client.post(
            f"/bulk/{job}", json={"users": [{"recipient": "a", "profile": {"email": "a@x.io"}}]}
        )
        client.post(f"/bulk/{job}/run")
        assert client.get(f"/bulk/{job}").json()["job"]["status"] == "PROCESSING"
        client.post("/_emulator/clock", json={"advance_seconds": 10})
        assert client.get(f"/bulk/{job}").json()["job"]["status"] == "COMPLETED"
        mid = all_users(client, job)[0]["messageId"]
        m = message(client, mid)
        assert m["status"] == "ENQUEUED"
        client.post("/_emulator/clock", json={"advance_seconds": 10})
        m = message(client, mid)
        assert (m["status"], m["sent"] - m["enqueued"]) == ("SENT", 10_000)
        assert client.get("/messages", params={"status": "SENT"}).json()["results"][0]["id"] == mid
        client.post("/_emulator/clock", json={"advance_seconds": 10})
        m = message(client, mid)
        assert (m["status"], m["delivered"] - m["enqueued"]) == ("DELIVERED", 20_000)


def test_messages_list_filters_and_paging(immediate: httpx.Client) -> None:
    users = [{"recipient": f"d{i}", "profile": {"email": f"d{i}@example.com"}} for i in range(120)]
    users += [{"recipient": f"b{i}", "profile": {"email": f"b{i}@x.invalid"}} for i in range(5)]
    users += [{"recipient": f"n{i}"} for i in range(3)]
    run_and_collect(immediate, {"event": "news"}, users)

    def ids(**params: Any) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            q = dict(params, **({"cursor": cursor} if cursor else {}))
            page = immediate.get("/messages", params=q).json()
            out += [m["recipient"] for m in page["results"]]
            if not page["paging"]["more"]:
                return out
            cursor = page["paging"]["cursor"]

    assert len(ids()) == 128
    delivered = ids(status="DELIVERED")
    assert sorted(delivered) == sorted(f"d{i}" for i in range(120))
    assert len(ids(status="UNDELIVERABLE,UNROUTABLE")) == 8
    repeated = immediate.get("/messages?status=UNDELIVERABLE&status=UNROUTABLE").json()
    assert len(repeated["results"]) == 8
    assert ids(status="SENT,DELIVERED") == delivered
    assert ids(recipient="b3") == ["b3"]
    assert ids(event="news", status="UNROUTABLE") == ["n2", "n1", "n0"]  # newest first
    assert ids(event="other") == []
    assert immediate.get("/messages", params={"cursor": "zz"}).status_code == 400


def test_messages_list_with_sent_and_delivered(make_emulator: Any) -> None:
    emu = make_emulator(progression="polls:1")
    with client_for(emu, None) as client:
        job = create_job(client)
        users = [{"recipient": r, "profile": {"email": f"{r}@example.com"}} for r in "abc"]
        client.post(f"/bulk/{job}", json={"users": users})
        client.post(f"/bulk/{job}/run")
        client.get(f"/bulk/{job}")
        by = {u["recipient"]: u["messageId"] for u in all_users(client, job)}
        message(client, by["a"])  # → SENT
        message(client, by["b"])  # → SENT
        message(client, by["b"])  # → DELIVERED
        page = client.get("/messages", params={"status": "SENT,DELIVERED"}).json()
        assert {m["recipient"]: m["status"] for m in page["results"]} == {
            "a": "SENT",
            "b": "DELIVERED",
        }


def test_output_renders_merged_data(immediate: httpx.Client) -> None:
    msg = {
        "event": "welcome",
        "data": {"greeting": "Hello", "name": "global", "plan": "free"},
        "content": {
            "title": "{{greeting}}, {{name}}!",
            "body": "Plan {{plan}} {{missing}}{{org.name}}",
        },
    }
    users = [
        {
            "recipient": "u",
            "profile": {"email": "u@example.com"},
            "data": {"name": "Ann", "plan": "pro", "org": {"name": "Acme"}},
            "to": {"data": {"plan": "enterprise"}},
        }
    ]
    got = run_and_collect(immediate, msg, users)
    out = immediate.get(f"/messages/{got['u']['messageId']}/output").json()
    (result,) = out["results"]
    assert result["channel"] == "email"
    assert result["content"]["title"] == "Hello, Ann!"
    assert result["content"]["body"] == "Plan enterprise Acme"
    assert result["content"]["subject"] == "Hello, Ann!"


def test_output_of_nested_content(immediate: httpx.Client) -> None:
    msg = {"message": {"content": {"title": "Hi {{n}}", "body": "b"}, "data": {"n": "nested"}}}
    got = run_and_collect(immediate, msg, [{"recipient": "u", "profile": {"email": "u@e.com"}}])
    out = immediate.get(f"/messages/{got['u']['messageId']}/output").json()
    assert out["results"][0]["content"]["title"] == "Hi nested"


def test_stats_and_reset(make_emulator: Any) -> None:
    emu: Emulator = make_emulator(progression="immediate")
    with client_for(emu, None) as client:
        assert client.get("/_emulator/stats").json()["max_accepted_per_recipient"] == 0
        jobs = [create_job(client) for _ in range(2)]
        for job in jobs:
            r = client.post(
                f"/bulk/{job}", json={"users": [{"recipient": "same"}, {"recipient": "same"}]}
            )
            assert r.json()["total"] == 1
        client.post(f"/bulk/{jobs[0]}", json={"users": [{"recipient": "other"}]})
        client.post(f"/bulk/{jobs[0]}/run")
        stats = client.get("/_emulator/stats").json()
        assert stats == emu.stats()
        # the suite runs every emulator with the contract check on (tests/conftest.py)
        contract = {k: stats.pop(k) for k in list(stats) if k.startswith("contract_")}
        assert contract == {
            "contract_checked": 6,
            "contract_skipped": 0,
            "contract_violations": 0,
            "contract_violation_details": [],
            "contract_flavor_deviations": 6,  # the tutorial's 201 / 200 {total, errors} / 202
        }
        assert stats == {
            "jobs_created": 2,
            "runs": 1,
            "requests": 6,
            "requests_by_status": {"200": 3, "201": 2, "202": 1},
            "ingest_attempts": 3,
            "users_accepted": 3,
            "duplicate_users": 2,
            "dropped_connections": 0,
            "max_accepted_per_recipient": 2,
            "idempotent_replays": 0,
            "idempotency_mismatches": 0,
            "most_ingests_in_flight": 1,  # one after another
        }
        assert client.post("/_emulator/reset").status_code == 200
        assert client.get(f"/bulk/{jobs[0]}").status_code == 404
        stats = client.get("/_emulator/stats").json()
        assert stats["jobs_created"] == stats["max_accepted_per_recipient"] == 0
        assert stats["requests"] == 1  # the 404 above
        emu.reset()
        assert emu.stats()["requests"] == 0


def test_sdk_messages_list_and_content(make_emulator: Any) -> None:
    from courier import Courier

    emu = make_emulator(progression="immediate", api_key="k")
    sdk = Courier(api_key="k", base_url=emu.url, max_retries=0)
    job = sdk.bulk.create_job(
        message={"event": "e", "content": {"title": "Hi {{name}}", "body": "Dear {{name}}"}}
    )
    users = [
        {"recipient": "ok", "profile": {"email": "ok@example.com"}, "data": {"name": "Bo"}},
        {"recipient": "bad", "profile": {"email": "bad@x.invalid"}},
        {"recipient": "none"},
    ]
    sdk.bulk.add_users(job.job_id, users=users)
    sdk.bulk.run_job(job.job_id)
    listed = sdk.messages.list(status=["DELIVERED", "UNDELIVERABLE"])  # sent comma-joined
    assert sorted(m.recipient for m in listed.results) == ["bad", "ok"]
    assert listed.paging.more is False
    ok = next(m for m in listed.results if m.recipient == "ok")
    content = sdk.messages.content(ok.id)
    assert content.results[0].content.title == "Hi Bo"
    assert content.results[0].content.body == "Dear Bo"
    sdk.close()
