"""The API key is never printed or stored: not on stdout or stderr (text or JSON logs), not in
any file of the run directory (run.duckdb and state.json included), not in the emulator's
database, not in the per-user data directory.

A key with surrounding whitespace (a CRLF ``.env`` file, a secret file's trailing newline)
works, stripped. A key with a control or non-ASCII character inside is refused in one line
that holds no piece of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import API_KEY, SAMPLE, EmulatorProcess, bulkbatch

pytestmark = pytest.mark.e2e

AUDIENCE = "user_id,email\n" + "".join(f"k{n},k{n}@example.com\n" for n in range(20))


def _env(url: str, key: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURIER_", "BULKBATCH_"))}
    env.update(COURIER_BASE_URL=url, COURIER_API_KEY=key, BULKBATCH_DATA_DIR=str(data_dir))
    return env


def _files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())


def _assert_nowhere(secret: str, texts: list[str], *roots: Path) -> int:
    """No text and no file under ``roots`` holds ``secret``; returns the files read."""
    needle = secret.encode()
    for text in texts:
        assert secret not in text
    read = 0
    for path in _files(*roots):
        assert needle not in path.read_bytes(), f"the API key is in {path}"
        read += 1
    return read


@pytest.fixture
def emulator_db(tmp_path: Path) -> Iterator[tuple[EmulatorProcess, Path]]:
    db = tmp_path / "emulator" / "courier.sqlite"
    db.parent.mkdir()
    with EmulatorProcess(db=db) as emu:
        yield emu, db


@pytest.mark.parametrize("tail", ["\n", "\r\n", " "], ids=["lf", "crlf", "space"])
def test_a_key_with_surrounding_whitespace_works_and_is_stored_nowhere(
    tail: str, tmp_path: Path, emulator_db: tuple[EmulatorProcess, Path]
) -> None:
    emu, db = emulator_db
    data_dir = tmp_path / "data"
    env = _env(emu.url, API_KEY + tail, data_dir)
    audience = tmp_path / "audience.csv"
    audience.write_text(AUDIENCE)
    texts: list[str] = []

    def run(*args: str, code: int = 0) -> None:
        done = bulkbatch(*args, env=env, cwd=tmp_path, timeout=120)
        texts.extend((done.stdout, done.stderr))
        assert done.returncode == code, done.stderr[-2000:]

    run("--log-format", "json", "send", str(audience), "--event", "welcome", "--run-dir", "r")
    run("status", "r", "--refresh", "--json")
    run("--log-format", "json", "results", "r", "--messages")
    run("resume", "r")
    run("report", "r")
    run("--log-format", "json", "cancel", "r")
    assert any('"stage":' in text for text in texts), "no JSON log lines were checked"

    read = _assert_nowhere(API_KEY, texts, tmp_path / "r", data_dir)
    assert {"run.duckdb", "state.json", "results.parquet"} <= {
        p.name for p in _files(tmp_path / "r")
    }
    assert read >= 6
    emulator_files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    _assert_nowhere(API_KEY, [], *emulator_files)  # while it runs (WAL not yet folded in)
    emu.stop()
    assert db.is_file()
    _assert_nowhere(API_KEY, [], *emulator_files)


BAD_KEYS = {
    "bell": "sk_test_ab\x07cdef123456",
    "crlf-inside": "sk_test_abcd\r\nX-Evil: 1",
    "non-ascii": "sk_test_\u00e9cdef123456",
    "zero-width": "sk_test_ab\u200bcdef123456",
}


@pytest.mark.parametrize(
    ("name", "command"),
    [
        *((name, "send") for name in sorted(BAD_KEYS)),
        ("crlf-inside", "status"),
        ("bell", "results"),
    ],
)
def test_a_key_with_a_bad_character_is_refused_in_one_line(
    name: str, command: str, tmp_path: Path, emulator_process: EmulatorProcess
) -> None:
    key = BAD_KEYS[name]
    env = _env(emulator_process.url, key, tmp_path / "data")  # (NUL: see tests/client)
    if command == "send":
        args: tuple[str, ...] = ("send", str(SAMPLE), "--event", "welcome", "--run-dir", "r")
    else:
        golden = bulkbatch(
            "send", str(SAMPLE), "--event", "welcome", "--run-dir", "r", "--no-wait",
            env=_env(emulator_process.url, API_KEY, tmp_path / "data"), cwd=tmp_path,
        )  # fmt: skip
        assert golden.returncode == 0, golden.stderr[-2000:]
        args = (command, "r", *(("--refresh",) if command == "status" else ("--messages",)))
    done = bulkbatch(*args, env=env, cwd=tmp_path, timeout=60)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("[")]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: The Courier API key has "), lines
    assert "not shown" in lines[0] and "COURIER_API_KEY" in lines[0]
    output = done.stdout + done.stderr
    inner = key[len("sk_test_") :]
    for piece in (key, key.strip(), "sk_test_", inner[:4], inner[-4:]):
        assert piece not in output, piece
    assert "Traceback" not in output
    _assert_nowhere("sk_test_", [], tmp_path / "data")
    if command == "send":
        assert not (tmp_path / "r" / "run.duckdb").exists(), "refused, yet the run started"
