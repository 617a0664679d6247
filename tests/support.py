"""Helpers shared by the end-to-end tests: a real emulator process and the real CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from bulkbatch.testing.process import DEFAULT_API_KEY
from bulkbatch.testing.process import EmulatorProcess as _EmulatorProcess

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "recipients_sample.csv"
API_KEY = DEFAULT_API_KEY
# Emulator processes whose contract stats EmulatorProcess.stop() checked (reported there, so
# the suite-wide contract fixture in conftest.py skips their log lines).
CHECKED_PIDS: set[int] = set()


class EmulatorProcess(_EmulatorProcess):
    """:class:`bulkbatch.testing.EmulatorProcess` that, when it stops, fails the test if the
    emulator answered anything that violates courier-openapi.yaml (the contract suite)."""

    def stop(self) -> None:
        """Stop the process; if it checks the contract, raise if it saw a violation."""
        stats = self._contract_stats()
        super().stop()
        if stats is not None and self.proc is not None:
            CHECKED_PIDS.add(self.proc.pid)
            assert stats["contract_violations"] == 0, (
                f"the emulator (flavor args {self.args}) answered with responses that "
                f"violate courier-openapi.yaml: {stats['contract_violation_details']}"
            )

    def _contract_stats(self) -> dict[str, Any] | None:
        """The stats of a running emulator that checks the contract (None otherwise)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            stats = self.stats()
        except httpx.HTTPError:
            return None
        return stats if "contract_violations" in stats else None

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # do not hide the test's own failure; the contract fixture still reports
            _EmulatorProcess.stop(self)


def bulkbatch(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the real ``bulkbatch`` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "bulkbatch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


# A query that runs out of memory under 40MB on two threads: either before its first Arrow
# batch (DuckDB raises its own error) or after the union's first part has streamed, where the
# error surfaces in pyarrow's stream reader, about half the time each.
OUT_OF_MEMORY_MID_STREAM = """
    SELECT i::VARCHAR AS v FROM range(100000) t(i)
    UNION ALL
    SELECT max(v) FROM (SELECT i::VARCHAR || repeat('x', 40) AS v, count(*) AS c
                        FROM range(3000000) t(i) GROUP BY 1)
"""


def out_of_memory_mid_stream(read: Callable[[duckdb.DuckDBPyConnection], Iterator[int]]) -> None:
    """Run ``read`` (which streams :data:`OUT_OF_MEMORY_MID_STREAM` on the connection it is
    given, yielding the rows of each batch) until it fails after a first batch; every failure
    must be DuckDB's ``OutOfMemoryException``, with pyarrow's error as the cause of the
    mid-stream one. Fails the test if no run failed mid-stream in 40."""
    for _ in range(40):
        con = duckdb.connect()
        con.execute("SET memory_limit = '40MB'")
        con.execute("SET threads = 2")
        rows = 0
        try:
            with pytest.raises(duckdb.OutOfMemoryException, match=r"^Out of Memory Error") as e:
                for n in read(con):
                    rows += n
        finally:
            con.close()
        if rows:  # failed mid-stream, where pyarrow raised it
            assert isinstance(e.value.__cause__, OSError)
            return
    pytest.fail("the query never ran out of memory after its first batch")
