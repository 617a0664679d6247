"""A campaign is sent once, whatever the scheduler, the shell or a neighbouring run does (#14).

Each test drives the real command line in child processes against a real emulator process,
and asks the emulator how often each person was accepted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest

from tests.support import SAMPLE, EmulatorProcess, bulkbatch, wait_for

pytestmark = pytest.mark.e2e


def _audience(path: Path, n: int, start: int = 0) -> Path:
    pl.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in range(start, start + n)],
            "email": [f"p{i}@example.com" for i in range(start, start + n)],
        }
    ).write_parquet(path)
    return path


def _send(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return bulkbatch(
        "--quiet", "send", *args, "--poll-interval", "0.05", "--json", env=env, cwd=cwd
    )


@pytest.mark.parametrize("flavor", ["current", "tutorial"])
def test_same_command_three_times_sends_each_person_once(tmp_path: Path, flavor: str) -> None:
    """Twice from two working directories, then again after the run directory is lost, on
    both of the emulator's answer sets (the spec's 200/204/204, the tutorial's 201/200/202)."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE, data / "recipients.csv")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    with EmulatorProcess("--flavor", flavor) as emu:
        first = _send(str(data / "recipients.csv"), "--event", "welcome", env=emu.env(), cwd=one)
        assert first.returncode == 0, first.stderr  # 9 rejected rows are reported, not failures
        summary = orjson.loads(first.stdout)
        ingested = summary["counts"]["ingested"]
        assert summary["counts"]["rejected"] > 0 and not summary["replayed"]

        second = _send(str(data / "recipients.csv"), "--event", "welcome", env=emu.env(), cwd=two)
        assert second.returncode == 0, second.stderr
        repeat = orjson.loads(second.stdout)
        assert repeat["run_dir"] == summary["run_dir"] and repeat["already_sent"] is True
        assert not (two / "runs").exists() or not any((two / "runs").iterdir())

        shutil.rmtree(summary["run_dir"])
        third = _send(str(data / "recipients.csv"), "--event", "welcome", env=emu.env(), cwd=two)
        assert third.returncode == 0, third.stderr
        again = orjson.loads(third.stdout)
        assert again["replayed"] is True and again["already_sent"] is True
        assert again["counts"]["ingested"] == ingested
        stats = emu.stats()
    assert stats["users_accepted"] == ingested
    assert stats["max_accepted_per_recipient"] == 1
    assert stats["runs"] == stats["jobs_created"] == len(summary["jobs"])


def test_two_campaigns_with_the_same_run_dir_name_both_send(tmp_path: Path) -> None:
    with EmulatorProcess() as emu:
        for day, start in (("monday", 0), ("tuesday", 500)):
            folder = tmp_path / day
            folder.mkdir()
            audience = _audience(folder / "a.parquet", 300, start)
            done = _send(
                str(audience), "--event", "daily", "--run-dir", "run", env=emu.env(), cwd=folder
            )
            assert done.returncode == 0, done.stderr
            assert orjson.loads(done.stdout)["counts"]["ingested"] == 300
        stats = emu.stats()
    assert stats["users_accepted"] == 600
    assert stats["jobs_created"] == 2


def test_a_new_instance_name_sends_an_identical_campaign_again(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.parquet", 200)
    with EmulatorProcess() as emu:
        for name in ("welcome-2026-12-01", "welcome-2026-12-01", "welcome-2026-12-02"):
            done = _send(
                str(audience), "--event", "w", "--run-id", name, env=emu.env(), cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr
        stats = emu.stats()
    assert stats["users_accepted"] == 400
    assert stats["max_accepted_per_recipient"] == 2


def test_non_ascii_run_directory_sends(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.parquet", 50)
    with EmulatorProcess() as emu:
        done = _send(
            str(audience), "--event", "w", "--run-dir", "runs/willkommen-münchen",
            env=emu.env(), cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert emu.stats()["users_accepted"] == 50


def test_filtered_rows_are_not_failures(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.parquet", 100)
    with EmulatorProcess() as emu:
        done = _send(
            str(audience), "--event", "w", "--where", "user_id < 'u000040'",
            env=emu.env(), cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = orjson.loads(done.stdout)
        assert summary["counts"]["filtered"] == 60 and summary["counts"]["rejected"] == 0
        results = pl.read_parquet(summary["results"])
        assert results.filter(pl.col("outcome") == "filtered").height == 60

        strict = _send(
            str(SAMPLE), "--event", "w", "--fail-on-rejects", env=emu.env(), cwd=tmp_path
        )
        assert strict.returncode == 1
        assert "rejected or ended in ERROR (--fail-on-rejects)" in strict.stderr


def test_resume_restores_the_exit_policy(tmp_path: Path) -> None:
    with EmulatorProcess() as emu:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulkbatch", "--quiet", "send", str(SAMPLE), "--event", "w",
             "--run-dir", "r", "--fail-on-rejects", "--rate", "20", "--batch-size", "100"],
            env=emu.env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        wait_for(lambda: emu.stats()["users_accepted"] >= 200, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert err.strip().splitlines()[-1] == (
            "Stopped by SIGTERM. Every acknowledged batch is recorded. "
            "Resume with: bulkbatch resume r"
        )
        resumed = bulkbatch("--quiet", "resume", "r", env=emu.env(), cwd=tmp_path)
        assert resumed.returncode == 1  # --fail-on-rejects was restored: the sample has rejects
        assert "(--fail-on-rejects)" in resumed.stderr
        stats = emu.stats()
    assert stats["max_accepted_per_recipient"] == 1
    assert stats["runs"] == stats["jobs_created"]


def test_resume_against_another_host_names_both(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.parquet", 20)
    with EmulatorProcess() as emu, EmulatorProcess() as other:
        done = _send(str(audience), "--event", "w", "--run-dir", "r", env=emu.env(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        moved = bulkbatch("--quiet", "resume", "r", env=other.env(), cwd=tmp_path)
    assert moved.returncode == 1
    assert moved.stderr.strip() == (
        f"Error: Run r talks to {emu.url}, where its jobs exist, but this command points at "
        f"{other.url}. To continue it, set COURIER_BASE_URL={emu.url} (or pass --base-url "
        f"{emu.url}); to send this campaign to {other.url} instead, start a new run there."
    )


def test_run_directory_is_private(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.parquet", 20)
    with EmulatorProcess() as emu:
        done = _send(str(audience), "--event", "w", "--run-dir", "r", env=emu.env(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "r"
    assert run_dir.stat().st_mode & 0o777 == 0o700
    for name in ("results.parquet", "plan.parquet", "rejects.parquet", "state.json"):
        assert (run_dir / name).stat().st_mode & 0o077 == 0, name


def test_a_retry_with_other_tuning_on_a_fresh_worker_sends_nobody_twice(tmp_path: Path) -> None:
    """--concurrency and --rate tune how fast, not what is sent: a scheduler's retry on
    another worker (other directory, no registry, the first run directory gone) with other
    tuning cuts the same jobs and sends the same keys. 100k rows: the automatic job size
    at --concurrency 2 would otherwise differ from the default's."""
    audience = _audience(tmp_path / "aud.parquet", 100_000)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    with EmulatorProcess() as emu:
        first = _send(str(audience), "--event", "welcome", "--concurrency", "2",
                      env=emu.env(), cwd=one)  # fmt: skip
        assert first.returncode == 0, first.stderr
        summary = orjson.loads(first.stdout)
        shutil.rmtree(summary["run_dir"])
        env = emu.env()
        env["BULKBATCH_DATA_DIR"] = str(two / "data")
        retry = _send(str(audience), "--event", "welcome", "--concurrency", "32", "--rate", "500",
                      env=env, cwd=two)  # fmt: skip
        assert retry.returncode == 0, retry.stderr
        again = orjson.loads(retry.stdout)
        stats = emu.stats()
    assert again["campaign"] == summary["campaign"] and again["replayed"] is True
    assert stats["users_accepted"] == summary["counts"]["ingested"] == 100_000
    assert stats["max_accepted_per_recipient"] == 1


def test_a_plan_in_another_directory_says_which_run_holds_the_campaign(tmp_path: Path) -> None:
    """Asked for run directory B, a campaign already planned in A continues in A: the user is
    told so in a line of its own, naming both, rather than finding A's plan under B's name."""
    import bulkbatch
    from bulkbatch.progress import RecordingProgress

    first = bulkbatch.plan(SAMPLE, event="welcome", run_dir=tmp_path / "a")
    seen = RecordingProgress()
    again = bulkbatch.plan(SAMPLE, event="welcome", run_dir=tmp_path / "b", progress=seen)
    assert again.path == first.path and not (tmp_path / "b").exists()
    notices = [e.message for e in seen.events if e.stage == "notice"]
    assert len(notices) == 1, notices
    assert str(tmp_path / "a") in notices[0] and str(tmp_path / "b") in notices[0]
    assert "already" in notices[0]
