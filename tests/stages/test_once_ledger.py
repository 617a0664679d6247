"""The ``--once-per`` claim ledger (bulkbatch.stages.once): atomic claims across processes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import platformdirs
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.errors import StateError, UsageError
from bulkbatch.stages import once
from bulkbatch.stages.once import (
    ClaimResult,
    Held,
    MarkResult,
    claim_plan,
    default_ledger_path,
    mark_sent,
    open_ledger,
    release,
)
from tests.support import OUT_OF_MEMORY_MID_STREAM, out_of_memory_mid_stream

KEY = "welcome"


# --------------------------------------------------------------------------- helpers


def make_plan(
    recipients: Sequence[str],
    *,
    batch_size: int = 3,
    job_size: int | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> duckdb.DuckDBPyConnection:
    """A run database whose ``plan`` has the documented layout: row_number 1.., jobs of
    ``job_size``, batches of ``batch_size`` within a job, batch_no global from 0."""
    con = con or duckdb.connect()
    job_size = job_size or max(len(recipients), 1)
    job_nos, batch_nos = [], []
    batch = -1
    for i in range(len(recipients)):
        if (i % job_size) % batch_size == 0:
            batch += 1
        job_nos.append(i // job_size)
        batch_nos.append(batch)
    table = pa.table(
        {
            "row_number": pa.array(range(1, len(recipients) + 1), pa.int64()),
            "recipient": pa.array(recipients, pa.string()),
            "job_no": pa.array(job_nos, pa.int32()),
            "batch_no": pa.array(batch_nos, pa.int32()),
            "user_json": pa.array([json.dumps({"to": {"user_id": r}}) for r in recipients]),
        }
    )
    con.register("_new_plan", table)
    con.execute("CREATE OR REPLACE TABLE plan AS SELECT * FROM _new_plan")
    con.unregister("_new_plan")
    return con


def plan_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, int, int]]:
    return [
        (int(r), str(p), int(j), int(b))
        for r, p, j, b in con.execute(
            "SELECT row_number, recipient, job_no, batch_no FROM plan ORDER BY batch_no, row_number"
        ).fetchall()
    ]


def skipped_rows(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("SELECT recipient, reason FROM skipped").fetchall())


def assert_layout(
    con: duckdb.DuckDBPyConnection, original: Sequence[str], batch_size: int, job_size: int
) -> None:
    """plan + skipped partition the original plan; batches contiguous from 0, never spanning
    jobs, at most batch_size (only a job's last batch short); jobs dense; order kept, also
    the table's own (the send reads a range of batches, clustered by the table's order)."""
    rows = plan_rows(con)
    stored = con.execute("SELECT row_number, recipient, job_no, batch_no FROM plan").fetchall()
    assert [(int(r), str(p), int(j), int(b)) for r, p, j, b in stored] == rows
    skipped = con.execute("SELECT row_number, recipient FROM skipped").fetchall()
    kept = {(r, p) for r, p, _, _ in rows}
    gone = {(int(r), str(p)) for r, p in skipped}
    assert not kept & gone
    assert kept | gone == {(i + 1, p) for i, p in enumerate(original)}
    assert len(rows) == len(kept) and len(skipped) == len(gone)
    if not rows:
        return
    batches = [b for _, _, _, b in rows]
    assert sorted(set(batches)) == list(range(max(batches) + 1))
    jobs_of_batch: dict[int, set[int]] = {}
    sizes: dict[int, int] = {}
    for _, _, j, b in rows:
        jobs_of_batch.setdefault(b, set()).add(j)
        sizes[b] = sizes.get(b, 0) + 1
    assert all(len(j) == 1 for j in jobs_of_batch.values())
    assert max(sizes.values()) <= batch_size
    jobs = [j for _, _, j, _ in rows]
    assert jobs == sorted(jobs) and sorted(set(jobs)) == list(range(max(jobs) + 1))
    for job in set(jobs):
        job_batches = sorted({b for _, _, j, b in rows if j == job})
        assert all(sizes[b] == batch_size for b in job_batches[:-1])
    # each kept user stays in its original job's order (users never change job order)
    original_job = {i + 1: i // job_size for i in range(len(original))}
    assert [original_job[r] for r, _, _, _ in rows] == sorted(original_job[r] for r, *_ in rows)
    assert [r for r, *_ in rows] == sorted(r for r, *_ in rows)


def owners(ledger_path: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(ledger_path) as db:
        rows = db.execute("SELECT recipient, campaign, state FROM claims WHERE key = ?", (KEY,))
        return {r: (c, s) for r, c, s in rows}


def users(ids: range) -> list[str]:
    return [f"u{i:06d}" for i in ids]


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "once-per.sqlite"


# --------------------------------------------------------------------------- claiming


def test_first_claim_takes_everyone_and_leaves_the_plan_alone(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    con = make_plan(users(range(10)), batch_size=3)
    before = plan_rows(con)
    result = claim_plan(con, ledger, KEY, "camp-a", "runs/monday", 3)
    assert result == ClaimResult(claimed=10, already_own=0, skipped_sent=0, skipped_in_progress=0)
    assert plan_rows(con) == before
    assert skipped_rows(con) == {}
    assert con.execute("SELECT column_name, column_type FROM (DESCRIBE skipped)").fetchall() == [
        ("row_number", "BIGINT"),
        ("recipient", "VARCHAR"),
        ("reason", "VARCHAR"),
    ]
    leftovers = "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '\\_once%' ESCAPE '\\'"
    assert con.execute(leftovers).fetchall() == [(0,)]
    claims = ledger.lookup(KEY, ["u000003", "nobody"])
    assert list(claims) == ["u000003"]
    c = claims["u000003"]
    assert (c.campaign, c.state, c.run_dir, c.job_id, c.sent_at) == (
        "camp-a",
        "claimed",
        "runs/monday",
        None,
        None,
    )


def test_other_campaign_skips_what_is_sent_or_in_progress(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    monday = make_plan(users(range(10)), batch_size=2, job_size=5)
    claim_plan(monday, ledger, KEY, "camp-a", "runs/monday", 2)
    assert mark_sent(monday, ledger, KEY, "camp-a", 0, "job-0") == MarkResult(5, 0)

    original = users(range(3, 15))
    tuesday = make_plan(original, batch_size=2, job_size=4)
    result = claim_plan(tuesday, ledger, KEY, "camp-b", "runs/tuesday", 2)
    assert result == ClaimResult(claimed=5, already_own=0, skipped_sent=2, skipped_in_progress=5)
    assert result.skipped == 7 and result.to_send == 5
    reasons = skipped_rows(tuesday)
    assert reasons["u000003"] == "sent under --once-per welcome by campaign camp-a (runs/monday)"
    assert reasons["u000007"] == (
        "claimed under --once-per welcome by campaign camp-a (runs/monday), still in progress"
    )
    assert set(reasons) == set(users(range(3, 10)))
    assert [p for _, p, _, _ in plan_rows(tuesday)] == users(range(10, 15))
    assert_layout(tuesday, original, batch_size=2, job_size=4)
    assert owners(ledger_path)["u000012"] == ("camp-b", "claimed")
    assert owners(ledger_path)["u000004"] == ("camp-a", "sent")


def test_resume_of_the_same_campaign_keeps_all_its_users(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    audience = users(range(8))
    first = claim_plan(make_plan(audience), ledger, KEY, "camp-a", "runs/a", 3)
    assert first.claimed == 8
    mark_sent(make_plan(audience, job_size=4), ledger, KEY, "camp-a", 0, "job-0")
    # the same campaign again (a resume, or the same command from another directory)
    again = make_plan(audience, job_size=4)
    result = claim_plan(again, ledger, KEY, "camp-a", "elsewhere/runs/a", 3)
    assert result == ClaimResult(claimed=0, already_own=8, skipped_sent=0, skipped_in_progress=0)
    assert [p for _, p, _, _ in plan_rows(again)] == audience
    assert skipped_rows(again) == {}
    assert {c for c, _ in owners(ledger_path).values()} == {"camp-a"}


def test_claiming_a_recut_plan_again_is_idempotent(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    claim_plan(make_plan(users(range(6))), ledger, KEY, "camp-a", "runs/a", 4)
    con = make_plan(users(range(3, 12)), batch_size=4, job_size=5)
    claim_plan(con, ledger, KEY, "camp-b", "runs/b", 4)
    first = plan_rows(con)
    result = claim_plan(con, ledger, KEY, "camp-b", "runs/b", 4)
    assert result == ClaimResult(claimed=0, already_own=6, skipped_sent=0, skipped_in_progress=0)
    assert plan_rows(con) == first
    assert skipped_rows(con) == {}  # recreated: nothing of this plan is held by others


def test_keys_are_independent(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    claim_plan(make_plan(users(range(5))), ledger, KEY, "camp-a", "runs/a", 3)
    result = claim_plan(make_plan(users(range(5))), ledger, "promo", "camp-b", "runs/b", 3)
    assert result.claimed == 5


def test_mark_sent_releases_refused_rows_and_is_idempotent(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    con = make_plan(users(range(6)), batch_size=2, job_size=3)
    claim_plan(con, ledger, KEY, "camp-a", "runs/a", 2)
    con.execute(
        "CREATE TABLE ingest_errors AS SELECT 1 AS batch_no, 'u000002' AS recipient, "
        "'invalid email' AS error"
    )
    assert mark_sent(con, ledger, KEY, "camp-a", 0, "job-0") == MarkResult(2, 1)
    assert mark_sent(con, ledger, KEY, "camp-a", 0, "job-0") == MarkResult(0, 0)
    held = owners(ledger_path)
    assert "u000002" not in held
    assert held["u000000"] == ("camp-a", "sent") and held["u000003"] == ("camp-a", "claimed")
    assert ledger.lookup(KEY, ["u000001"])["u000001"].job_id == "job-0"

    later = make_plan(users(range(6)))
    result = claim_plan(later, ledger, KEY, "camp-b", "runs/b", 3)
    assert result == ClaimResult(claimed=1, already_own=0, skipped_sent=2, skipped_in_progress=3)
    assert [p for _, p, _, _ in plan_rows(later)] == ["u000002"]


def test_mark_sent_records_unclaimed_users_but_never_touches_others(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    claim_plan(make_plan(["x"]), ledger, KEY, "camp-b", "runs/b", 3)
    con = make_plan(["x", "y"])  # camp-a never claimed: say it sent anyway
    assert mark_sent(con, ledger, KEY, "camp-a", 0, "job-9", run_dir="runs/a").marked == 1
    assert owners(ledger_path) == {"x": ("camp-b", "claimed"), "y": ("camp-a", "sent")}
    assert ledger.lookup(KEY, ["y"])["y"].run_dir == "runs/a"


def test_release_frees_unsent_claims_for_another_campaign(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    a = make_plan(users(range(6)), job_size=2)
    claim_plan(a, ledger, KEY, "camp-a", "runs/a", 3)
    mark_sent(a, ledger, KEY, "camp-a", 0, "job-0")
    assert release(ledger, KEY, "camp-a", ["u000002", "u000000", "nobody"]) == 1
    assert release(ledger, KEY, "camp-other") == 0
    b = make_plan(users(range(6)))
    assert claim_plan(b, ledger, KEY, "camp-b", "runs/b", 3).claimed == 1
    assert release(ledger, KEY, "camp-a") == 3  # u3..u5; the sent ones stay
    c = make_plan(users(range(6)))
    result = claim_plan(c, ledger, KEY, "camp-c", "runs/c", 3)
    assert result == ClaimResult(claimed=3, already_own=0, skipped_sent=2, skipped_in_progress=1)


def test_a_failed_claim_claims_nobody(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    claim_plan(make_plan(["a"]), ledger, KEY, "camp-a", "runs/a", 3)

    def fail(held: Held) -> None:
        raise RuntimeError("disk full in the run database")

    with pytest.raises(RuntimeError):
        ledger.claim(KEY, "camp-b", "runs/b", [["b", "c"], ["a", "d"]], fail)
    assert set(owners(ledger_path)) == {"a"}


def test_a_claim_is_one_transaction_across_its_chunks(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path, lock_timeout=0.05)
    seen: list[dict[str, object]] = []

    def chunks() -> Iterator[list[str]]:
        yield ["a", "b"]
        # half-way through: another run can neither claim nor see the half-done claim
        with pytest.raises(StateError, match="locked: another bulkbatch run"):
            ledger.claim(KEY, "camp-b", "runs/b", [["b", "z"]], lambda held: None)
        seen.append(dict(ledger.lookup(KEY, ["a", "b"])))  # WAL: readers are not blocked
        yield ["c"]

    result = ledger.claim(KEY, "camp-a", "runs/a", chunks(), lambda held: None)
    assert result == ClaimResult(claimed=3, already_own=0, skipped_sent=0, skipped_in_progress=0)
    assert seen == [{}]
    assert owners(ledger_path) == dict.fromkeys("abc", ("camp-a", "claimed"))


def test_large_plans_stream_in_chunks(ledger_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(once, "CHUNK_ROWS", 7)
    ledger = open_ledger(ledger_path)
    claim_plan(make_plan(users(range(0, 50, 2))), ledger, KEY, "camp-a", "runs/a", 5)
    original = users(range(100))
    con = make_plan(original, batch_size=5, job_size=30)
    result = claim_plan(con, ledger, KEY, "camp-b", "runs/b", 5)
    assert result == ClaimResult(claimed=75, already_own=0, skipped_sent=0, skipped_in_progress=25)
    assert_layout(con, original, batch_size=5, job_size=30)
    assert release(ledger, KEY, "camp-b", (f"u{i:06d}" for i in range(50, 100))) == 50


def test_a_chunk_query_out_of_memory_raises_duckdb_s_own_error() -> None:
    """The ledger's chunks stream from DuckDB through pyarrow's reader, which raises a plain
    ``OSError`` for a query that runs out of memory mid-stream; the send's one line for
    ``BULKBATCH_MEMORY_LIMIT`` needs DuckDB's own class (``db.arrow_batches``)."""

    def read(con: duckdb.DuckDBPyConnection) -> Iterator[int]:
        for chunk in once._chunks(con, OUT_OF_MEMORY_MID_STREAM, []):
            yield len(chunk)

    out_of_memory_mid_stream(read)


# --------------------------------------------------------------------------- files and errors


def test_default_path_honours_the_env_and_files_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKBATCH_DATA_DIR", str(tmp_path / "deep" / "data"))
    path = default_ledger_path()
    assert path == tmp_path / "deep" / "data" / "once-per.sqlite"
    ledger = open_ledger(path)
    claim_plan(make_plan(["a"]), ledger, KEY, "camp-a", "runs/a", 3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as db:  # while a connection writes, -wal and -shm exist
        db.execute("DELETE FROM claims WHERE recipient = 'nobody'")
        sides = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert [stat.S_IMODE(side.stat().st_mode) for side in sides] == [0o600, 0o600]


def test_default_path_without_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKBATCH_DATA_DIR", raising=False)
    expected = Path(platformdirs.user_data_dir("bulkbatch")) / "once-per.sqlite"
    assert default_ledger_path() == expected
    # an empty variable is unset: the ledger never follows the working directory (#14)
    monkeypatch.setenv("BULKBATCH_DATA_DIR", "  ")
    assert default_ledger_path() == expected


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "once-per.sqlite"
    path.write_bytes(b"this is not a database at all\n" * 100)
    with pytest.raises(StateError, match="is not a bulkbatch --once-per ledger") as info:
        open_ledger(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    with pytest.raises(StateError, match="SQLite database of something else"):
        open_ledger(path)


def test_a_directory_or_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="is a directory"):
        open_ledger(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="Cannot write the --once-per ledger") as info:
        open_ledger(blocker / "sub" / "once-per.sqlite")
    assert str(blocker / "sub" / "once-per.sqlite") in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StateError, match="Cannot write the --once-per ledger"):
            open_ledger(locked / "once-per.sqlite")
    finally:
        locked.chmod(0o700)


def test_a_lock_held_too_long_names_the_file(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path, lock_timeout=0.1)
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateError, match="locked: another bulkbatch run") as info:
            claim_plan(make_plan(["a"]), ledger, KEY, "camp-a", "runs/a", 3)
        assert str(ledger_path) in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert claim_plan(make_plan(["a"]), ledger, KEY, "camp-a", "runs/a", 3).claimed == 1


def test_empty_key_or_campaign_is_a_usage_error(ledger_path: Path) -> None:
    ledger = open_ledger(ledger_path)
    with pytest.raises(UsageError):
        claim_plan(make_plan(["a"]), ledger, "", "camp-a", "runs/a", 3)
    with pytest.raises(UsageError):
        release(ledger, KEY, "")


# --------------------------------------------------------------------------- properties

audiences = st.lists(
    st.lists(st.integers(0, 40), unique=True, max_size=25).map(lambda ids: [f"r{i}" for i in ids]),
    min_size=2,
    max_size=4,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    audiences=audiences,
    order=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    batch_size=st.integers(1, 5),
    job_size=st.integers(1, 9),
)
def test_every_recipient_is_claimed_by_exactly_one_campaign(
    audiences: list[list[str]], order: list[int], batch_size: int, job_size: int
) -> None:
    order = [i % len(audiences) for i in order]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "once-per.sqlite"
        ledger = open_ledger(path)
        plans: dict[int, duckdb.DuckDBPyConnection] = {}
        first_claimer: dict[str, int] = {}
        for camp in order:  # a repeat is a resume: it re-plans and claims again
            con = make_plan(audiences[camp], batch_size=batch_size, job_size=job_size)
            result = claim_plan(con, ledger, KEY, f"c{camp}", f"runs/{camp}", batch_size)
            assert result.to_send + result.skipped == len(audiences[camp])
            assert_layout(con, audiences[camp], batch_size, job_size)
            plans[camp] = con
            for r in audiences[camp]:
                first_claimer.setdefault(r, camp)
        held = owners(path)
        assert held == {r: (f"c{c}", "claimed") for r, c in first_claimer.items()}
        in_plans: dict[str, list[int]] = {}
        for camp, con in plans.items():
            for _, r, _, _ in plan_rows(con):
                in_plans.setdefault(r, []).append(camp)
        assert in_plans == {r: [c] for r, c in first_claimer.items()}


# --------------------------------------------------------------------------- two processes

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import duckdb
    from bulkbatch.stages import once
    from bulkbatch.stages.once import claim_plan, open_ledger

    once.CHUNK_ROWS = 1000  # many chunks per claim: a claim must still be one transaction

    ledger_path, db_path, start, stop, campaign, wait = sys.argv[1:]
    con = duckdb.connect(db_path)
    con.execute(
        "CREATE TABLE plan AS SELECT range + 1 AS row_number, "
        "printf('u%06d', range + ?) AS recipient, (range // 5000)::INTEGER AS job_no, "
        "(range // 1000)::INTEGER AS batch_no, '{}' AS user_json "
        "FROM range(?::BIGINT - ?::BIGINT)",
        [int(start), int(stop), int(start)],
    )
    ledger = open_ledger(ledger_path)
    if wait == "wait":
        print("ready", flush=True)
        sys.stdin.readline()
    began = time.time()
    result = claim_plan(con, ledger, "welcome", campaign, db_path, 1000)
    print(json.dumps({"began": began, "ended": time.time(), **result.__dict__}))
    """
)


@pytest.mark.parametrize("start", ["staggered", "together"])
def test_two_processes_never_claim_the_same_recipient(tmp_path: Path, start: str) -> None:
    """``staggered``: the second process starts 0.3 s after the first. ``together``: both
    load their plan and open the ledger, then are released at once, so the claims contend
    for the ledger's write lock."""
    ledger_path = tmp_path / "once-per.sqlite"
    open_ledger(ledger_path)
    spans = {"camp-a": (0, 20_000), "camp-b": (10_000, 30_000)}
    procs = {}
    for i, (camp, (lo, hi)) in enumerate(spans.items()):
        if i and start == "staggered":
            time.sleep(0.3)
        db = str(tmp_path / f"{camp}.duckdb")
        argv = [str(ledger_path), db, str(lo), str(hi), camp, "wait" * (start == "together")]
        procs[camp] = subprocess.Popen(
            [sys.executable, "-c", CHILD, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    if start == "together":
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
    outputs = {}
    for camp, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outputs[camp] = json.loads(out)
    held = owners(ledger_path)
    assert set(held) == set(users(range(30_000)))
    planned: dict[str, set[str]] = {}
    for camp, (lo, hi) in spans.items():
        with duckdb.connect(str(tmp_path / f"{camp}.duckdb")) as con:
            plan = {r for _, r, _, _ in plan_rows(con)}
            skipped = set(skipped_rows(con))
            assert_layout(con, users(range(lo, hi)), 1000, 5000)
        assert not plan & skipped and plan | skipped == set(users(range(lo, hi)))
        assert all(held[r][0] == camp for r in plan)
        assert all(held[r][0] != camp for r in skipped)
        assert outputs[camp]["claimed"] == len(plan)
        planned[camp] = plan
    assert not planned["camp-a"] & planned["camp-b"]
    # each claim is atomic: the whole overlap went to whichever campaign committed first
    overlap = set(users(range(10_000, 20_000)))
    assert overlap <= planned["camp-a"] or overlap <= planned["camp-b"]
