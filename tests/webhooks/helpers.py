"""Helpers of the webhook tests: payloads, signing, and the receiver as its own process."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

import httpx
import orjson

SECRET = "whsec_test_3b1f0c9e7a"
PATH = "/webhooks/courier"
STAMP = {"SENT": "sent", "DELIVERED": "delivered", "OPENED": "opened", "CLICKED": "clicked"}


def independent_signature(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 of ``t.body``, computed here without bulkbatch's code."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, secret: str = SECRET, t: int | None = None) -> dict[str, str]:
    import time

    ts = str(int(time.time() * 1000) if t is None else t)
    return {
        "content-type": "application/json",
        "courier-signature": f"t={ts},signature={independent_signature(secret, ts, body)}",
    }


def message_event(message_id: str, status: str, **fields: Any) -> bytes:
    data: dict[str, Any] = {"id": message_id, "status": status, "event": "WELCOME"}
    data |= fields
    return orjson.dumps({"type": "message:updated", "data": data})


class ReceiverProcess:
    """``python -m bulkbatch.webhooks serve`` as its own process on 127.0.0.1 (a free port)."""

    def __init__(self, store: Path, *args: str, secret: str | None = SECRET) -> None:
        self.store = store
        self.args = list(args)
        self.secret = secret
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> Self:
        cmd = [sys.executable, "-m", "bulkbatch.webhooks", "serve", "--store", str(self.store)]
        cmd += ["--port", "0", *self.args]
        env = dict(os.environ)
        env.pop("COURIER_WEBHOOK_SECRET", None)
        if self.secret:
            env["COURIER_WEBHOOK_SECRET"] = self.secret
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"receiver did not start: {line!r} {err[-2000:]}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        assert httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> str:
        """SIGTERM, wait, and return stderr."""
        err = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
        return err

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
