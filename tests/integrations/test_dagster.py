"""bulkbatch on Dagster: 4 shard partitions of a 40k audience and the merged asset, in-process
(``dagster.materialize``) against a real emulator process; retried partitions send nobody
twice, on the same storage and from a fresh worker."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

dg = pytest.importorskip("dagster")

from bulkbatch.errors import UsageError
from bulkbatch.integrations.dagster import (
    COUNT_KEYS,
    CourierResource,
    DagsterLogProgress,
    bulkbatch_assets,
    shard_partitions,
)
from bulkbatch.progress import ProgressEvent
from tests.support import API_KEY, SAMPLE, EmulatorProcess

pytestmark = [pytest.mark.e2e]

PEOPLE = 40_000
SHARDS = 4
OUTCOMES = [k for k in COUNT_KEYS if k != "input_rows"]


def write_audience(path: Path, people: int = PEOPLE, seed: int = 20) -> dict[str, int]:
    """A CSV of ``people`` rows: ~5% repeat an earlier e-mail (case and spaces vary), ~0.5%
    have a bad e-mail, ~0.5% no address at all. Returns what a correct plan must find."""
    rng = random.Random(seed)
    emails: list[str] = []
    expected = {"rows": people, "duplicates": 0, "bad": 0, "unique": 0}
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["email", "first_name", "plan"])
        for n in range(people):
            roll = rng.random()
            if roll < 0.05 and emails:
                email = f"  {rng.choice(emails).upper()} "
                expected["duplicates"] += 1
            elif roll < 0.055:
                email = f"person{n}-at-example.com"  # no @: rejected as bad_email
                expected["bad"] += 1
            elif roll < 0.06:
                email = ""  # no address, no recipient: rejected (in shard 0)
                expected["bad"] += 1
            else:
                email = f"person{n}@example.com"
                emails.append(email)
                expected["unique"] += 1
            out.writerow([email, f"Name{n}", rng.choice(["free", "pro", "team"])])
    return expected


@pytest.fixture(scope="module")
def audience(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("dagster-audience") / "audience.csv"
    return path, write_audience(path)


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--progression", "immediate") as emu:
        yield emu


@pytest.fixture
def instance() -> Iterator[Any]:
    """An ephemeral instance; Dagster's in-process executor leaves SIGTERM mapped to
    KeyboardInterrupt in this process, so the handlers are put back for the next tests."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with dg.DagsterInstance.ephemeral() as inst:
            yield inst
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _metadata(result: Any, key: str) -> dict[str, Any]:
    """The metadata values of the (one) materialization of ``key`` in a run."""
    [mat] = list(result.asset_materializations_for_node(key))
    return {k: v.value for k, v in mat.metadata.items()}


def _logged_text(instance: Any) -> str:
    """Every log message and metadata value the instance stored, as one string."""
    parts: list[str] = []
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            parts.append(entry.user_message or "")
            if entry.asset_materialization is not None:
                parts.extend(str(v.value) for v in entry.asset_materialization.metadata.values())
    return "\n".join(parts)


def test_shards_as_partitions_then_merged_nobody_twice(
    tmp_path: Path,
    audience: tuple[Path, dict[str, int]],
    emulator: EmulatorProcess,
    instance: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, expected = audience
    shards_asset, results_asset = bulkbatch_assets(
        "welcome",
        str(source),
        event="welcome",
        shards=SHARDS,
        runs_root=tmp_path / "runs",
        run_id="welcome-test",
        send_options={"data": {"company": "Acme"}, "batch_size": 500},
        log_every=0.5,
    )
    courier = CourierResource(api_key=API_KEY, base_url=emulator.url, concurrency=8)
    resources = {"courier": courier}

    def shard(key: str) -> dict[str, Any]:
        result = dg.materialize(
            [shards_asset], partition_key=key, instance=instance, resources=resources
        )
        assert result.success
        return _metadata(result, "welcome_shards")

    def merged(*, raise_on_error: bool = True) -> Any:
        return dg.materialize(
            [shards_asset, results_asset],
            selection=[results_asset],
            instance=instance,
            resources=resources,
            raise_on_error=raise_on_error,
        )

    per_shard = {key: shard(key) for key in ("0", "1", "2")}

    # Merging before every shard is materialized names the missing partition.
    early = merged(raise_on_error=False)
    assert not early.success
    [failure] = [e for e in early.all_events if e.is_step_failure]
    assert "partition(s) 3 of 4 have not been materialized" in str(failure.event_specific_data)

    per_shard["3"] = shard("3")
    for key, meta in per_shard.items():
        assert meta["shard"] == f"{key}/{SHARDS}"
        assert meta["accounting_ok"] is True and meta["already_sent"] is False
        assert meta["input_rows"] == sum(meta[k] for k in OUTCOMES) > 0
        assert Path(meta["run_dir"]).is_dir() and Path(meta["results"]).is_file()
        assert meta["instance"] == "welcome-test" and meta["campaign"]
    assert len({m["campaign"] for m in per_shard.values()}) == SHARDS  # one instance each
    assert len({m["family"] for m in per_shard.values()}) == 1  # of one campaign
    # rows without a recipient are judged in shard 0
    assert per_shard["0"]["rejected_by_reason"].get("no_address", 0) > 0
    assert all(
        not m["rejected_by_reason"].get("no_address") for k, m in per_shard.items() if k != "0"
    )

    stats = emulator.stats()
    ingested = sum(m["ingested"] for m in per_shard.values())
    assert ingested == expected["unique"] == stats["users_accepted"]
    assert stats["max_accepted_per_recipient"] == 1

    # A retry of partition 2 on the same storage: already sent, nobody again.
    again = shard("2")
    assert again["already_sent"] is True
    assert again["run_dir"] == per_shard["2"]["run_dir"]
    assert {k: again[k] for k in COUNT_KEYS} == {k: per_shard["2"][k] for k in COUNT_KEYS}

    # A retry of partition 1 on a fresh worker (new storage, new per-user registry): the same
    # campaign instance, so the same Idempotency-Keys; Courier's replays stop a second send.
    monkeypatch.setenv("BULKBATCH_DATA_DIR", str(tmp_path / "fresh-worker-data"))
    fresh_shards, _ = bulkbatch_assets(
        "welcome",
        str(source),
        event="welcome",
        shards=SHARDS,
        runs_root=tmp_path / "fresh-worker-runs",
        run_id="welcome-test",
        send_options={"data": {"company": "Acme"}, "batch_size": 500},
    )
    result = dg.materialize(
        [fresh_shards], partition_key="1", instance=instance, resources=resources
    )
    fresh = _metadata(result, "welcome_shards")
    assert fresh["run_dir"].startswith(str(tmp_path / "fresh-worker-runs"))
    assert fresh["campaign"] == per_shard["1"]["campaign"]
    assert fresh["ingested"] == per_shard["1"]["ingested"]
    stats = emulator.stats()
    assert stats["users_accepted"] == ingested
    assert stats["max_accepted_per_recipient"] == 1

    # The merge takes each partition's latest materialization (shard 1 from the fresh worker).
    result = merged()
    totals = _metadata(result, "welcome_results")
    assert totals["shards"] == SHARDS
    assert totals["input_rows"] == expected["rows"] == sum(totals[k] for k in OUTCOMES)
    assert totals["ingested"] == expected["unique"]
    assert totals["duplicates"] == expected["duplicates"]
    assert totals["rejected"] == expected["bad"]
    assert fresh["run_dir"] in totals["run_dirs"]
    for k in COUNT_KEYS:  # the merged accounting is the shards' sum
        assert totals[k] == sum(m[k] for m in per_shard.values())
    out = Path(totals["out"])
    assert out == tmp_path / "runs" / "welcome" / "results" and out.is_dir()
    assert sorted(p.name for p in out.glob("shard=*")) == [f"shard={i}" for i in range(SHARDS)]

    # The key is never logged nor stored in metadata.
    text = _logged_text(instance)
    assert "[ingest]" in text and API_KEY not in text


def test_a_shard_over_its_reject_policy_fails_without_retry(
    tmp_path: Path, emulator: EmulatorProcess, instance: Any
) -> None:
    shards_asset, _ = bulkbatch_assets(
        "sample",
        str(SAMPLE),
        event="welcome",
        shards=2,
        runs_root=tmp_path,
        send_options={"fail_on_rejects": True},
    )
    result = dg.materialize(
        [shards_asset],
        partition_key="0",  # rows without an address are all judged in shard 0
        instance=instance,
        resources={"courier": CourierResource(api_key=API_KEY, base_url=emulator.url)},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.event_specific_data
    assert "shard 0/2: " in str(data)
    assert "rejected or ended in ERROR (--fail-on-rejects)" in str(data)
    assert data.user_failure_data is not None  # a dagster.Failure, not a crash
    assert emulator.stats()["max_accepted_per_recipient"] == 1


def test_definitions_load_with_the_key_from_the_environment(tmp_path: Path) -> None:
    defs = dg.Definitions(
        assets=bulkbatch_assets(
            "welcome", str(SAMPLE), event="welcome", shards=8, runs_root=tmp_path, pool="courier"
        ),
        resources={"courier": CourierResource(api_key=dg.EnvVar("COURIER_API_KEY"), rate=25)},
    )
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    shards_node = graph.get(dg.AssetKey("welcome_shards"))
    assert shards_node.partitions_def.get_partition_keys() == [str(i) for i in range(8)]
    results_node = graph.get(dg.AssetKey("welcome_results"))
    assert results_node.parent_keys == {dg.AssetKey("welcome_shards")}


def test_send_options_are_checked_when_definitions_load(tmp_path: Path) -> None:
    def assets(**options: object) -> None:
        bulkbatch_assets(
            "w", "a.csv", event="welcome", shards=2, runs_root=tmp_path, send_options=options
        )

    assets(data={"x": 1}, where="plan = 'pro'", once_per="k", mapping={"email": "mail"})
    with pytest.raises(UsageError, match="unknown option 'bach_size'"):
        assets(bach_size=10)
    with pytest.raises(UsageError, match=r"'rate'.*CourierResource\(rate=\.\.\.\)"):
        assets(rate=10)
    with pytest.raises(UsageError, match=r"'shard'.*partition"):
        assets(shard="0/2")
    with pytest.raises(UsageError, match="--batch-size 5000 must be"):
        assets(batch_size=5000)
    with pytest.raises(UsageError, match="No message to send"):
        bulkbatch_assets("w", "a.csv", shards=2, runs_root=tmp_path)
    with pytest.raises(UsageError, match="shards=0"):
        shard_partitions(0)
    assert shard_partitions(3).get_partition_keys() == ["0", "1", "2"]


def test_the_resource_never_shows_its_key() -> None:
    courier = CourierResource(api_key="sk_secret_do_not_show", base_url="http://127.0.0.1:1")
    assert "sk_secret" not in repr(courier) and "sk_secret" not in str(courier)
    assert courier.send_keywords()["api_key"] == "sk_secret_do_not_show"


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.lines.append(("warning", msg))


def test_progress_lines_are_throttled_per_stage() -> None:
    now = [0.0]
    log = _Log()
    progress = DagsterLogProgress(log, every=5.0, clock=lambda: now[0])  # type: ignore[arg-type]
    for done in range(0, 1001, 100):  # one event a second: first, one per 5 s, and the last
        progress(ProgressEvent("ingest", done, 1000, "users"))
        now[0] += 1
    progress(ProgressEvent("retry", message="429: waiting 1.0 s"))
    progress(ProgressEvent("page", 1, None, "pages"))
    assert log.lines == [
        ("info", "[ingest]  0/1,000 users"),
        ("info", "[ingest]  500/1,000 users"),
        ("info", "[ingest]  1,000/1,000 users"),
        ("warning", "[retry] 429: waiting 1.0 s"),
        ("info", "[page]  1 pages"),
    ]


INTERRUPTED = textwrap.dedent(
    """
    import os, signal, sys, threading
    import dagster as dg
    import bulkbatch
    from bulkbatch.synth import generate

    generate("audience.parquet", 20_000, fmt="parquet", seed=1)
    kicked = []

    def progress(event):
        # Dagster terminating the run: SIGINT to its process, from outside, so it lands in
        # the send's event loop (not in this callback), soon after ingest begins
        if event.stage == "ingest" and not kicked:
            kicked.append(True)
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    @dg.asset
    def welcome(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        run = bulkbatch.send(
            "audience.parquet", event="welcome", run_dir="run", batch_size=250,
            poll_interval=0.1, progress=progress,
        )
        return dg.MaterializeResult(metadata={"ingested": run.summary()["counts"]["ingested"]})

    with dg.DagsterInstance.ephemeral() as instance:
        for attempt in (1, 2):
            result = dg.materialize([welcome], instance=instance, raise_on_error=False)
            failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            error = failure[0].event_specific_data.error if failure else None
            print("TRY", attempt, result.success, error.cls_name if error else None, flush=True)
            if result.success:
                [mat] = result.asset_materializations_for_node("welcome")
                print("INGESTED", mat.metadata["ingested"].value, flush=True)
    """
)


def test_a_materialization_dagster_interrupts_unwinds_then_finishes(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    # Dagster's own SIGINT handler raises its interrupt wherever the signal lands, so inside
    # the send's event loop it cut through anyio's shields (ResourceInUseException from
    # DuckDB, seen by chance; tests/test_sync.py shows the unwinding deterministically). Now
    # the send unwinds as on Ctrl-C, the step fails as interrupted, and the next
    # materialization continues the run: nobody twice, each job run once.
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED],
        cwd=tmp_path,
        env=emulator.env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "TRY 1 False DagsterExecutionInterruptedError" in proc.stdout, out[-4000:]
    assert "TRY 2 True None" in proc.stdout, out[-4000:]
    assert "ResourceInUse" not in out and "unhandled exception" not in out, out[-4000:]
    ingested = int(proc.stdout.split("INGESTED ")[1].split()[0])
    stats = emulator.stats()
    assert stats["users_accepted"] == ingested > 0
    assert stats["max_accepted_per_recipient"] == 1
    assert stats["jobs_created"] == stats["runs"] == 2  # 20k people in 10k jobs, each run once
