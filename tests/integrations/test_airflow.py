"""bulkbatch.integrations.airflow with Airflow 3's ``dag.test()`` against emulator processes.

Airflow reconfigures logging and warnings on import, so it never runs in this process: one
child (``airflow_child.py``, copied into a fresh DAGs folder) creates an SQLite metadata DB in
tmp_path and runs every scenario with ``dag.test()``; the tests below check what it reports,
the emulators' stats and the files it wrote.

* 4 shards of a 40,000-row audience with duplicates and bad rows, as mapped tasks, merged;
  then the same DAG run again: nobody accepted twice, the merged accounting adds up.
* a send whose first try dies half-way through ingest, retried by Airflow "on another
  worker" (no run directory, no campaign registry): nobody accepted twice.
* a send task Airflow stops (SIGTERM, its task runner calls ``on_kill``) half-way through
  ingest: it stops the way Ctrl-C does, and the retry finishes the run, nobody twice.
* the connection convention, the option checks and the log throttle.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulkbatch.synth import generate
from tests.support import API_KEY, EmulatorProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # find_spec of the top-level name only: importing airflow here would reconfigure logging
    pytest.mark.skipif(find_spec("airflow") is None, reason="needs bulkbatch[airflow]"),
]

HERE = Path(__file__).parent
ROWS = 40_000
SHARDS = 4
DAY = "2026-11-30"  # the logical date of the child's dag.test() runs


@dataclass
class Outcome:
    """What the child reported, the emulators' stats after it, and where things are."""

    result: dict[str, Any]
    output: str
    seconds: float
    shards_stats: dict[str, Any]
    flaky_stats: dict[str, Any]
    killed_stats: dict[str, Any]
    tmp: Path

    def tasks(self, scenario: str, run: str, task_id: str) -> list[dict[str, Any]]:
        return [t for t in self.result[scenario][run]["tasks"] if t["task_id"] == task_id]


def _audience(path: Path) -> Path:
    """40,000 rows: synth's (5% duplicate user ids and e-mails, 0.5% with no address), then
    e-mail-only rows (some repeated in another case: duplicates by e-mail) and malformed
    e-mails."""
    generate(path, ROWS - 1_000, fmt="csv", duplicate_rate=0.05, no_address_rate=0.005, seed=3)
    with path.open("a", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        for i in range(700):  # e-mail only; every 7th repeats an earlier one, upper-cased
            email = f"ONLY.{i - 7}@EXAMPLE.NET" if i and i % 7 == 0 else f"only.{i}@example.net"
            out.writerow(["", email, "", "en", "Ana", "free", "{}"])
        for i in range(300):  # a user id, but an e-mail no one can route
            out.writerow([f"bad{i:04d}", f"not-an-email-{i}", "", "en", "Bo", "free", "{}"])
    return path


def _conn(emulator: EmulatorProcess) -> str:
    """The connection URI of an emulator: password = key, host and port, schema http."""
    hostport = emulator.url.removeprefix("http://")
    return f"courier://:{API_KEY}@{hostport}/http"


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    tmp = tmp_path_factory.mktemp("airflow")
    dags, home = tmp / "dags", tmp / "airflow-home"
    dags.mkdir()
    home.mkdir()
    shutil.copy(HERE / "airflow_child.py", dags / "airflow_child.py")
    source = _audience(tmp / "audience.csv")
    flaky = tmp / "flaky.csv"
    generate(flaky, 10_000, fmt="csv", duplicate_rate=0.05, seed=4)
    with (
        EmulatorProcess("--progression", "immediate") as emu,
        EmulatorProcess("--progression", "immediate") as flaky_emu,
        EmulatorProcess("--progression", "immediate", "--faults", "latency_ms=10") as killed_emu,
    ):
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_COURIER_DEFAULT": _conn(emu),
            "AIRFLOW_CONN_COURIER_FLAKY": _conn(flaky_emu),
            "AIRFLOW_CONN_COURIER_KILLED": _conn(killed_emu),
            "BULKBATCH_DATA_DIR": str(tmp / "bulkbatch-data"),
            "BB_AF_SOURCE": str(source),
            "BB_AF_SHARDS": str(SHARDS),
            "BB_AF_OUT": str(tmp / "merged" / "{{ ds }}") + "/",
            "BB_AF_RUNS": str(tmp / "runs"),
            "BB_AF_FLAKY_SOURCE": str(flaky),
        }
        for name in ("COURIER_API_KEY", "COURIER_BASE_URL"):
            env.pop(name, None)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(dags / "airflow_child.py")],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr
        (tmp / "child.log").write_text(output, encoding="utf-8")  # Airflow's log, to read
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, output[-6000:]
        yield Outcome(
            result=json.loads(lines[-1].removeprefix("RESULT ")),
            output=output,
            seconds=seconds,
            shards_stats=emu.stats(),
            flaky_stats=flaky_emu.stats(),
            killed_stats=killed_emu.stats(),
            tmp=tmp,
        )


def _adds_up(counts: dict[str, int]) -> bool:
    parts = ("ingested", "duplicates", "rejected", "filtered", "skipped", "canceled")
    return counts["input_rows"] == sum(counts[k] for k in parts)


def test_mapped_shards_send_everyone_once_and_merge_adds_up(outcome: Outcome) -> None:
    first = outcome.result["shards"]["first"]
    assert first["state"] == "success"
    sends = outcome.tasks("shards", "first", "send_shard")
    assert [t["map_index"] for t in sends] == list(range(SHARDS))
    assert all(t["state"] == "success" and t["try_number"] == 1 for t in sends)
    xcoms = [t["xcom"] for t in sends]
    assert [x["shard"] for x in xcoms] == [f"{i}/{SHARDS}" for i in range(SHARDS)]
    assert len({x["campaign"] for x in xcoms}) == SHARDS  # each shard its own campaign
    assert not any(x["already_sent"] for x in xcoms)
    assert all(_adds_up(x["counts"]) for x in xcoms)

    [merge] = outcome.tasks("shards", "first", "merge_shards")
    merged = merge["xcom"]
    counts = merged["counts"]
    assert merged["shards"] == SHARDS and merged["input_rows"] == ROWS
    assert counts["input_rows"] == ROWS and _adds_up(counts)
    assert counts["ingested"] == sum(x["counts"]["ingested"] for x in xcoms)
    assert counts["duplicates"] > 0.04 * ROWS  # synth's 5% and the repeated e-mails
    assert counts["rejected"] >= 300 + 150  # malformed e-mails, rows with no address
    assert Path(merged["out"]) == outcome.tmp / "merged" / DAY  # templated {{ ds }}

    # The emulator accepted every person exactly once.
    stats = outcome.shards_stats
    assert stats["users_accepted"] == counts["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
    assert stats["jobs_created"] == SHARDS

    # The merged dataset: one row per input row, every shard there.
    results = pl.read_parquet(f"{merged['out']}/**/*.parquet", hive_partitioning=True)
    assert results.height == ROWS
    assert results["shard"].n_unique() == SHARDS


def test_the_same_dag_run_again_sends_nobody(outcome: Outcome) -> None:
    again = outcome.result["shards"]["again"]
    first = outcome.result["shards"]["first"]
    assert again["state"] == "success" and again["run_id"] == first["run_id"]
    sends = outcome.tasks("shards", "again", "send_shard")
    before = {t["map_index"]: t["xcom"] for t in outcome.tasks("shards", "first", "send_shard")}
    for task in sends:
        xcom = task["xcom"]
        assert xcom["already_sent"] is True
        assert xcom["campaign"] == before[task["map_index"]]["campaign"]
        assert xcom["run_dir"] == before[task["map_index"]]["run_dir"]  # resumed in place
    [merge] = outcome.tasks("shards", "again", "merge_shards")
    assert (
        merge["xcom"]["counts"]
        == outcome.tasks("shards", "first", "merge_shards")[0]["xcom"]["counts"]
    )
    # Stats are read after both runs: still one acceptance each, and no new job.
    assert outcome.shards_stats["max_accepted_per_recipient"] == 1
    assert outcome.shards_stats["jobs_created"] == SHARDS


def test_a_task_retried_on_a_fresh_worker_resumes_by_idempotency(outcome: Outcome) -> None:
    run = outcome.result["flaky"]["run"]
    assert run["state"] == "success"
    [task] = outcome.tasks("flaky", "run", "send")
    assert task["state"] == "success" and task["try_number"] == 2
    assert "WorkerLost: worker lost after" in outcome.output  # try 1 died mid-ingest
    xcom = task["xcom"]
    assert "/worker2/" in xcom["run_dir"]  # try 2 started from no run directory
    assert _adds_up(xcom["counts"])
    stats = outcome.flaky_stats
    assert stats["users_accepted"] == xcom["counts"]["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
    assert stats["idempotent_replays"] > 0  # try 2 replayed try 1's create and batches
    assert stats["jobs_created"] == 1


def test_a_task_airflow_stops_stops_cleanly_and_its_retry_finishes(outcome: Outcome) -> None:
    # Before on_kill, Airflow's SIGTERM did nothing: the send went on (here: try 1 succeeded)
    # until the supervisor's SIGKILL.
    run = outcome.result["killed"]["run"]
    assert run["state"] == "success"
    [task] = outcome.tasks("killed", "run", "send")
    assert task["state"] == "success" and task["try_number"] == 2
    assert "bulkbatch: stopped by Airflow (on_kill)" in outcome.output
    assert "ResourceInUse" not in outcome.output and "please report" not in outcome.output
    # try 2 continued try 1's run directory: loaded and planned once
    loads = re.findall(r"\[load\]  loading inputs +\[[\w.]+\.KilledOperator\]", outcome.output)
    assert len(loads) == 1
    xcom = task["xcom"]
    assert _adds_up(xcom["counts"])
    stats = outcome.killed_stats
    assert stats["users_accepted"] == xcom["counts"]["ingested"]
    assert stats["max_accepted_per_recipient"] == 1
    assert stats["jobs_created"] == 1 and stats["runs"] == 1


def test_progress_goes_to_the_task_log_throttled_and_never_the_key(outcome: Outcome) -> None:
    out = outcome.output
    assert API_KEY not in out
    log = [x for x in out.splitlines() if not x.startswith("RESULT ")]
    ingest = [x for x in log if "[ingest]" in x]
    assert ingest, out[-3000:]
    # 4 shards, 2 sends each of the flaky and the killed one: a first line and an end line
    # each, maybe a few more
    assert len(ingest) <= 4 * (SHARDS + 4)
    ends = [x for x in ingest if re.search(r"\[ingest\]  ([\d,]+)/\1 users", x)]
    assert len(ends) == SHARDS + 2  # every completed send logs its end (the try 1s stopped)
    assert "bulkbatch: merged 4 shard(s), 40,000 input rows" in out

    throttled = outcome.result["units"]["throttled_lines"]
    ingest_lines = [x for x in throttled if x.startswith("[ingest]")]
    assert ingest_lines[0].startswith("[ingest]  0/1,000,000 users")
    assert ingest_lines[-1].startswith("[ingest]  1,000,000/1,000,000 users")
    assert len(ingest_lines) == 2  # 1,001 reports, one every hour at most: first and end
    page = [x for x in throttled if x.startswith("[page]")]
    assert page[-1].startswith("[page]  300/300 users")  # summed over the three jobs
    retries = [x for x in throttled if x.startswith("[retry]")]
    assert len(retries) == 1
    # notices are not throttled: each of the plan's warnings is its own line
    assert [x for x in throttled if x.startswith("[notice]")] == [
        f"[notice]  plan warning {n}" for n in range(3)
    ]
    assert len(throttled) <= 11


def test_mistakes_fail_at_once_without_retries(outcome: Outcome) -> None:
    run = outcome.result["refused"]["run"]
    assert run["state"] == "failed"
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert set(tasks) == {"missing_input", "bad_option", "refused_plan"}
    for task in tasks.values():
        assert task["state"] == "failed" and task["try_number"] == 1, task  # retries=2 unused
    out = outcome.output
    assert "AirflowFailException: bulkbatch: " in out
    assert "/nonexistent/audience.csv" in out
    assert "--rate -1 must be above 0" in out or "--rate -1" in out
    assert outcome.shards_stats["jobs_created"] == SHARDS  # the refused tasks sent nothing

    rows_failed = outcome.result["units"]["rows_failed"]
    assert rows_failed[0] == "5 rows were rejected or ended in ERROR (--fail-on-rejects)"
    assert rows_failed[1] == (
        "5 of 100 rows (5.0%) were rejected or ended in ERROR, over --max-reject-rate 0.04"
    )
    assert rows_failed[2:] == [None, None]


def test_connection_convention_and_option_checks(outcome: Outcome) -> None:
    units = outcome.result["units"]
    assert units["conn_plain"] == ["https://api.courier.com", "key_a"]
    assert units["conn_emulator"] == ["http://127.0.0.1:8089", "key_b"]
    assert units["conn_port"] == ["https://eu.api.courier.com:443", "key_c"]
    assert units["conn_empty"] == ["https://api.courier.com", None]
    assert units["conn_json"] == ["https://api.eu.courier.com", "key_d"]
    assert "schema 'ftp' is not http or https" in units["conn_ftp"]
    refused = units["refused"]
    assert "pass shard= to the operator" in refused["shard"]
    assert "the Courier connection" in refused["api_key"]
    assert "runs_root=" in refused["run_dir"]
    assert "waits for its shard" in refused["wait"]
    # the example DAG's factory checks them when the DAG file is parsed
    assert "['colour'] is not a bulkbatch option" in refused["factory_colour"]
    assert "pass event= to the operator" in refused["factory_event"]
    assert "['colour'] is not a bulkbatch option" in refused["colour"]
