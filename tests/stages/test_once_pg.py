"""The PostgreSQL ``--once-per`` ledger and campaign registry, against a real server.

The same behaviours ``test_once_ledger.py`` checks for SQLite, plus what only a shared server
has: claims from separate processes at the same moment, a schema created by whoever comes
first, and URLs whose password must never show. The registry, its leases and sends end to
end are in ``test_once_pg_registry.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.dburl import location_of, redact_url
from bulkbatch.errors import StateError, UsageError
from bulkbatch.registry_pg import open_registry
from bulkbatch.stages import once, once_pg
from bulkbatch.stages.once import ClaimResult, Held, MarkResult, claim_plan, mark_sent, release
from bulkbatch.stages.once import open_ledger as open_any_ledger
from bulkbatch.stages.once_pg import PgLedger
from tests.stages.test_once_ledger import assert_layout, make_plan, plan_rows, skipped_rows, users

pytest_plugins = ["tests.pgserver"]  # a real PostgreSQL server: postgres_url, pg_url

KEY = "welcome"


def open_ledger(url: str, *, lock_timeout: float = 60.0) -> PgLedger:
    ledger = open_any_ledger(url, lock_timeout=lock_timeout)
    assert isinstance(ledger, PgLedger)
    return ledger


def owners(url: str, key: str = KEY) -> dict[str, tuple[str, str]]:
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT recipient, campaign, state FROM bulkbatch_claims WHERE key = %s", [key]
        ).fetchall()
    return {r: (c, s) for r, c, s in rows}


# --------------------------------------------------------------------------- claiming


def test_first_claim_takes_everyone_and_leaves_the_plan_alone(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    con = make_plan(users(range(10)), batch_size=3)
    before = plan_rows(con)
    result = claim_plan(con, ledger, KEY, "camp-a", "runs/monday", 3)
    assert result == ClaimResult(claimed=10, already_own=0, skipped_sent=0, skipped_in_progress=0)
    assert plan_rows(con) == before
    assert skipped_rows(con) == {}
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
    assert c.claimed_at.endswith("+00:00")


def test_other_campaign_skips_what_is_sent_or_in_progress(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    monday = make_plan(users(range(10)), batch_size=2, job_size=5)
    claim_plan(monday, ledger, KEY, "camp-a", "runs/monday", 2)
    assert mark_sent(monday, ledger, KEY, "camp-a", 0, "job-0") == MarkResult(5, 0)

    original = users(range(3, 15))
    tuesday = make_plan(original, batch_size=2, job_size=4)
    result = claim_plan(tuesday, ledger, KEY, "camp-b", "runs/tuesday", 2)
    assert result == ClaimResult(claimed=5, already_own=0, skipped_sent=2, skipped_in_progress=5)
    reasons = skipped_rows(tuesday)
    assert reasons["u000003"] == "sent under --once-per welcome by campaign camp-a (runs/monday)"
    assert reasons["u000007"] == (
        "claimed under --once-per welcome by campaign camp-a (runs/monday), still in progress"
    )
    assert set(reasons) == set(users(range(3, 10)))
    assert [p for _, p, _, _ in plan_rows(tuesday)] == users(range(10, 15))
    assert_layout(tuesday, original, batch_size=2, job_size=4)
    assert owners(pg_url)["u000012"] == ("camp-b", "claimed")
    assert owners(pg_url)["u000004"] == ("camp-a", "sent")


def test_resume_of_the_same_campaign_keeps_all_its_users(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    audience = users(range(8))
    assert claim_plan(make_plan(audience), ledger, KEY, "camp-a", "runs/a", 3).claimed == 8
    mark_sent(make_plan(audience, job_size=4), ledger, KEY, "camp-a", 0, "job-0")
    again = make_plan(audience, job_size=4)
    result = claim_plan(again, ledger, KEY, "camp-a", "elsewhere/runs/a", 3)
    assert result == ClaimResult(claimed=0, already_own=8, skipped_sent=0, skipped_in_progress=0)
    assert [p for _, p, _, _ in plan_rows(again)] == audience
    assert {c for c, _ in owners(pg_url).values()} == {"camp-a"}


def test_claiming_a_recut_plan_again_is_idempotent(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    claim_plan(make_plan(users(range(6))), ledger, KEY, "camp-a", "runs/a", 4)
    con = make_plan(users(range(3, 12)), batch_size=4, job_size=5)
    claim_plan(con, ledger, KEY, "camp-b", "runs/b", 4)
    first = plan_rows(con)
    result = claim_plan(con, ledger, KEY, "camp-b", "runs/b", 4)
    assert result == ClaimResult(claimed=0, already_own=6, skipped_sent=0, skipped_in_progress=0)
    assert plan_rows(con) == first
    assert skipped_rows(con) == {}


def test_keys_are_independent(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    claim_plan(make_plan(users(range(5))), ledger, KEY, "camp-a", "runs/a", 3)
    assert (
        claim_plan(make_plan(users(range(5))), ledger, "promo", "camp-b", "runs/b", 3).claimed == 5
    )


def test_mark_sent_releases_refused_rows_and_is_idempotent(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    con = make_plan(users(range(6)), batch_size=2, job_size=3)
    claim_plan(con, ledger, KEY, "camp-a", "runs/a", 2)
    con.execute(
        "CREATE TABLE ingest_errors AS SELECT 1 AS batch_no, 'u000002' AS recipient, "
        "'invalid email' AS error"
    )
    assert mark_sent(con, ledger, KEY, "camp-a", 0, "job-0") == MarkResult(2, 1)
    assert mark_sent(con, ledger, KEY, "camp-a", 0, "job-0") == MarkResult(0, 0)
    held = owners(pg_url)
    assert "u000002" not in held
    assert held["u000000"] == ("camp-a", "sent") and held["u000003"] == ("camp-a", "claimed")
    claim = ledger.lookup(KEY, ["u000001"])["u000001"]
    assert claim.job_id == "job-0" and claim.sent_at is not None

    later = make_plan(users(range(6)))
    result = claim_plan(later, ledger, KEY, "camp-b", "runs/b", 3)
    assert result == ClaimResult(claimed=1, already_own=0, skipped_sent=2, skipped_in_progress=3)
    assert [p for _, p, _, _ in plan_rows(later)] == ["u000002"]


def test_mark_sent_records_unclaimed_users_but_never_touches_others(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    claim_plan(make_plan(["x"]), ledger, KEY, "camp-b", "runs/b", 3)
    con = make_plan(["x", "y"])  # camp-a never claimed: say it sent anyway
    assert mark_sent(con, ledger, KEY, "camp-a", 0, "job-9", run_dir="runs/a").marked == 1
    assert owners(pg_url) == {"x": ("camp-b", "claimed"), "y": ("camp-a", "sent")}
    assert ledger.lookup(KEY, ["y"])["y"].run_dir == "runs/a"


def test_release_frees_unsent_claims_for_another_campaign(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    a = make_plan(users(range(6)), job_size=2)
    claim_plan(a, ledger, KEY, "camp-a", "runs/a", 3)
    mark_sent(a, ledger, KEY, "camp-a", 0, "job-0")
    assert release(ledger, KEY, "camp-a", ["u000002", "u000000", "nobody"]) == 1
    assert release(ledger, KEY, "camp-other") == 0
    assert release(ledger, KEY, "camp-a", []) == 0
    b = make_plan(users(range(6)))
    assert claim_plan(b, ledger, KEY, "camp-b", "runs/b", 3).claimed == 1
    assert release(ledger, KEY, "camp-a") == 3  # u3..u5; the sent ones stay
    c = make_plan(users(range(6)))
    result = claim_plan(c, ledger, KEY, "camp-c", "runs/c", 3)
    assert result == ClaimResult(claimed=3, already_own=0, skipped_sent=2, skipped_in_progress=1)


def test_a_failed_claim_claims_nobody(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    claim_plan(make_plan(["a"]), ledger, KEY, "camp-a", "runs/a", 3)

    def fail(held: Held) -> None:
        raise RuntimeError("disk full in the run database")

    with pytest.raises(RuntimeError):
        ledger.claim(KEY, "camp-b", "runs/b", [["b", "c"], ["a", "d"]], fail)
    assert set(owners(pg_url)) == {"a"}

    def broken() -> Iterator[list[str]]:
        yield ["e", "f"]
        raise RuntimeError("the run database went away mid-claim")

    with pytest.raises(RuntimeError, match="went away"):
        ledger.claim(KEY, "camp-b", "runs/b", broken(), lambda held: None)
    assert set(owners(pg_url)) == {"a"}


def test_a_claim_is_atomic_per_recipient_not_a_ledger_lock(pg_url: str) -> None:
    """Unlike SQLite, another run claims side by side; the half-done claim is invisible,
    and whoever commits a recipient first keeps it."""
    ledger = open_ledger(pg_url)
    seen: list[dict[str, object]] = []

    def chunks() -> Iterator[list[str]]:
        yield ["a", "b"]
        other = ledger.claim(KEY, "camp-b", "runs/b", [["b", "z"]], lambda held: None)
        assert other.claimed == 2
        seen.append(dict(ledger.lookup(KEY, ["a", "b"])))
        yield ["c"]

    held: list[Held] = []
    result = ledger.claim(KEY, "camp-a", "runs/a", chunks(), held.append)
    assert result == ClaimResult(claimed=2, already_own=0, skipped_sent=0, skipped_in_progress=1)
    assert held == [Held("camp-b", "claimed", "runs/b", ["b"])]
    assert list(seen[0]) == ["b"]
    assert owners(pg_url) == {
        "a": ("camp-a", "claimed"),
        "b": ("camp-b", "claimed"),
        "c": ("camp-a", "claimed"),
        "z": ("camp-b", "claimed"),
    }


def test_a_row_lock_held_too_long_is_a_clear_error(pg_url: str) -> None:
    ledger = open_ledger(pg_url, lock_timeout=0.2)
    with psycopg.connect(pg_url) as holder:  # an uncommitted claim of "a" by another run
        holder.execute(
            "INSERT INTO bulkbatch_claims (key, recipient, campaign, state, claimed_at) "
            "VALUES (%s, 'a', 'camp-x', 'claimed', now())",
            [KEY],
        )
        with pytest.raises(StateError, match="locked: another bulkbatch run") as info:
            claim_plan(make_plan(["a", "b"]), ledger, KEY, "camp-a", "runs/a", 3)
        assert "0.2s" in str(info.value) and "\n" not in str(info.value)
        holder.rollback()
    assert claim_plan(make_plan(["a", "b"]), ledger, KEY, "camp-a", "runs/a", 3).claimed == 2


def test_large_plans_stream_in_chunks(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(once, "CHUNK_ROWS", 7)
    ledger = open_ledger(pg_url)
    claim_plan(make_plan(users(range(0, 50, 2))), ledger, KEY, "camp-a", "runs/a", 5)
    original = users(range(100))
    con = make_plan(original, batch_size=5, job_size=30)
    sizes: list[int] = []
    result = ledger.claim(
        KEY,
        "camp-b",
        "runs/b",
        once._chunks(con, "SELECT recipient FROM plan", []),
        lambda held: sizes.append(len(held.recipients)),
    )
    assert result == ClaimResult(claimed=75, already_own=0, skipped_sent=0, skipped_in_progress=25)
    assert sizes == [7, 7, 7, 4]  # holders come back in bounded lists
    assert claim_plan(con, ledger, KEY, "camp-b", "runs/b", 5).already_own == 75
    assert_layout(con, original, batch_size=5, job_size=30)
    assert release(ledger, KEY, "camp-b", (f"u{i:06d}" for i in range(50, 100))) == 50


def test_awkward_recipients_survive_copy(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    odd = ["tab\there", "back\\slash", "new\nline", "cr\rx", "\\.", "", "ünï☃", "a,b", "\\N"]
    result = ledger.claim(KEY, "camp-a", "runs/a", [odd], lambda held: None)
    assert result.claimed == len(odd)
    assert set(owners(pg_url)) == set(odd)
    assert set(ledger.lookup(KEY, odd)) == set(odd)


def test_empty_key_or_campaign_is_a_usage_error(pg_url: str) -> None:
    ledger = open_ledger(pg_url)
    with pytest.raises(UsageError):
        claim_plan(make_plan(["a"]), ledger, "", "camp-a", "runs/a", 3)
    with pytest.raises(UsageError):
        release(ledger, KEY, "")


# --------------------------------------------------------------------------- schema


def test_the_schema_is_created_once_with_a_version(pg_url: str) -> None:
    def first_user(_: int) -> None:
        once_pg._ready.discard(location_of(pg_url))  # as if each were a new process
        open_ledger(pg_url)
        open_registry(pg_url)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(first_user, range(8)))  # re-raises any failure
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT name, version FROM bulkbatch_schema").fetchall() == [
            ("bulkbatch", 1)
        ]
        tables = {
            r[0]
            for r in db.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'bulkbatch%'")
        }
    assert tables == {"bulkbatch_schema", "bulkbatch_claims", "bulkbatch_campaigns"}


def test_a_newer_schema_or_a_foreign_table_is_refused(pg_url: str, postgres_server: object) -> None:
    open_ledger(pg_url)
    with psycopg.connect(pg_url) as db:
        db.execute("UPDATE bulkbatch_schema SET version = 99")
    once_pg._ready.discard(location_of(pg_url))
    with pytest.raises(StateError, match=r"newer bulkbatch \(schema 99\)"):
        open_ledger(pg_url)

    other = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(other, autocommit=True) as db:
        name = f"foreign_{uuid.uuid4().hex[:8]}"
        db.execute(f"CREATE DATABASE {name}")
    foreign = pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(foreign) as db:
        db.execute("CREATE TABLE bulkbatch_claims (id int)")
    with pytest.raises(StateError, match="not a bulkbatch ledger"):
        open_ledger(foreign)


# --------------------------------------------------------------------------- URLs and errors


@pytest.mark.parametrize(
    ("url", "shown", "location"),
    [
        ("postgresql://u:s3cret@db:5432/app", "postgresql://u:***@db:5432/app",
         "postgresql://u@db:5432/app"),
        ("postgres://u@db/app", "postgres://u@db/app", "postgres://u@db/app"),
        ("postgresql://u:p%40ss@db/app?sslmode=require", "postgresql://u:***@db/app?sslmode=require",
         "postgresql://u@db/app?sslmode=require"),
        ("postgresql://u:p@ss?w@db/app", "postgresql://u:***@db/app", "postgresql://u@db/app"),
        ("postgresql://u:pa/ss@db/app", "postgresql://u:***@db/app", "postgresql://u@db/app"),
        ("postgresql://:s3cret@db/app", "postgresql://:***@db/app", "postgresql://db/app"),
        ("postgresql://db/app?user=u&password=s3cret&sslmode=require",
         "postgresql://db/app?user=u&password=***&sslmode=require",
         "postgresql://db/app?user=u&sslmode=require"),
        ("postgresql://db:5432/app?user=me@corp", "postgresql://db:5432/app?user=me@corp",
         "postgresql://db:5432/app?user=me@corp"),
        ("host=db password=s3cret dbname=app", "host=db password=*** dbname=app",
         "host=db password=s3cret dbname=app"),
    ],
)  # fmt: skip
def test_redact_url(url: str, shown: str, location: str) -> None:
    assert redact_url(url) == shown
    if "://" in url:
        assert location_of(url) == location


def test_a_refused_connection_is_one_line_without_the_password(
    postgres_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("PG")]:
        monkeypatch.delenv(name)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://bob:Hunter%402-s3cret@127.0.0.1:{port}/claims"
    with pytest.raises(StateError) as info:
        open_any_ledger(url)
    text = str(info.value)
    assert "s3cret" not in text and "Hunter" not in text and "\n" not in text
    assert f"postgresql://bob:***@127.0.0.1:{port}/claims" in text
    assert "host 127.0.0.1, database claims" in text
    assert "Connection refused" in text and "PostgreSQL is running" in text
    assert "s3cret" not in repr(info.value)


def test_a_missing_database_says_what_to_do(postgres_url: str) -> None:
    url = postgres_url.replace("postgres@", "postgres:s3cret@").rsplit("/", 1)[0] + "/nope"
    with pytest.raises(StateError, match=r"does not exist.*createdb") as info:
        open_any_ledger(url)
    assert "s3cret" not in str(info.value)


def test_the_location_has_no_password_and_reopens_in_this_process(pg_url: str) -> None:
    with_password = pg_url.replace("postgres@", "postgres:s3cret@")
    ledger = open_ledger(with_password)
    assert ledger.location == pg_url and "s3cret" not in repr(ledger)
    again = open_ledger(ledger.location)
    assert again.db._url == with_password  # remembered in memory only
    assert "s3cret" not in again.db.display and "***" in again.db.display
    postgres_scheme = open_ledger(pg_url.replace("postgresql://", "postgres://"))
    assert postgres_scheme.lookup(KEY, ["x"]) == {}


def test_without_psycopg_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(UsageError, match=r"pip install 'bulkbatch\[postgres\]'") as info:
        open_any_ledger("postgresql://u:s3cret@db/app")
    assert "s3cret" not in str(info.value)


def test_missing_server_binaries_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkbatch.testing import postgres

    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(StateError, match=r"apt-get install -y postgresql"):
        postgres.find_bin_dir()


# --------------------------------------------------------------------------- properties

audiences = st.lists(
    st.lists(st.integers(0, 40), unique=True, max_size=25).map(lambda ids: [f"r{i}" for i in ids]),
    min_size=2,
    max_size=4,
)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    audiences=audiences,
    order=st.lists(st.integers(0, 3), min_size=1, max_size=6),
    batch_size=st.integers(1, 5),
    job_size=st.integers(1, 9),
)
def test_every_recipient_is_claimed_by_exactly_one_campaign(
    postgres_url: str,
    audiences: list[list[str]],
    order: list[int],
    batch_size: int,
    job_size: int,
) -> None:
    key = f"prop-{uuid.uuid4().hex}"  # every example its own key on the shared server
    order = [i % len(audiences) for i in order]
    ledger = open_ledger(postgres_url)
    plans: dict[int, duckdb.DuckDBPyConnection] = {}
    first_claimer: dict[str, int] = {}
    for camp in order:
        con = make_plan(audiences[camp], batch_size=batch_size, job_size=job_size)
        result = claim_plan(con, ledger, key, f"c{camp}", f"runs/{camp}", batch_size)
        assert result.to_send + result.skipped == len(audiences[camp])
        assert_layout(con, audiences[camp], batch_size, job_size)
        plans[camp] = con
        for r in audiences[camp]:
            first_claimer.setdefault(r, camp)
    assert owners(postgres_url, key) == {r: (f"c{c}", "claimed") for r, c in first_claimer.items()}
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

    once.CHUNK_ROWS = 1000  # many chunks per claim

    url, db_path, start, stop, campaign = sys.argv[1:]
    con = duckdb.connect(db_path)
    con.execute(
        "CREATE TABLE plan AS SELECT range + 1 AS row_number, "
        "printf('u%06d', range + ?) AS recipient, (range // 2500)::INTEGER AS job_no, "
        "(range // 500)::INTEGER AS batch_no, '{}' AS user_json "
        "FROM range(?::BIGINT - ?::BIGINT)",
        [int(start), int(stop), int(start)],
    )
    ledger = open_ledger(url)
    print("ready", flush=True)
    sys.stdin.readline()
    result = claim_plan(con, ledger, "welcome", campaign, db_path, 500)
    print(json.dumps(result.__dict__), flush=True)
    """
)


def test_two_processes_never_claim_the_same_recipient(pg_url: str, tmp_path: Path) -> None:
    """Two processes load their plans and connect, then claim at the same moment: 2 x 6,000
    people, 3,000 shared."""
    open_ledger(pg_url)
    spans = {"camp-a": (0, 6_000), "camp-b": (3_000, 9_000)}
    procs = {}
    for camp, (lo, hi) in spans.items():
        argv = [pg_url, str(tmp_path / f"{camp}.duckdb"), str(lo), str(hi), camp]
        procs[camp] = subprocess.Popen(
            [sys.executable, "-c", CHILD, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
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
    held = owners(pg_url)
    assert set(held) == set(users(range(9_000)))
    planned: dict[str, set[str]] = {}
    for camp, (lo, hi) in spans.items():
        with duckdb.connect(str(tmp_path / f"{camp}.duckdb")) as con:
            plan = {r for _, r, _, _ in plan_rows(con)}
            skipped = set(skipped_rows(con))
            assert_layout(con, users(range(lo, hi)), 500, 2500)
        assert not plan & skipped and plan | skipped == set(users(range(lo, hi)))
        assert all(held[r][0] == camp for r in plan)
        assert all(held[r][0] != camp for r in skipped)
        assert outputs[camp]["claimed"] == len(plan)
        planned[camp] = plan
    assert not planned["camp-a"] & planned["camp-b"]
    assert len(planned["camp-a"]) + len(planned["camp-b"]) == 9_000
    # rows are inserted in one global order: the whole overlap went to one campaign
    overlap = set(users(range(3_000, 6_000)))
    assert overlap <= planned["camp-a"] or overlap <= planned["camp-b"]


WAITING_CHILD = textwrap.dedent(
    """
    import json, sys
    from bulkbatch.stages.once import open_ledger

    ledger = open_ledger(sys.argv[1])
    print("ready", flush=True)
    held = []
    result = ledger.claim(
        "welcome", "camp-b", "runs/b", [["o1", "o2", "b1"]], lambda h: held.append(h.recipients)
    )
    print(json.dumps({"claimed": result.claimed, "held": held}), flush=True)
    """
)


def test_a_claim_waits_for_another_process_uncommitted_claim_then_skips_it(pg_url: str) -> None:
    """Deterministic: camp-b's process claims while camp-a's transaction holds the same
    people uncommitted; the server shows it waiting on a lock, and once camp-a commits it
    gets only the person camp-a did not take."""
    ledger = open_ledger(pg_url)
    ledger.claim(KEY, "camp-x", "runs/x", [["h"]], lambda held: None)
    procs: list[subprocess.Popen[bytes]] = []

    def on_held(held: Held) -> None:  # inside camp-a's transaction, after its insert
        proc = subprocess.Popen(
            [sys.executable, "-c", WAITING_CHILD, pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 30
        with psycopg.connect(pg_url, autocommit=True) as watcher:
            while time.monotonic() < deadline:
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).fetchone()
                if waiting and waiting[0] == 1:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the second claim never waited for the first")
        assert proc.poll() is None

    result = ledger.claim(KEY, "camp-a", "runs/a", [["h", "o1", "o2", "a1"]], on_held)
    assert result == ClaimResult(claimed=3, already_own=0, skipped_sent=0, skipped_in_progress=1)
    out, err = procs[0].communicate(timeout=60)
    assert procs[0].returncode == 0, err.decode()
    assert json.loads(out) == {"claimed": 1, "held": [["o1", "o2"]]}
    assert owners(pg_url) == {
        "h": ("camp-x", "claimed"),
        "o1": ("camp-a", "claimed"),
        "o2": ("camp-a", "claimed"),
        "a1": ("camp-a", "claimed"),
        "b1": ("camp-b", "claimed"),
    }
