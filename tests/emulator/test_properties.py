"""Hypothesis properties of ingest + paging, over real HTTP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import all_users, create_job


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with Emulator(flavor="tutorial") as emu, httpx.Client(base_url=emu.url, timeout=10) as c:
        yield c


recipients = st.lists(st.text("abcdefghij", min_size=1, max_size=2), max_size=260)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipients=recipients, cuts=st.lists(st.integers(0, 260), max_size=6))
def test_pages_concatenate_to_the_unique_recipients(
    client: httpx.Client, recipients: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(recipients), *(c for c in cuts if c <= len(recipients))})
    batches = [recipients[a:b] for a, b in itertools.pairwise(bounds)]
    job = create_job(client)
    duplicates = 0
    total = 0
    for batch in batches:
        r = client.post(f"/bulk/{job}", json={"users": [{"recipient": x} for x in batch]})
        assert r.status_code == 200
        body = r.json()
        duplicates += len(body["errors"])
        assert all(e["error"] == "Duplicate user" for e in body["errors"])
        assert body["total"] >= total  # cumulative
        total = body["total"]
    unique = list(dict.fromkeys(recipients))
    assert total == len(unique)
    assert duplicates == len(recipients) - len(unique)
    listed = [u["recipient"] for u in all_users(client, job)]
    assert listed == unique  # every unique recipient once, in first-accepted order
