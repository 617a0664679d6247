"""``bulkbatch emulator`` as a separate process: the one wrapper tests and benchmarks use.

A real server on 127.0.0.1 (port 0 picks a free one; a fixed port and a ``--db`` file let a
test stop and start it again on the same state), started with any emulator options, with its
control routes called with the key it was given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = ["DEFAULT_API_KEY", "EmulatorProcess"]

DEFAULT_API_KEY = "sk_test_e2e_7f3c9a1b5d"


class EmulatorProcess:
    """``bulkbatch emulator ARGS...`` as a process; ``start()`` returns once it listens.

    :param args: emulator options, e.g. ``"--flavor", "tutorial"`` or ``"--faults", "..."``
    :param db: a ``--db`` file (state survives a stop/start)
    :param api_key: the key the emulator requires (None: no auth)
    :param port: 0 for a free port; a fixed one to restart on the same URL
    :param capture_stderr: keep stderr for the start-up error (a long run that logs a lot
        should not: nobody drains the pipe)
    """

    def __init__(
        self,
        *args: str,
        db: Path | None = None,
        api_key: str | None = DEFAULT_API_KEY,
        port: int = 0,
        capture_stderr: bool = True,
    ) -> None:
        self.args = list(args)
        self.db = db
        self.api_key = api_key
        self.port = port
        self.capture_stderr = capture_stderr
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> Self:
        cmd = [sys.executable, "-m", "bulkbatch", "emulator", "--port", str(self.port), *self.args]
        if self.db is not None:
            cmd += ["--db", str(self.db)]
        env = dict(os.environ)
        if self.api_key:
            env["BULKBATCH_EMULATOR_API_KEY"] = self.api_key
        stderr = subprocess.PIPE if self.capture_stderr else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"emulator did not start: {line!r} {(err or '')[-2000:]}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; the pipes are closed."""
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

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats`` (with the key: control routes need it when one is set)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = httpx.get(f"{self.url}/_emulator/stats", headers=headers, timeout=30)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def env(self) -> dict[str, str]:
        """This process's environment pointed at the emulator (base URL and key)."""
        env = dict(os.environ)
        env["COURIER_BASE_URL"] = self.url
        if self.api_key:
            env["COURIER_API_KEY"] = self.api_key
        return env
