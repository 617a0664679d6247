"""Outbound webhooks (issue #17): a real receiver on 127.0.0.1 gets signed ``message:updated``
events for every status change; retries, give-ups, faults, a ``--db`` restart and the CLI.

The receiver and the signature check are written here from ``courier-tracking.md`` §2.6, on
purpose independent of the emulator's code and of ``bulkbatch.webhooks``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bulkbatch.emulator import Emulator, EmulatorConfigError, FaultSpec
from tests.emulator.emulator_helpers import all_users

SECRET = "whsec_test_5f2a9c"
KEY = "emu-key"
EVENT = "welcome"


# -- the receiver -----------------------------------------------------------------------------


class Hit:
    """One POST as the receiver saw it."""

    def __init__(self, body: bytes, headers: dict[str, str], at: float) -> None:
        self.body = body
        self.headers = headers
        self.at = at
        self.event: dict[str, Any] = orjson.loads(body)

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data

    @property
    def key(self) -> tuple[str, str]:
        return self.data["id"], self.data["status"]


Answer = Callable[[Hit, int], int | float]  # (hit, how many times this key was seen) → status


class Receiver:
    """A starlette app served by uvicorn in a thread on a free loopback port.

    ``answer(hit, seen)`` returns the status to answer with, or a float: seconds to sleep
    before answering 200 (a slow receiver).
    """

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or (lambda hit, seen: 200)
        self.hits: list[Hit] = []
        self.seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/hooks/courier", self._endpoint, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hooks/courier"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    async def _endpoint(self, request: Request) -> Response:
        hit = Hit(await request.body(), dict(request.headers), time.monotonic())
        with self._lock:
            self.hits.append(hit)
            self.seen[hit.key] += 1
            seen = self.seen[hit.key]
        answer = self.answer(hit, seen)
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = 200
        return Response(status_code=int(answer))

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def arrived(self) -> list[tuple[str, str]]:
        with self._lock:
            return [h.key for h in self.hits]


def verify(hit: Hit, secret: str = SECRET) -> bool:
    """Courier's documented check: HMAC-SHA256(secret, "<t>.<raw body>"), lowercase hex."""
    header = hit.headers.get("courier-signature", "")
    parts = dict(p.strip().partition("=")[::2] for p in header.split(","))
    t, sig = parts.get("t", ""), parts.get("signature", "")
    if not t.isdigit() or len(sig) != 64:
        return False
    mac = hmac.new(secret.encode(), f"{t}.".encode() + hit.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, sig)


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def start() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def make(receiver: Receiver | None, **kwargs: Any) -> Emulator:
        kwargs.setdefault("flavor", "current")
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("progression", "immediate")
        if receiver is not None:
            kwargs.setdefault("webhook_url", receiver.url)
            kwargs.setdefault("webhook_secret", SECRET)
        emu = Emulator(**kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


def client(emu: Emulator) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def users(ok: int = 3, bounce: int = 2, unroutable: int = 1) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"recipient": f"ok{i}", "profile": {"email": f"ok{i}@example.com"}} for i in range(ok)
    ]
    out += [
        {"recipient": f"bounce{i}", "profile": {"email": f"b{i}@mail.invalid"}}
        for i in range(bounce)
    ]
    out += [{"recipient": f"nomail{i}", "profile": {}} for i in range(unroutable)]
    return out


def send_job(http: httpx.Client, people: list[dict[str, Any]]) -> str:
    job = http.post("/bulk", json={"message": {"event": EVENT}})
    assert job.status_code == 200, job.text
    job_id: str = job.json()["jobId"]
    assert http.post(f"/bulk/{job_id}", json={"users": people}).status_code == 204
    assert http.post(f"/bulk/{job_id}/run").status_code == 204
    return job_id


def wait_for(emu: Emulator, done: Callable[[dict[str, Any]], bool], seconds: float = 20) -> Any:
    """Poll ``/_emulator/stats`` until ``done(stats)`` (the only waiting these tests do)."""
    deadline = time.monotonic() + seconds
    with client(emu) as http:
        while True:
            stats = http.get("/_emulator/stats").json()
            if done(stats):
                return stats
            assert time.monotonic() < deadline, f"timed out; stats: {stats}"
            time.sleep(0.01)


def drained(stats: dict[str, Any]) -> bool:
    return bool(stats["webhooks_pending"] == 0 and stats["webhooks_events"] > 0)


def balanced(stats: dict[str, Any]) -> None:
    """Every event copy is delivered, dropped or still pending."""
    made = stats["webhooks_events"] + stats["webhooks_duplicated"]
    done = stats["webhooks_delivered"] + stats["webhooks_dropped"] + stats["webhooks_pending"]
    assert made == done, stats


PATHS = {
    "ok": ["ENQUEUED", "SENT", "DELIVERED"],
    "bounce": ["ENQUEUED", "SENT", "UNDELIVERABLE"],
    "nomail": ["ENQUEUED", "UNROUTABLE"],
}


def expected_keys(http: httpx.Client, job_id: str) -> dict[tuple[str, str], str]:
    """``(messageId, status) → recipient`` for every status change of the job's messages."""
    out = {}
    for user in all_users(http, job_id):
        kind = user["recipient"].rstrip("0123456789")
        for status in PATHS[kind]:
            out[(user["messageId"], status)] = user["recipient"]
    return out


# -- tests ---------------------------------------------------------------------------------------


def test_every_status_change_arrives_signed(start: Callable[..., Emulator]) -> None:
    with Receiver() as receiver:
        emu = start(receiver)
        with client(emu) as http:
            job_id = send_job(http, users())
            expected = expected_keys(http, job_id)
            stats = wait_for(emu, drained)
            assert stats["webhooks_events"] == len(expected) == 3 * 3 + 2 * 3 + 2
            assert stats["webhooks_delivered"] == stats["webhooks_sent"] == len(expected)
            assert stats["webhooks_retried"] == stats["webhooks_dropped"] == 0
            balanced(stats)

            hits = list(receiver.hits)
            assert sorted(h.key for h in hits) == sorted(expected)  # each exactly once
            now_ms = time.time() * 1000
            for hit in hits:
                assert verify(hit), hit.headers
                assert not verify(hit, "another-secret")
                t = int(hit.headers["courier-signature"].split(",")[0].removeprefix("t="))
                assert now_ms - 60_000 < t <= now_ms + 1000  # epoch milliseconds
                assert hit.headers["content-type"] == "application/json"
                assert hit.body == orjson.dumps(hit.event)  # compact JSON, the signed bytes
                assert hit.event["type"] == "message:updated"
                data = hit.data
                assert data["recipient"] == data["recipientId"] == expected[hit.key]
                assert data["event"] == data["notification"] == EVENT
                assert isinstance(data["enqueued"], int)
                stamps = {k for k in ("sent", "delivered", "opened", "clicked") if k in data}
                status = data["status"]
                if status in ("ENQUEUED", "UNROUTABLE"):
                    assert stamps == set()
                    assert data["providers"] == []
                elif status in ("SENT", "UNDELIVERABLE"):
                    assert stamps == {"sent"}
                else:
                    assert stamps == {"sent", "delivered"}
                if status == "UNDELIVERABLE":
                    assert data["reason"] == "BOUNCED"
                    assert data["error"]
                    assert data["providers"][0]["status"] == "UNDELIVERABLE"
                    assert data["providers"][0]["error"] == data["error"]
                elif status == "UNROUTABLE":
                    assert (data["reason"], bool(data["error"])) == ("NO_CHANNELS", True)
                else:
                    assert "reason" not in data and "error" not in data

            # The last event of each message is GET /messages/{id} plus recipientId.
            final = {
                h.data["id"]: h.data
                for h in hits
                if h.data["status"] in ("DELIVERED", "UNDELIVERABLE", "UNROUTABLE")
            }
            for message_id, data in final.items():
                current = http.get(f"/messages/{message_id}").json()
                assert {**current, "recipientId": data["recipientId"]} == data


def test_polls_progression_and_cancel(start: Callable[..., Emulator]) -> None:
    with Receiver() as receiver:
        emu = start(receiver, progression="polls:1")
        with client(emu) as http:
            job_id = send_job(http, users(ok=2, bounce=0, unroutable=0))
            assert http.get(f"/bulk/{job_id}").json()["job"]["status"] == "COMPLETED"
            first, second = (u["messageId"] for u in all_users(http, job_id))
            wait_for(emu, lambda s: s["webhooks_delivered"] == 2)
            assert sorted(receiver.arrived()) == sorted([(first, "ENQUEUED"), (second, "ENQUEUED")])

            canceled = http.post(f"/messages/{first}/cancel").json()
            assert http.get(f"/messages/{second}").json()["status"] == "SENT"
            assert http.get(f"/messages/{second}").json()["status"] == "DELIVERED"
            assert http.get(f"/messages/{second}").json()["status"] == "DELIVERED"  # no change
            stats = wait_for(emu, lambda s: s["webhooks_delivered"] == 5)
            assert stats["webhooks_events"] == 5 and stats["webhooks_pending"] == 0
            by_key = {h.key: h.data for h in receiver.hits}
            assert set(by_key) == {
                (first, "ENQUEUED"),
                (first, "CANCELED"),
                (second, "ENQUEUED"),
                (second, "SENT"),
                (second, "DELIVERED"),
            }
            assert by_key[(first, "CANCELED")]["canceledAt"] == canceled["canceledAt"]
            # One worker per message: without faults or retries, its events arrive in order.
            assert [k for k in receiver.arrived() if k[0] == second] == [
                (second, "ENQUEUED"),
                (second, "SENT"),
                (second, "DELIVERED"),
            ]
            assert by_key[(second, "SENT")]["sent"] < by_key[(second, "DELIVERED")]["delivered"]


def test_seconds_progression_emits_without_reads(start: Callable[..., Emulator]) -> None:
    with Receiver() as receiver:
        emu = start(receiver, progression="seconds:0.05")
        with client(emu) as http:
            send_job(http, users(ok=2, bounce=1, unroutable=1))
        # No GET at all: the sender notices the job's completion and each step on time.
        stats = wait_for(emu, lambda s: s["webhooks_delivered"] == 2 * 3 + 3 + 2)
        assert stats["webhooks_pending"] == 0
        statuses = Counter(status for _id, status in receiver.arrived())
        assert statuses == {
            "ENQUEUED": 4,
            "SENT": 3,
            "DELIVERED": 2,
            "UNDELIVERABLE": 1,
            "UNROUTABLE": 1,
        }
        for hit in receiver.hits:
            data = hit.data
            if data["status"] == "DELIVERED":
                assert data["delivered"] - data["sent"] == data["sent"] - data["enqueued"] == 50


def test_non_2xx_is_retried_then_delivered(start: Callable[..., Emulator]) -> None:
    codes = [500, 429, 503, 408, 302]

    def answer(hit: Hit, seen: int) -> int:
        return codes[seen - 1] if seen <= len(codes) else 204

    with Receiver(answer) as receiver:
        emu = start(receiver)
        with client(emu) as http:
            job_id = send_job(http, users(ok=1, bounce=1, unroutable=0))
            expected = expected_keys(http, job_id)
        stats = wait_for(emu, drained)
        n = len(expected)
        assert stats["webhooks_delivered"] == n
        assert stats["webhooks_retried"] == len(codes) * n
        assert stats["webhooks_sent"] == (len(codes) + 1) * n
        assert stats["webhooks_dropped"] == 0
        assert receiver.seen == dict.fromkeys(expected, len(codes) + 1)
        assert all(verify(h) for h in receiver.hits)
        # Every attempt is signed afresh: the t of a retry is not older than the first one.
        first = next(h for h in receiver.hits if h.key == next(iter(expected)))
        last = [h for h in receiver.hits if h.key == first.key][-1]
        assert (
            last.headers["courier-signature"].split(",")[0]
            >= (first.headers["courier-signature"].split(",")[0])
        )


def test_other_4xx_is_given_up_at_once(start: Callable[..., Emulator]) -> None:
    with Receiver(lambda hit, seen: 401 if hit.data["status"] == "SENT" else 200) as receiver:
        emu = start(receiver)
        with client(emu) as http:
            send_job(http, users(ok=2, bounce=0, unroutable=0))
        stats = wait_for(emu, drained)
        assert stats["webhooks_dropped"] == 2 and stats["webhooks_delivered"] == 4
        assert stats["webhooks_retried"] == 0 and stats["webhooks_sent"] == 6
        balanced(stats)
        assert sorted(Counter(receiver.seen.values())) == [1]  # nothing POSTed twice


def test_gives_up_after_the_documented_attempts(start: Callable[..., Emulator]) -> None:
    # 104 attempts over Courier's 24 h schedule; × 1e-5 that is 0.86 s.
    with Receiver(lambda hit, seen: 503) as receiver:
        emu = start(receiver, webhook_time_scale=1e-5)
        with client(emu) as http:
            send_job(http, users(ok=0, bounce=0, unroutable=1))  # ENQUEUED, UNROUTABLE
        stats = wait_for(emu, drained, seconds=60)
        assert stats["webhooks_dropped"] == 2 and stats["webhooks_delivered"] == 0
        assert stats["webhooks_sent"] == 2 * 104
        assert stats["webhooks_retried"] == 2 * 103
        assert set(receiver.seen.values()) == {104}


def test_timeout_is_retried(start: Callable[..., Emulator]) -> None:
    # The first POST of each event gets its answer after 2 s, past the 0.5 s timeout.
    with Receiver(lambda hit, seen: 2.0 if seen == 1 else 200) as receiver:
        emu = start(receiver, webhook_timeout=0.5)
        with client(emu) as http:
            send_job(http, users(ok=0, bounce=0, unroutable=1))
        stats = wait_for(emu, drained)
        assert stats["webhooks_retried"] == 2 and stats["webhooks_delivered"] == 2
        assert stats["webhooks_sent"] == 4
        # The receiver got the timed-out POST too: a duplicate, as Courier warns.
        assert set(receiver.seen.values()) == {2}


FAULTS = "webhook_dup_rate=0.3,webhook_reorder_rate=0.3,webhook_drop_rate=0.2,seed=11"


def _faulty_run(start: Callable[..., Emulator], receiver: Receiver) -> tuple[Any, Any]:
    emu = start(receiver, faults=FAULTS)
    with client(emu) as http:
        job_id = send_job(http, users(ok=12, bounce=4, unroutable=4))
        expected = expected_keys(http, job_id)
    stats = wait_for(emu, drained)
    return stats, expected


def test_dup_reorder_drop_faults_match_the_stats(start: Callable[..., Emulator]) -> None:
    with Receiver() as receiver:
        stats, expected = _faulty_run(start, receiver)
        balanced(stats)
        seen = receiver.seen
        assert set(seen) <= set(expected)
        missing = set(expected) - set(seen)
        twice = [k for k, n in seen.items() if n == 2]
        assert set(seen.values()) <= {1, 2}
        assert stats["webhooks_events"] == len(expected) == 12 * 3 + 4 * 3 + 4 * 2
        assert stats["webhooks_dropped"] == len(missing) > 0
        assert stats["webhooks_duplicated"] == len(twice) > 0
        assert stats["webhooks_delivered"] == stats["webhooks_sent"] == len(receiver.hits)
        assert stats["webhooks_reordered"] > 0
        assert all(verify(h) for h in receiver.hits)
        # Held-back deliveries are overtaken: some message's events arrive out of order.
        rank = {"ENQUEUED": 0, "SENT": 1, "DELIVERED": 2, "UNDELIVERABLE": 2, "UNROUTABLE": 1}
        arrivals: dict[str, list[int]] = {}
        for message_id, status in receiver.arrived():
            arrivals.setdefault(message_id, []).append(rank[status])
        assert any(order != sorted(order) for order in arrivals.values())

    # Seeded: the same run gives the same faults.
    with Receiver() as again:
        stats2, expected2 = _faulty_run(start, again)
        for name in ("webhooks_dropped", "webhooks_duplicated", "webhooks_reordered"):
            assert stats2[name] == stats[name]
        by_recipient = {(expected[k], k[1]): n for k, n in seen.items()}
        assert by_recipient == {(expected2[k], k[1]): n for k, n in again.seen.items()}


def test_restart_with_db_delivers_the_outbox(
    start: Callable[..., Emulator], tmp_path: Path
) -> None:
    db = tmp_path / "emu.sqlite"
    with Receiver(lambda hit, seen: 503) as down:
        # Real timing: after the first failure the next try is 5 s away.
        emu = start(down, db=db, webhook_time_scale=1.0)
        with client(emu) as http:
            job_id = send_job(http, users(ok=2, bounce=0, unroutable=1))
            expected = expected_keys(http, job_id)
        wait_for(emu, lambda s: s["webhooks_retried"] == len(expected))
        emu.stop()
    assert SECRET.encode() not in db.read_bytes()
    for extra in ("-wal", "-shm"):
        path = Path(f"{db}{extra}")
        assert not path.exists() or SECRET.encode() not in path.read_bytes()

    with Receiver() as up:
        emu = start(up, db=db, webhook_time_scale=1.0)
        before = emu.stats()
        assert before["webhooks_pending"] == len(expected)
        assert before["webhooks_retried"] == len(expected)  # counters persist with --db
        with client(emu) as http:
            assert http.post("/_emulator/webhooks/flush").json() == {"pending": len(expected)}
        stats = wait_for(emu, drained)
        assert stats["webhooks_delivered"] == len(expected)
        assert sorted(up.seen) == sorted(expected)
        assert all(verify(h) for h in up.hits)


def test_secret_is_never_shown(start: Callable[..., Emulator]) -> None:
    with Receiver() as receiver:
        emu = start(receiver)
        assert SECRET not in repr(emu)
        assert SECRET not in repr(emu.state.webhooks)
        with client(emu) as http:
            config = http.get("/_emulator/config")
            assert SECRET not in config.text
            assert config.json()["webhooks"] == {
                "url": receiver.url,
                "signed": True,
                "time_scale": 0.001,
                "timeout": 10.0,
                "max_attempts": 104,
            }
            # Control routes stay key-protected.
            assert httpx.post(f"{emu.url}/_emulator/webhooks/flush").status_code == 401


def test_unsigned_without_a_secret(start: Callable[..., Emulator]) -> None:
    with Receiver() as receiver:
        emu = start(receiver, webhook_secret=None)
        with client(emu) as http:
            send_job(http, users(ok=1, bounce=0, unroutable=0))
        wait_for(emu, drained)
        assert len(receiver.hits) == 3
        assert all("courier-signature" not in h.headers for h in receiver.hits)


def test_off_by_default(start: Callable[..., Emulator]) -> None:
    emu = start(None)
    stats = emu.stats()
    assert not any(k.startswith("webhooks_") for k in stats)
    with client(emu) as http:
        assert http.post("/_emulator/webhooks/flush").status_code == 409
        assert http.get("/_emulator/config").json()["webhooks"] is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"webhook_secret": "s"}, "without a webhook URL"),
        ({"webhook_url": "ftp://x/y"}, "bad webhook URL"),
        ({"webhook_url": "http://127.0.0.1:9/h", "webhook_secret": ""}, "secret is empty"),
        ({"webhook_url": "http://127.0.0.1:9/h", "webhook_time_scale": 0}, "time scale"),
        ({"webhook_url": "http://127.0.0.1:9/h", "webhook_timeout": -1}, "timeout"),
    ],
)
def test_bad_webhook_settings(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(EmulatorConfigError, match=needle):
        Emulator(**kwargs).start()


def test_webhook_fault_keys_parse() -> None:
    spec = FaultSpec.parse("webhook_dup_rate=0.1,webhook_reorder_rate=0.2,webhook_drop_rate=1")
    assert (spec.webhook_dup_rate, spec.webhook_reorder_rate, spec.webhook_drop_rate) == (
        0.1,
        0.2,
        1.0,
    )
    with pytest.raises(EmulatorConfigError, match="out of range"):
        FaultSpec.parse("webhook_drop_rate=1.5")


def test_cli_flags_and_the_secret_from_the_environment(tmp_path: Path) -> None:
    with Receiver() as receiver:
        env = {**os.environ, "BULKBATCH_EMULATOR_WEBHOOK_SECRET": SECRET}
        env.pop("BULKBATCH_EMULATOR_API_KEY", None)
        cmd = [
            sys.executable,
            "-m",
            "bulkbatch.emulator",
            "--port",
            "0",
            "--progression",
            "immediate",
            "--db",
            str(tmp_path / "cli.sqlite"),
            "--webhook-url",
            receiver.url,
            "--webhook-time-scale",
            "0.001",
            "--faults",
            "webhook_dup_rate=1",
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.strip().rsplit(" ", 1)[-1]
            with httpx.Client(base_url=url, timeout=10) as http:
                job = http.post("/bulk", json={"message": {"event": EVENT}}).json()["jobId"]
                http.post(f"/bulk/{job}", json={"users": users(ok=1, bounce=0, unroutable=0)})
                http.post(f"/bulk/{job}/run")
                deadline = time.monotonic() + 20
                while http.get("/_emulator/stats").json()["webhooks_delivered"] < 6:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert SECRET not in out + err + line
        assert len(receiver.hits) == 6  # 3 status changes, each POSTed twice
        assert all(verify(h) for h in receiver.hits)
