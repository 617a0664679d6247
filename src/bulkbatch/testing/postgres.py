"""A throw-away PostgreSQL server for tests: the real thing, not a mock.

The PostgreSQL ledger and campaign registry are only trustworthy if their atomicity is proven
against a real server (``ON CONFLICT`` under concurrent transactions, advisory locks, COPY),
so the tests start one: Debian's server binaries (``/usr/lib/postgresql/<version>/bin``) run
``initdb`` into a temporary directory and ``postgres`` on a free 127.0.0.1 port with trust
authentication, durability switched off (it is thrown away), and everything is removed on exit.

PostgreSQL refuses to run as root, and test containers often run as root: then the data
directory is handed to the ``postgres`` system user and both programs run as that user.

    with PostgresServer() as url:  # postgresql://postgres@127.0.0.1:<port>/postgres
        ...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from bulkbatch.errors import StateError

__all__ = ["INSTALL_HINT", "PostgresServer", "find_bin_dir"]

INSTALL_HINT = (
    "install PostgreSQL's server binaries: `apt-get install -y postgresql` on Debian/Ubuntu "
    "(or `make pytest`, which does it when run as root)"
)
_READY = "database system is ready to accept connections"
_SERVICE_USER = "postgres"


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres``: Debian's newest
    ``/usr/lib/postgresql/*/bin``, else the one on PATH.

    :raises StateError: neither is installed (the message says how to install them)
    """

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path))

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    on_path = shutil.which("initdb")
    if candidates:
        return Path(candidates[-1]).parent
    if on_path:
        return Path(on_path).resolve().parent
    raise StateError(
        "PostgreSQL's initdb was not found (looked in /usr/lib/postgresql/*/bin and on PATH), "
        f"so the PostgreSQL tests cannot start a server; {INSTALL_HINT}."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """``initdb`` + ``postgres`` in a temporary directory; ``start()`` returns the URL once the
    server accepts connections, ``stop()`` shuts it down and deletes everything.

    :param bin_dir: where ``initdb`` and ``postgres`` are (default :func:`find_bin_dir`)
    :param start_timeout: seconds to wait for the server to accept connections
    :param settings: extra ``postgres -c name=value`` settings
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        start_timeout: float = 60.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.settings = dict(settings or {})
        self.root: Path | None = None
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    # -- running as the postgres user when we are root -----------------------------------
    def _as_owner(self) -> dict[str, Any]:
        """Popen keywords that run a program as the data directory's owner: the
        ``postgres`` system user when we are root (PostgreSQL refuses root), else us."""
        if os.geteuid() != 0:
            return {}
        try:
            user = pwd.getpwnam(_SERVICE_USER)
        except KeyError:
            raise StateError(
                f"Running as root, and there is no {_SERVICE_USER!r} system user to run "
                f"PostgreSQL as (it refuses to run as root); {INSTALL_HINT}, which creates it."
            ) from None
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(_SERVICE_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            argv,
            capture_output=True,
            env=self._env(),
            check=False,
            cwd=self.root,
            **self._as_owner(),
        )
        if done.returncode:
            tail = (done.stderr or done.stdout).decode(errors="replace").strip()[-2000:]
            raise StateError(f"{Path(argv[0]).name} failed (exit {done.returncode}): {tail}")

    def _env(self) -> dict[str, str]:
        """A clean environment: no PG* variable of the caller's reaches the server tools."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> Self:
        bin_dir = self.bin_dir or find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="bulkbatch-pg-"))
        try:
            self._chown(self.root)
            data = self.root / "data"
            self._run(
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
            for attempt in range(3):  # the free port may be taken before postgres binds it
                self.port = _free_port()
                if self._launch(bin_dir, data):
                    break
                if attempt == 2:
                    raise StateError(f"postgres did not start: {self._log_tail()}")
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self

    def _launch(self, bin_dir: Path, data: Path) -> bool:
        """Start ``postgres``; True once it is ready, False if it exited (port taken)."""
        assert self.root is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **self.settings,
        }
        argv = [str(bin_dir / "postgres"), "-D", str(data)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        log = self.root / "postgres.log"
        with open(log, "ab") as out:
            self._chown(log)
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in the terminal stops the tests, not it
                **self._as_owner(),
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _READY in self._log_tail() and self._accepts():
                return True
            time.sleep(0.05)
        raise StateError(
            f"postgres did not accept connections within {self.start_timeout:g}s: "
            f"{self._log_tail()}"
        )

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def _log_tail(self) -> str:
        if self.root is None:
            return ""
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), SIGKILL after 30 s; then the
        temporary directory goes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server (create it with :meth:`create_database`)."""
        return self.url.rsplit("/", 1)[0] + "/" + name

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (letters, digits, ``_``); returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise StateError(f"Database name {name!r} must be lower-case letters, digits and _.")
        bin_dir = self.bin_dir or find_bin_dir()
        self._run(
            str(bin_dir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
        )
        return self.database_url(name)

    def __enter__(self) -> str:
        return self.start().url

    def __exit__(self, *exc: object) -> None:
        self.stop()
