"""A PostgreSQL server (or client) that vanishes mid-transaction, against a real server.

A failover, a lost host or a NAT/load-balancer that drops an idle flow sends nothing: no FIN,
no RST. Without TCP keepalives a client waiting for an answer waits for the OS's keepalive
(two hours and more), and a server keeps a vanished worker's transaction, and its row locks
on claimed recipients, just as long, so every other worker's claim times out meanwhile.

The vanishing is real: a TCP proxy between the two puts one of its sockets in repair mode
(``TCP_REPAIR``) and closes it, which makes Linux forget the connection without sending
anything. The other end learns of it only when it next sends something, a keepalive probe,
and gets a reset. Repair mode needs CAP_NET_ADMIN, which ``make test`` has (it runs as root
here); the check that the keepalives are set at all needs nothing.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bulkbatch.errors import StateError
from bulkbatch.stages import once_pg
from bulkbatch.stages.once import Held
from bulkbatch.stages.once_pg import PgDatabase, PgLedger

pytest_plugins = ["tests.pgserver"]  # a real PostgreSQL server: postgres_url, pg_url

TCP_REPAIR = getattr(socket, "TCP_REPAIR", 19)  # linux/tcp.h; Python names it from 3.12


def _can_repair() -> bool:
    probe = socket.socket()
    try:
        probe.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    except OSError:
        return False
    finally:
        probe.close()
    return True


needs_repair = pytest.mark.skipif(
    not _can_repair(), reason="TCP_REPAIR needs CAP_NET_ADMIN (make test runs as root)"
)


def vanish(sock: socket.socket) -> None:
    """Close ``sock`` without telling its peer anything (no FIN, no RST)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    sock.close()


class Proxy:
    """One-connection-at-a-time TCP proxy to ``upstream``; ``arm(marker, side)`` makes the
    next client bytes containing ``marker`` go unforwarded and ``side`` vanish (the other
    side is closed normally, as a dead host's half would be by its own kernel)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed: tuple[bytes, str] | None = None
        self.vanished = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def arm(self, marker: bytes, side: str) -> None:
        self.armed = (marker, side)

    def close(self) -> None:
        self._stop = True
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        peers = {client: server, server: client}
        with selectors.DefaultSelector() as sel:
            for s in peers:
                sel.register(s, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        client.close()
                        server.close()
                        return
                    if src is client and self.armed and self.armed[0] in data:
                        gone, other = (
                            (client, server) if self.armed[1] == "client" else (server, client)
                        )
                        self.armed = None
                        # Let the kernels send their delayed ACKs (up to 200 ms) first: data
                        # left unacknowledged would be retransmitted into the vanished
                        # socket and answered by a reset at once, which a dead host never
                        # sends. After this pause only a keepalive probe can find out.
                        time.sleep(0.5)
                        vanish(gone)
                        # Before the other side is closed: its peer, woken by that close,
                        # may check this at once (it failed so under load).
                        self.vanished.set()
                        other.close()
                        return
                    peers[src].sendall(data)


@pytest.fixture
def proxy(pg_url: str) -> Iterator[tuple[Proxy, str]]:
    parts = urlsplit(pg_url)
    assert parts.hostname and parts.port
    p = Proxy((parts.hostname, parts.port))
    via = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{p.port}"))
    yield p, via
    p.close()


@pytest.fixture
def quick_keepalives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe after 1 s idle, so a vanished peer is noticed in seconds, not in 30."""
    monkeypatch.setattr(once_pg, "KEEPALIVE", once_pg.Keepalive(1, 1, 2, 5_000))


def socket_of(conn: psycopg.Connection[tuple[object, ...]]) -> socket.socket:
    return socket.socket(fileno=os.dup(conn.fileno()))


def test_connections_probe_a_silent_server(pg_url: str) -> None:
    db = PgDatabase(pg_url, "--once-per ledger")
    with db.connect() as conn, socket_of(conn) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == once_pg.KEEPALIVE.idle
        assert (
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == once_pg.KEEPALIVE.interval
        )
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == once_pg.KEEPALIVE.probes
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == (
            once_pg.KEEPALIVE.user_timeout_ms
        )
        # ... and the server probes this client as long as a transaction is open
        with conn.transaction():
            db.set_limits(conn)
            row = conn.execute(
                "SELECT current_setting('tcp_keepalives_idle'), "
                "current_setting('tcp_keepalives_interval'), "
                "current_setting('tcp_keepalives_count')"
            ).fetchone()
        assert row == tuple(str(v) for v in once_pg.KEEPALIVE[:3])
    idle, interval, probes, user_timeout_ms = once_pg.KEEPALIVE  # both ends agree: 30 s
    assert idle + interval * probes == user_timeout_ms / 1000 == 30


def test_the_url_overrides_the_keepalives(pg_url: str) -> None:
    db = PgDatabase(f"{pg_url}?keepalives_idle=41", "--once-per ledger")
    with db.connect() as conn, socket_of(conn) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 41
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == (
            once_pg.KEEPALIVE.interval
        )


@needs_repair
@pytest.mark.usefixtures("quick_keepalives")
def test_a_vanished_server_ends_in_one_line(proxy: tuple[Proxy, str]) -> None:
    p, via = proxy
    ledger = PgLedger(via)
    p.arm(b"FROM bulkbatch_claims WHERE key", "client")
    started = time.monotonic()
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            ledger.lookup("welcome", ["ana@example.com"])
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    waiting = threading.Thread(target=lookup, daemon=True)  # a daemon: a hang fails, not hangs
    waiting.start()
    waiting.join(timeout=30)  # before keepalives: still waiting after two hours
    assert outcome, "the lookup was still waiting for the vanished server after 30 s"
    assert isinstance(outcome[0], StateError), outcome
    assert p.vanished.is_set()
    assert time.monotonic() - started < 20
    message = str(outcome[0])
    assert "\n" not in message
    assert message.startswith(f"The connection to the --once-per ledger {ledger.db.display} failed")
    assert "Retry" in message


@needs_repair
@pytest.mark.usefixtures("quick_keepalives")
def test_a_vanished_worker_releases_its_claims(pg_url: str, proxy: tuple[Proxy, str]) -> None:
    """Worker A claims and vanishes before committing; worker B's claim of the same people
    waits for A's row locks. The server probes A, finds it gone, rolls A back: B gets all."""
    p, via = proxy
    people = [f"p{i}@example.com" for i in range(10)]
    PgLedger(pg_url).claim("welcome", "other", "/runs/x", [people[:1]], lambda held: None)

    def vanish_mid_claim(held: Held) -> None:  # A holds locks on people[1:] right now
        p.arm(b"", "server")  # the next bytes A sends are never forwarded
        raise_later.append(held)

    raise_later: list[Held] = []
    with pytest.raises(StateError):
        PgLedger(via).claim("welcome", "a", "/runs/a", [people], vanish_mid_claim)
    assert p.vanished.is_set() and raise_later

    started = time.monotonic()
    b = PgLedger(pg_url, lock_timeout=25).claim(
        "welcome", "b", "/runs/b", [people], lambda held: None
    )
    assert (b.claimed, b.skipped_sent + b.skipped_in_progress) == (9, 1)
    assert time.monotonic() - started < 15  # the server's probes, not B's lock timeout
