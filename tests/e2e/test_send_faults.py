"""The send stage against an emulator with faults on: nobody twice, one job, run once."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from bulkbatch.synth import generate
from tests.support import EmulatorProcess, bulkbatch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def audience(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aud") / "audience.parquet"
    generate(path, 20_000, fmt="parquet", duplicate_rate=0.02, seed=5)
    return path


@pytest.mark.parametrize(
    "faults",
    [
        "rate_limit=30,seed=1",
        "error_rate=0.15,seed=2",
        "drop_rate=0.15,seed=3",
        "rate_limit=40,error_rate=0.05,drop_rate=0.05,latency_ms=5,seed=4",
    ],
)
def test_faults_never_duplicate_or_lose_a_user(audience: Path, tmp_path: Path, faults: str) -> None:
    run_dir = tmp_path / "run"
    with EmulatorProcess("--faults", faults, "--progression", "polls:2") as emu:
        proc = bulkbatch(
            "--quiet",
            "send",
            str(audience),
            "--event",
            "welcome",
            "--run-dir",
            str(run_dir),
            "--batch-size",
            "200",
            "--max-job-size",
            "5000",
            "--poll-interval",
            "0.05",
            "--json",
            env=emu.env(),
        )
        assert proc.returncode == 0, proc.stderr
        stats = emu.stats()
    summary = orjson.loads(proc.stdout)
    ingested = summary["counts"]["ingested"]
    assert summary["accounting_ok"] is True
    # each of the run's jobs created once and run once
    jobs = summary["jobs"]
    assert len(jobs) == -(-ingested // 5000)
    assert stats["jobs_created"] == len(jobs) == len({j["job_id"] for j in jobs})
    assert stats["runs"] == len(jobs)
    assert stats["users_accepted"] == ingested
    assert stats["max_accepted_per_recipient"] == 1
    # the faults really happened, and the client really retried through them
    codes = stats["requests_by_status"]
    if "rate_limit" in faults:
        assert codes.get("429", 0) > 0
    if "error_rate" in faults:
        assert codes.get("500", 0) > 0
    if "drop_rate" in faults:
        assert stats["dropped_connections"] > 0
    assert summary["client"]["retries"] > 0
    results = pq.read_table(run_dir / "results.parquet", columns=["outcome", "status"])
    ingested_statuses = [
        s
        for o, s in zip(
            results.column("outcome").to_pylist(), results.column("status").to_pylist(), strict=True
        )
        if o == "ingested"
    ]
    assert len(ingested_statuses) == ingested
    assert set(ingested_statuses) == {"ENQUEUED"}
