"""Helpers shared by the end-to-end tests: a real emulator process and the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "recipients_sample.csv"
API_KEY = "sk_test_e2e_7f3c9a1b5d"
# Emulator processes whose contract stats EmulatorProcess.stop() checked (reported there, so
# the suite-wide contract fixture in conftest.py skips their log lines).
CHECKED_PIDS: set[int] = set()


class EmulatorProcess:
    """``bulkbatch emulator`` as a separate process on 127.0.0.1 (a free port)."""

    def __init__(
        self, *args: str, db: Path | None = None, api_key: str | None = API_KEY, port: int = 0
    ) -> None:
        self.args = list(args)
        self.db = db
        self.api_key = api_key
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> EmulatorProcess:
        cmd = [sys.executable, "-m", "bulkbatch", "emulator", "--port", str(self.port), *self.args]
        if self.db is not None:
            cmd += ["--db", str(self.db)]
        env = dict(os.environ)
        if self.api_key:
            env["BULKBATCH_EMULATOR_API_KEY"] = self.api_key
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"emulator did not start: {line!r} {err[-2000:]}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        return self

    def stop(self) -> None:
        """Stop the process; if it checks the contract, raise if it saw a violation."""
        stats = self._contract_stats()
        self._terminate()
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

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # do not hide the test's own failure; the contract fixture still reports
            self._terminate()

    def stats(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = httpx.get(f"{self.url}/_emulator/stats", headers=headers, timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["COURIER_BASE_URL"] = self.url
        if self.api_key:
            env["COURIER_API_KEY"] = self.api_key
        return env


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
