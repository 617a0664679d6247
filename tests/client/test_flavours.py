"""Both answer flavours of Courier's Bulk API give the same results through the client.

* current (the published OpenAPI): ``POST /bulk`` 200 ``{jobId}``, ingest 204 (no body),
  run 204;
* tutorial (the tutorial and the backend snapshot): 201, 200 ``{total, errors}``, 202.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from bulkbatch.client.courier import CourierClient, IngestResult, Job
from tests.client.support import JOB, make_client

FLAVOURS = {
    "current": {"create": 200, "ingest": 204, "run": 204},
    "tutorial": {"create": 201, "ingest": 200, "run": 202},
}


class FakeCourier:
    """A tiny stateful Courier speaking one flavour (MockTransport handler)."""

    def __init__(self, flavour: str) -> None:
        self.codes = FLAVOURS[flavour]
        self.flavour = flavour
        self.users: dict[str, dict[str, Any]] = {}
        self.status = "CREATED"
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/bulk":
            return httpx.Response(self.codes["create"], json={"jobId": JOB})
        if request.method == "POST" and path == f"/bulk/{JOB}":
            return self._ingest(request)
        if request.method == "POST" and path == f"/bulk/{JOB}/run":
            self.status = "COMPLETED"
            return httpx.Response(self.codes["run"])
        if path == f"/bulk/{JOB}":
            job = {
                "definition": {"event": "welcome"},
                "enqueued": len(self.users) if self.status == "COMPLETED" else 0,
                "failures": 0,
                "received": len(self.users),
                "status": self.status,
            }
            return httpx.Response(200, json={"job": job})
        if path == f"/bulk/{JOB}/users":
            items = [
                {**u, "status": "ENQUEUED", "messageId": f"m-{u['recipient']}"}
                for u in self.users.values()
            ]
            return httpx.Response(200, json={"items": items, "paging": {"more": False}})
        return httpx.Response(404, json={"message": "Not Found"})

    def _ingest(self, request: httpx.Request) -> httpx.Response:
        errors = []
        for user in orjson.loads(request.content)["users"]:
            if user["recipient"] in self.users:
                errors.append({"user": user, "error": "Duplicate user"})
            else:
                self.users[user["recipient"]] = user
        if self.codes["ingest"] == 204:
            return httpx.Response(204)
        return httpx.Response(200, json={"total": len(self.users), "errors": errors})


async def _drive(client: CourierClient) -> tuple[str, list[IngestResult], Job, list[Any]]:
    job_id = await client.create_job({"event": "welcome"}, idempotency_key="r:create:0")
    acks = [
        await client.add_users(job_id, [{"recipient": "a"}, {"recipient": "b"}]),
        await client.add_users(job_id, b'{"users":[{"recipient":"c"}]}'),
    ]
    assert await client.run_job(job_id, idempotency_key="r:run") is None
    job = await client.retrieve_job(job_id)
    pages = [p async for p in client.iter_users(job_id, received=job.received)]
    return job_id, acks, job, [i["recipient"] for p in pages for i in p.items]


@pytest.mark.anyio
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
async def test_each_flavour_drives_a_whole_job(flavour: str) -> None:
    server = FakeCourier(flavour)
    async with make_client(server) as client:
        job_id, acks, job, recipients = await _drive(client)
    assert job_id == JOB
    assert job == Job("COMPLETED", 3, 0, 3, {"event": "welcome"})
    assert recipients == ["a", "b", "c"]
    if flavour == "current":
        # 204, no body: every user was accepted; nothing to count.
        assert acks == [IngestResult(204, None, []), IngestResult(204, None, [])]
    else:
        assert acks == [IngestResult(200, 2, []), IngestResult(200, 3, [])]


@pytest.mark.anyio
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
async def test_run_sends_no_body_and_no_content_type(flavour: str) -> None:
    server = FakeCourier(flavour)
    async with make_client(server) as client:
        await client.run_job(JOB, idempotency_key="r:run")
    (run,) = server.requests
    assert run.method == "POST" and run.url.path == f"/bulk/{JOB}/run"
    assert run.content == b""
    assert "content-type" not in run.headers
    assert run.headers.get("content-length") in (None, "0")
    assert run.headers["idempotency-key"] == "r:run"


@pytest.mark.anyio
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
async def test_posts_with_a_body_say_json(flavour: str) -> None:
    server = FakeCourier(flavour)
    async with make_client(server) as client:
        await client.create_job({"event": "e"})
        await client.add_users(JOB, [{"recipient": "a"}])
    assert [r.headers["content-type"] for r in server.requests] == ["application/json"] * 2


@pytest.mark.anyio
async def test_duplicates_are_reported_in_the_tutorial_flavour_only() -> None:
    """The current contract has no body, so duplicates are invisible at ingest; the
    tutorial's body lists them. Both leave the job holding each recipient once."""
    results = {}
    for flavour in sorted(FLAVOURS):
        server = FakeCourier(flavour)
        async with make_client(server) as client:
            await client.add_users(JOB, [{"recipient": "a"}])
            results[flavour] = await client.add_users(JOB, [{"recipient": "a"}])
        assert list(server.users) == ["a"]
    assert results["current"] == IngestResult(204, None, [])
    assert results["tutorial"].errors == [{"user": {"recipient": "a"}, "error": "Duplicate user"}]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 201])
async def test_create_accepts_200_and_201(status: int) -> None:
    async with make_client(lambda r: httpx.Response(status, json={"jobId": JOB})) as client:
        assert await client.create_job({"event": "e"}) == JOB


@pytest.mark.anyio
async def test_an_empty_200_ingest_counts_as_accepted() -> None:
    async with make_client(lambda r: httpx.Response(200)) as client:
        assert await client.add_users(JOB, [{"recipient": "a"}]) == IngestResult(200, None, [])
