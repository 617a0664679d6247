"""A killed ``bulkbatch send`` resumes into the same job with nobody ingested twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from bulkbatch.config import auto_job_size
from bulkbatch.synth import generate
from tests.support import EmulatorProcess, bulkbatch, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMPARED = ("row_number", "outcome", "reason_code", "recipient", "status")


def _send_args(audience: Path, run_dir: Path) -> list[str]:
    return [
        "--quiet",
        "send",
        str(audience),
        "--event",
        "welcome",
        "--run-dir",
        str(run_dir),
        "--batch-size",
        "250",
        "--concurrency",
        "2",
        "--rate",
        "40",
        "--poll-interval",
        "0.1",
        "--json",
    ]


def _rows(run_dir: Path) -> list[tuple[object, ...]]:
    table = pq.read_table(run_dir / "results.parquet", columns=list(COMPARED))
    return list(zip(*(table.column(c).to_pylist() for c in COMPARED), strict=True))


@pytest.fixture(scope="module")
def audience(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aud") / "audience.csv"
    generate(path, 30_000, fmt="csv", duplicate_rate=0.02, seed=11)
    return path


def test_sigkill_mid_ingest_then_resume_matches_clean_run(audience: Path, tmp_path: Path) -> None:
    # the clean run, on its own emulator
    with EmulatorProcess() as clean_emu:
        clean = bulkbatch(*_send_args(audience, tmp_path / "clean"), env=clean_emu.env())
        assert clean.returncode == 0, clean.stderr
    clean_summary = orjson.loads(clean.stdout)

    run_dir = tmp_path / "killed"
    with EmulatorProcess() as emu:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulkbatch", *_send_args(audience, run_dir)],
            env=emu.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # kill it once a good part, but not all, of the audience is in
            wait_for(lambda: emu.stats()["users_accepted"] >= 8_000, timeout=60)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            assert proc.stderr is not None
            proc.stderr.close()
        before = emu.stats()
        assert 8_000 <= before["users_accepted"] < clean_summary["counts"]["ingested"]
        assert before["runs"] < len(clean_summary["jobs"])

        resumed = bulkbatch("--quiet", "resume", str(run_dir), "--json", env=emu.env())
        assert resumed.returncode == 0, resumed.stderr
        stats = emu.stats()

    summary = orjson.loads(resumed.stdout)
    assert summary["counts"] == clean_summary["counts"]
    assert summary["accounting_ok"] is True
    assert _rows(run_dir) == _rows(tmp_path / "clean")
    # one job, run once, every unique user accepted exactly once
    jobs = summary["jobs"]
    # 30k rows: jobs of auto_job_size users, each created once
    size = auto_job_size(30_000)
    assert len(jobs) == -(-summary["counts"]["ingested"] // size) > 1
    assert stats["jobs_created"] == len(jobs) == len({j["job_id"] for j in jobs})
    assert stats["runs"] == len(jobs)
    assert stats["users_accepted"] == summary["counts"]["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
    state = orjson.loads((run_dir / "state.json").read_bytes())
    assert [j["job_id"] for j in state["jobs"]] == [j["job_id"] for j in jobs]


def test_resume_of_finished_run_changes_nothing(audience: Path, tmp_path: Path) -> None:
    with EmulatorProcess() as emu:
        first = bulkbatch(*_send_args(audience, tmp_path / "r"), env=emu.env())
        assert first.returncode == 0, first.stderr
        again = bulkbatch("--quiet", "resume", str(tmp_path / "r"), "--json", env=emu.env())
        assert again.returncode == 0, again.stderr
        stats = emu.stats()
    assert orjson.loads(again.stdout)["counts"] == orjson.loads(first.stdout)["counts"]
    jobs = orjson.loads(first.stdout)["jobs"]
    assert stats["jobs_created"] == len(jobs) and stats["runs"] == len(jobs)
    assert stats["max_accepted_per_recipient"] == 1


def test_send_into_existing_run_with_other_options_is_refused(
    audience: Path, tmp_path: Path
) -> None:
    with EmulatorProcess() as emu:
        first = bulkbatch(*_send_args(audience, tmp_path / "r"), env=emu.env())
        assert first.returncode == 0, first.stderr
        other = bulkbatch(
            "send",
            str(audience),
            "--event",
            "other-event",
            "--run-dir",
            str(tmp_path / "r"),
            env=emu.env(),
        )
    assert other.returncode == 1
    run_dir = tmp_path / "r"
    assert other.stderr.strip() == (
        f"Error: Run directory {run_dir} holds another campaign (other inputs or options), so "
        f"it cannot continue with these. Run 'bulkbatch resume {run_dir}' to finish it as it "
        "was, or pass another --run-dir to start this one."
    )


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before exec: Ctrl-C as a terminal gives it. A background job of a shell
    script (CI launched with ``&``) starts with SIGINT ignored, which the CLI respects and a
    child would inherit; the test must not depend on how pytest was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(audience: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with EmulatorProcess() as emu:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulkbatch", "--quiet", *_send_args(audience, run_dir)[1:]],
            env=emu.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_ctrl_c_as_in_a_terminal,  # noqa: PLW1509 - one signal call, no locks
        )
        wait_for(lambda: emu.stats()["users_accepted"] >= 5_000, timeout=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 1
        assert err.strip().splitlines()[-1] == (
            f"Interrupted. Every acknowledged batch is recorded. Resume with: bulkbatch resume {run_dir}"
        )
        assert "Traceback" not in err
        # every acknowledged batch is in the ledger: none is sent again on resume
        assert emu.stats()["runs"] < 2
        resumed = bulkbatch("--quiet", "resume", str(run_dir), "--json", env=emu.env())
        assert resumed.returncode == 0, resumed.stderr
        stats = emu.stats()
    summary = orjson.loads(resumed.stdout)
    assert summary["accounting_ok"] is True
    jobs = summary["jobs"]
    assert stats["jobs_created"] == len(jobs) and stats["runs"] == len(jobs)
    assert stats["users_accepted"] == summary["counts"]["ingested"]
    assert stats["max_accepted_per_recipient"] == 1


def test_resuming_a_plan_finishes_the_plan_and_sends_nobody(tmp_path: Path) -> None:
    """``bulkbatch plan`` sends nothing, and its own hints (a stop, DuckDB out of memory)
    say 'bulkbatch resume DIR'. Resume ran the remaining stages, so following the hint
    sent the notification the user only meant to preview. Now a run started by plan
    resumes as a plan; the same send command afterwards sends it, once."""
    audience = tmp_path / "people.csv"
    audience.write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(30)))
    run_dir = tmp_path / "preview"
    with EmulatorProcess() as emu:
        planned = bulkbatch(
            "--quiet", "plan", str(audience), "--event", "welcome", "--run-dir", str(run_dir),
            env=emu.env(),
        )  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        resumed = bulkbatch("--quiet", "resume", str(run_dir), env=emu.env())
        assert resumed.returncode == 0, resumed.stderr
        assert emu.stats()["jobs_created"] == 0, "resuming a plan sent it"
        assert "to send" in resumed.stdout and "30" in resumed.stdout  # the plan's report
        assert resumed.stdout.rstrip().endswith(
            "Planned only: 'bulkbatch plan' started this run, so resuming it sends nobody. "
            "To send it, run 'bulkbatch send' with the same input and options."
        )
        again = bulkbatch("--quiet", "resume", str(run_dir), "--json", env=emu.env())
        assert orjson.loads(again.stdout)["to_send"] == 30
        assert emu.stats()["jobs_created"] == 0
        sent = bulkbatch(
            "--quiet", "send", str(audience), "--event", "welcome", "--run-dir", str(run_dir),
            "--poll-interval", "0.05", env=emu.env(),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert emu.stats()["users_accepted"] == 30
        after = bulkbatch("--quiet", "resume", str(run_dir), env=emu.env())  # a sent run now
        assert after.returncode == 0, after.stderr
        assert emu.stats()["users_accepted"] == 30
