"""A real PostgreSQL server for the PostgreSQL ledger and registry tests (no mocks).

A test module takes the fixtures with ``pytest_plugins = ["tests.pgserver"]``.

One server per test session (``postgres_url``); each test that wants a clean slate takes
``pg_url``, a fresh empty database on it. Missing server binaries fail the tests with how to
install them, never skip them: a skipped test proves nothing about the claims' atomicity.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from bulkbatch.errors import StateError
from bulkbatch.testing.postgres import PostgresServer

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except StateError as exc:
        pytest.fail(f"Cannot start the test PostgreSQL server: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql://postgres@127.0.0.1:<port>/postgres`` on the session's server."""
    return postgres_server.url


@pytest.fixture
def pg_url(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database on the session's server; no caller PG* variable applies."""
    for name in [n for n in os.environ if n.startswith("PG")]:
        monkeypatch.delenv(name)
    return postgres_server.create_database(f"t{os.getpid()}_{next(_databases)}")
