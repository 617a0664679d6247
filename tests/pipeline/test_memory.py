"""Memory while the run talks to Courier: DuckDB gets a small share of its cap.

The send and the tracking read the plan a few batches at a time and commit small groups of
acknowledgements and pages. Under the whole cap, DuckDB kept every plan block it had read
cached until the cap was full: at 10M people that held ~270 MiB for the whole send and put the
peak RSS at 630 MiB (``bench/RESULTS.md``, round 7 of #19).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import bulkbatch
from bulkbatch import db
from bulkbatch.ledger import NETWORK_SHARE, LedgerWriter
from bulkbatch.stages import results as results_stage
from bulkbatch.stages import send as send_stage
from bulkbatch.stages import track as track_stage
from tests.support import SAMPLE

FAST = bulkbatch.Settings(poll_interval=0.02, start_rate=2000)


def _limit(con: duckdb.DuckDBPyConnection) -> int:
    value = db.parse_bytes(
        str(db.fetch_one(con.cursor(), "SELECT current_setting('memory_limit')")[0])
    )
    assert value is not None
    return value


def test_the_network_phase_holds_duckdb_to_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = db.parse_bytes(db.memory_limit())
    assert cap is not None
    seen: dict[str, list[int]] = {"read": [], "commit": [], "results": [], "pages": []}
    read_bodies = send_stage._read_bodies
    commit = LedgerWriter._commit
    key_ranges = results_stage.key_ranges
    join_pages = results_stage._join_pages

    def reading(con: duckdb.DuckDBPyConnection, *args: Any) -> Any:
        seen["read"].append(_limit(con))
        return read_bodies(con, *args)

    def committing(self: LedgerWriter, group: Any) -> None:
        seen["commit"].append(_limit(self._cursor))
        commit(self, group)

    def ranges(con: duckdb.DuckDBPyConnection, *args: Any) -> Any:
        seen["results"].append(_limit(con))
        return key_ranges(con, *args)

    def pages(con: duckdb.DuckDBPyConnection, *args: Any) -> None:
        seen["pages"].append(_limit(con))
        join_pages(con, *args)

    monkeypatch.setattr(send_stage, "_read_bodies", reading)
    monkeypatch.setattr(results_stage, "_join_pages", pages)
    monkeypatch.setattr(results_stage, "key_ranges", ranges)
    monkeypatch.setattr(LedgerWriter, "_commit", committing)
    with bulkbatch.Emulator(progression="immediate") as emu:
        run = bulkbatch.send(
            SAMPLE, event="welcome", settings=FAST.with_(base_url=emu.url), run_dir=tmp_path / "r"
        )
    assert run.read_results().height == 2000
    assert seen["read"] and seen["commit"]
    assert set(seen["read"]) | set(seen["commit"]) == {int(cap * NETWORK_SHARE)}
    # The cap is back for the stages after (the results' joins and sorts need it).
    assert seen["results"] and set(seen["results"]) == {cap}
    # The results' pages join needs only half of it (as fast at 10M, 156 MiB less).
    assert seen["pages"] == [int(cap * results_stage.PAGES_SHARE)]


@pytest.mark.parametrize(
    "sends",
    [
        ["event='welcome'"],
        # the Messages API pass stores its rows through Arrow too
        ["event='welcome', messages=True"],
        # the second campaign finds every recipient held by the first (--once-per)
        ["event='welcome', once_per='k'", "event='promo', once_per='k'"],
    ],
    ids=["send", "messages", "once-per"],
)
def test_a_send_does_not_import_pandas(tmp_path: Path, sends: list[str]) -> None:
    """Given a Python list, ``pa.array`` imports pandas when it is installed: 47 MiB of RSS
    and 0.4 s in a run that never uses it (:mod:`bulkbatch.columns` builds them instead)."""
    pytest.importorskip("pandas")
    script = "import sys, bulkbatch\n" + "".join(
        f"run = bulkbatch.send({str(SAMPLE)!r}, {args}, emulator='immediate', "
        f"run_dir={str(tmp_path / f'r{i}')!r})\n"
        "assert run.read_results().height == 2000\n"
        for i, args in enumerate(sends)
    )
    script += "print(sorted(m for m in ('pandas', 'polars') if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    # read_results() is a polars DataFrame: polars is imported for it, pandas never.
    assert out.stdout.strip() == "['polars']"


@pytest.mark.parametrize("separately", [False, True], ids=["send", "track"])
def test_fetching_messages_gets_the_whole_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, separately: bool
) -> None:
    """``--messages`` reads every message id into Python (at 10M under a quarter of the cap it
    ran out of memory; under the whole cap it took 8.5 s): it runs after the ledger closes."""
    cap = db.parse_bytes(db.memory_limit())
    seen: list[int] = []
    message_ids = track_stage._message_ids

    def reading(con: duckdb.DuckDBPyConnection) -> list[str]:
        seen.append(_limit(con))
        return message_ids(con)

    monkeypatch.setattr(track_stage, "_message_ids", reading)
    with bulkbatch.Emulator(progression="immediate") as emu:
        settings = FAST.with_(base_url=emu.url)
        run = bulkbatch.send(
            SAMPLE,
            event="welcome",
            settings=settings,
            run_dir=tmp_path / "r",
            messages=True,
            wait=not separately,
        )
        if separately:  # tracked by a later call, as after --no-wait
            assert not seen
            run = bulkbatch.resume(run.path, settings=settings)
    assert run.read_results().height == 2000
    assert seen == [cap]


@pytest.mark.parametrize("command", ["plan", "send"])
def test_plan_parquet_is_written_under_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Writing ``plan.parquet`` is a scan: under a quarter of the cap in ``bulkbatch plan``
    (10M, alone: 320 MiB against 422 under half), after the plan's own share is given back;
    in a send, beside the network stages, under half of their share plus 8 MB (10M: the
    writer's stretch peaked at 397-411 MiB against 425-443 under all of it)."""
    from bulkbatch.stages.plan import report

    cap = db.parse_bytes(db.memory_limit())
    assert cap is not None
    seen: list[int] = []
    batches = report.prefetched_batches

    def reading(con: duckdb.DuckDBPyConnection, *args: Any) -> Any:
        seen.append(_limit(con))
        return batches(con, *args)

    monkeypatch.setattr(report, "prefetched_batches", reading)
    if command == "plan":
        bulkbatch.plan(SAMPLE, event="welcome", run_dir=tmp_path / "r")
        assert seen == [int(cap * report.PLAN_FILE_SHARE)]
        return
    with bulkbatch.Emulator(progression="immediate") as emu:
        run = bulkbatch.send(
            SAMPLE, event="welcome", settings=FAST.with_(base_url=emu.url), run_dir=tmp_path / "r"
        )
    assert run.read_results().height == 2000
    network = int(cap * NETWORK_SHARE)
    assert seen == [int(network * report.BESIDE_SHARE) + report.BESIDE_FIXED]


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_load_and_plan_work_under_their_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The process holds ~185 MiB besides DuckDB, and DuckDB fills whatever cap it has, if
    only with blocks it read: at 10M the plan peaked at 537-551 MiB under the whole cap, 433-438
    under ``BUILD_SHARE`` (``bench/RESULTS.md``, round 19). The passes that write ``plan``
    are still sized from the whole cap; a CSV is loaded under all of it (its reader's buffers
    grow with the columns); the scans after the plan get less again, and the audience
    fingerprint needs none of its own."""
    from bulkbatch import identity
    from bulkbatch.stages import load
    from bulkbatch.stages.plan import build, report

    cap = db.parse_bytes(db.memory_limit())
    assert cap is not None
    source = SAMPLE
    if kind == "parquet":
        source = tmp_path / "audience.parquet"
        duckdb.sql(f"COPY (FROM read_csv('{SAMPLE}')) TO '{source}' (FORMAT parquet)")
    seen: dict[str, list[int]] = {"load": [], "plan": [], "per_pass": [], "report": []}
    seen |= {"reviews": [], "fingerprint": []}
    load_group, write_plan = load._load_group, build._write_plan
    make_report, input_columns = build.make_report, report._input_columns
    fingerprint_share = identity.memory_share

    def loading(con: duckdb.DuckDBPyConnection, *args: Any) -> None:
        seen["load"].append(_limit(con))
        load_group(con, *args)

    def planning(con: duckdb.DuckDBPyConnection, q: Any, audience: str, per_pass: int) -> None:
        seen["plan"].append(_limit(con))
        seen["per_pass"].append(per_pass)
        write_plan(con, q, audience, per_pass)

    def reporting(con: duckdb.DuckDBPyConnection, *args: Any, **kwargs: Any) -> Any:
        seen["report"].append(_limit(con))
        return make_report(con, *args, **kwargs)

    def reviewing(con: duckdb.DuckDBPyConnection, taken: Any) -> str:
        seen["reviews"].append(_limit(con))
        return input_columns(con, taken)

    @contextlib.contextmanager
    def fingerprinting(con: duckdb.DuckDBPyConnection, share: float) -> Iterator[None]:
        with fingerprint_share(con, share):
            seen["fingerprint"].append(_limit(con))
            yield

    monkeypatch.setattr(load, "_load_group", loading)
    monkeypatch.setattr(build, "_write_plan", planning)
    monkeypatch.setattr(build, "make_report", reporting)
    monkeypatch.setattr(report, "_input_columns", reviewing)
    monkeypatch.setattr(identity, "memory_share", fingerprinting)
    run = bulkbatch.plan(source, event="welcome", run_dir=tmp_path / "r")
    assert run.path == tmp_path / "r"
    loaded = cap if kind == "csv" else int(cap * db.BUILD_SHARE)
    assert seen["load"] == [loaded]
    assert seen["plan"] == seen["report"] == [int(cap * db.BUILD_SHARE)]
    assert seen["per_pass"] == [build.PLAN_ROWS]  # the default cap's, not the share's
    assert seen["reviews"] == [int(cap * db.SCAN_SHARE)] * 2
    # No scan of its own: taken as plan.parquet is written, under PLAN_FILE_SHARE.
    assert seen["fingerprint"] == []
