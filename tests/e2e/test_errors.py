"""Errors a 3 a.m. run meets: bad key, unknown job, a locked or unwritable run directory,
a full disk. Each is one line naming the fix, the run stays resumable, and the API key
never appears in any output, exception or file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import bulkbatch
from bulkbatch.errors import StateError
from bulkbatch.synth import generate
from tests.support import SAMPLE, EmulatorProcess, wait_for
from tests.support import bulkbatch as run_cli

pytestmark = pytest.mark.e2e

WRONG_KEY = "sk_live_WRONG_9f8e7d6c5b4a"


def all_bytes_under(path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in path.rglob("*") if f.is_file())


def test_bad_key_is_one_line_and_never_shown(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with EmulatorProcess() as emu:
        env = {**emu.env(), "COURIER_API_KEY": WRONG_KEY}
        proc = run_cli(
            "send", str(SAMPLE), "--event", "welcome", "--run-dir", str(run_dir), env=env
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: POST /bulk failed with HTTP 401: Unauthorized (authentication_error). Check "
        "COURIER_API_KEY (or --api-key) and that the key belongs to the workspace of "
        "COURIER_BASE_URL."
    )
    assert "Traceback" not in proc.stderr
    assert WRONG_KEY not in proc.stdout + proc.stderr
    assert WRONG_KEY.encode() not in all_bytes_under(run_dir)
    # nothing was created, so the run resumes with the right key
    with EmulatorProcess() as emu:
        # a new emulator is a new base URL: the run binds to one only once a job exists
        fixed = run_cli("--quiet", "resume", str(run_dir), "--json", env=emu.env())
        assert fixed.returncode == 0, fixed.stderr
        assert emu.stats()["jobs_created"] == 1


def test_giving_up_names_the_flag_that_allows_more_tries(tmp_path: Path) -> None:
    """A server failing every request: the run stops after --max-attempts tries, waiting at
    most --max-backoff between them, and the line names the flag a CLI user can raise, on
    send and on resume; the run keeps both for its resume."""
    run_dir = tmp_path / "r"
    with EmulatorProcess("--faults", "error_rate=1,seed=1") as emu:
        proc = run_cli(
            "send", str(SAMPLE), "--event", "welcome", "--run-dir", str(run_dir),
            "--max-attempts", "3", "--max-backoff", "0.01", env=emu.env(),
        )  # fmt: skip
        posts = emu.stats()["requests_by_status"]
        # The usual next step, on a resume: allow more tries.
        more = run_cli("resume", str(run_dir), "--max-attempts", "4", env=emu.env())
        assert more.returncode == 1, more.stderr
        assert "(gave up after 4 attempts; allow more with --max-attempts" in more.stderr
        assert emu.stats()["requests_by_status"] == {"500": 3 + 4}
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: POST /bulk failed with HTTP 500"), last
    assert last.endswith(
        "(gave up after 3 attempts; allow more with --max-attempts (max_attempts=))"
    )
    assert posts == {"500": 3}
    stored = orjson.loads((run_dir / "state.json").read_bytes())["spec"]
    assert (stored["max_attempts"], stored["max_backoff"]) == (3, 0.01)
    with EmulatorProcess() as emu:
        fixed = run_cli("--quiet", "resume", str(run_dir), "--json", env=emu.env())
        assert fixed.returncode == 0, fixed.stderr
        assert emu.stats()["jobs_created"] == 1


def test_key_never_in_exceptions_or_reprs(tmp_path: Path) -> None:
    settings = bulkbatch.Settings(api_key=WRONG_KEY)
    assert WRONG_KEY not in repr(settings)
    client = bulkbatch.CourierClient(settings)
    assert WRONG_KEY not in repr(client)
    with (
        bulkbatch.Emulator(api_key="the-right-key") as emu,
        pytest.raises(bulkbatch.errors.AuthenticationError) as e,
    ):
        bulkbatch.send(
            SAMPLE,
            event="welcome",
            settings=settings.with_(base_url=emu.url),
            run_dir=tmp_path / "r",
        )
    assert WRONG_KEY not in str(e.value) and WRONG_KEY not in repr(e.value)


def test_unknown_job_on_refresh_names_the_job(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with EmulatorProcess("--progression", "immediate") as emu:
        sent = run_cli(
            "--quiet",
            "send",
            str(SAMPLE),
            "--event",
            "welcome",
            "--run-dir",
            str(run_dir),
            env=emu.env(),
        )
        assert sent.returncode == 0, sent.stderr
        import httpx

        auth = {"Authorization": f"Bearer {emu.api_key}"}
        httpx.post(f"{emu.url}/_emulator/reset", headers=auth, timeout=10)
        proc = run_cli("status", str(run_dir), "--refresh", env=emu.env())
    job_id = orjson.loads((run_dir / "state.json").read_bytes())["jobs"][0]["job_id"]
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert line.startswith(f"Error: GET /bulk/{job_id} failed with HTTP 404")
    assert job_id in line and "\n" not in line


def test_locked_run_directory(tmp_path: Path) -> None:
    audience = tmp_path / "a.parquet"
    generate(audience, 20_000, fmt="parquet", seed=3)
    run_dir = tmp_path / "r"
    with EmulatorProcess() as emu:
        env = emu.env()
        first = subprocess.Popen(
            [sys.executable, "-m", "bulkbatch", "--quiet", "send", str(audience), "--event", "welcome",
             "--run-dir", str(run_dir), "--rate", "10", "--batch-size", "200"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: emu.stats()["users_accepted"] > 0, 60)
            second = run_cli("resume", str(run_dir), env=env)
        finally:
            first.kill()
            first.wait()
        assert second.returncode == 1
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(
            f"Error: Run directory {run_dir} is in use by another bulkbatch process"
        )
        assert line.endswith(f"then run 'bulkbatch resume {run_dir}'.")
        # once the other process is gone, the same command finishes the run
        done = run_cli("--quiet", "resume", str(run_dir), "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert emu.stats()["max_accepted_per_recipient"] == 1


def test_unwritable_run_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("plan", str(SAMPLE), "--event", "welcome", "--run-dir", str(blocker / "run"))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"Error: Cannot create the run directory {blocker / 'run'}"
    )
    assert "--run-dir" in proc.stderr


def test_disk_full_while_saving_state_leaves_a_resumable_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "r"
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str, dst: str) -> None:
        # The fifth save of state.json fails (mid-send). Only those saves are counted: the
        # rename that completes plan.parquet, written meanwhile, comes at a varying moment.
        if str(dst).endswith("state.json"):
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    with bulkbatch.Emulator(progression="immediate") as emu:
        settings = bulkbatch.Settings(base_url=emu.url, poll_interval=0.02, start_rate=2000)
        monkeypatch.setattr("bulkbatch.files.os.replace", flaky_replace)
        with pytest.raises(StateError) as e:
            bulkbatch.send(SAMPLE, event="welcome", settings=settings, run_dir=run_dir)
        assert str(e.value).startswith(
            f"Could not write {run_dir / 'state.json'}: No space left on device."
        )
        assert f"bulkbatch resume {run_dir}" in str(e.value)
        monkeypatch.setattr("bulkbatch.files.os.replace", real_replace)
        run = bulkbatch.resume(run_dir, settings=settings)
        stats = emu.stats()
    assert run.summary()["accounting_ok"] is True
    assert stats["jobs_created"] == 1 and stats["runs"] == 1
    assert stats["max_accepted_per_recipient"] == 1


def test_running_out_of_the_memory_budget_names_the_setting_and_resumes(tmp_path: Path) -> None:
    """DuckDB hitting its memory cap is not "a bad file" or "a bad query": the message
    names the budget and the setting that raises it, and the run resumes."""
    run_dir = tmp_path / "r"
    with EmulatorProcess() as emu:
        starved = {**emu.env(), "BULKBATCH_MEMORY_LIMIT": "1MB"}
        proc = run_cli(
            "send", str(SAMPLE), "--event", "welcome", "--run-dir", str(run_dir), env=starved
        )
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: DuckDB ran out of its 1MB memory budget (")
        assert "BULKBATCH_MEMORY_LIMIT=2GB" in last
        assert f"'bulkbatch resume {run_dir}'" in last
        assert "Traceback" not in proc.stderr
        resumed = run_cli("--quiet", "resume", str(run_dir), env=emu.env())
    assert resumed.returncode == 0, resumed.stderr
    assert orjson.loads((run_dir / "summary.json").read_bytes())["accounting_ok"]


def test_a_memory_limit_that_is_not_a_size_is_named(tmp_path: Path) -> None:
    env = {**os.environ, "BULKBATCH_MEMORY_LIMIT": "lots"}
    proc = run_cli("plan", str(SAMPLE), "--event", "welcome", "--run-dir", str(tmp_path), env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: BULKBATCH_MEMORY_LIMIT='lots' is not a memory size DuckDB understands; use a "
        "size such as 512MB or 2GB, or unset it for the default 320MB."
    )
