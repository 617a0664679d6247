"""End to end over real HTTP: the ``bulkbatch`` CLI process against an emulator process.

The expected outcome of every row is computed here, independently of the plan code,
from the CSV itself; the results file must match it row by row.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from tests.support import API_KEY, SAMPLE, EmulatorProcess, bulkbatch

pytestmark = pytest.mark.e2e

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MESSAGE_ID = re.compile(r"^1-[0-9a-f]{8}-[0-9a-f]{24}$")


def expected_outcomes(path: Path) -> list[dict[str, Any]]:
    """What should happen to each row, from the documented rules alone."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=1):
            uid = (row["user_id"] or "").strip()
            email = (row["email"] or "").strip().lower()
            phone = re.sub(r"[^0-9+]", "", row["phone_number"] or "")
            if not (uid or email or phone):
                out.append({"row_number": n, "outcome": "rejected", "reason_code": "no_address"})
                continue
            if email and not EMAIL.match(email):
                out.append({"row_number": n, "outcome": "rejected", "reason_code": "bad_email"})
                continue
            recipient = uid or (f"email:{email}" if email else f"phone:{phone}")
            if recipient in seen:
                out.append(
                    {
                        "row_number": n,
                        "outcome": "duplicate",
                        "reason_code": "duplicate",
                        "recipient": recipient,
                        "reason": f"duplicate of row {seen[recipient]}",
                    }
                )
                continue
            seen[recipient] = n
            out.append({"row_number": n, "outcome": "ingested", "recipient": recipient})
    return out


# The emulator's two documented answer sets: the OpenAPI file's 200 / 204 / 204 and the bulk
# tutorial's 201 / 200 {total, errors} / 202. The client must give the same result on both.
FLAVORS = pytest.mark.parametrize("flavor", ["current", "tutorial"])


@FLAVORS
def test_send_sample_row_by_row(tmp_path: Path, flavor: str) -> None:
    expected = expected_outcomes(SAMPLE)
    run_dir = tmp_path / "run"
    with EmulatorProcess("--flavor", flavor) as emu:
        proc = bulkbatch(
            "--quiet",
            "send",
            str(SAMPLE),
            "--event",
            "welcome",
            "--data",
            '{"company": "Acme"}',
            "--run-dir",
            str(run_dir),
            "--poll-interval",
            "0.1",
            "--json",
            env=emu.env(),
        )
        assert proc.returncode == 0, proc.stderr
        stats = emu.stats()

    summary = orjson.loads(proc.stdout)
    results = pq.read_table(run_dir / "results.parquet").to_pylist()
    assert len(results) == len(expected) == 2000
    job_id = summary["jobs"][0]["job_id"]
    for got, want in zip(results, expected, strict=True):
        assert got["row_number"] == want["row_number"]
        assert got["outcome"] == want["outcome"], (got, want)
        if want["outcome"] == "ingested":
            assert got["recipient"] == want["recipient"]
            assert got["job_id"] == job_id
            assert got["status"] == "ENQUEUED"
            assert MESSAGE_ID.match(got["message_id"]), got
            assert got["reason"] is None
        else:
            assert got["reason_code"] == want["reason_code"], (got, want)
            assert got["message_id"] is None
            if want["outcome"] == "duplicate":
                assert got["reason"] == want["reason"]
    # the key columns come back, and no other personal data by default
    assert {"user_id", "email", "phone_number"} <= set(results[0])
    assert "data.first_name" not in results[0]

    ingested = sum(1 for e in expected if e["outcome"] == "ingested")
    counts = summary["counts"]
    assert counts["ingested"] == ingested
    assert counts["input_rows"] == counts["ingested"] + counts["duplicates"] + counts["rejected"]
    assert summary["accounting_ok"] is True
    # the server saw exactly one job, run once, with every planned user exactly once
    assert stats["jobs_created"] == 1
    assert stats["runs"] == 1
    assert stats["users_accepted"] == ingested
    assert stats["max_accepted_per_recipient"] == 1
    # the key never lands in the run directory
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert API_KEY.encode() not in f.read_bytes(), f


def test_send_without_key_names_the_fix(tmp_path: Path) -> None:
    proc = bulkbatch("send", str(SAMPLE), "--event", "welcome", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "Error: No Courier API key: set COURIER_API_KEY (or pass --api-key), or add "
        "--emulator to rehearse on the local emulator."
    )


def test_nan_and_trailing_commas_no_longer_fail_everyone_in_the_batch(tmp_path: Path) -> None:
    """One user's ``{"n": NaN}`` (which DuckDB reads as JSON) or NaN inside a struct (which
    its to_json writes bare) made the emulator, like Courier, refuse the whole batch with a
    400 on every try, and the run stopped. Now the text ones are rejected and named, the
    struct's NaN is null, and everyone else is sent."""
    source = tmp_path / "a.csv"
    rows = [f'u{i},"{{""n"": {i}}}"' for i in range(1, 7)]
    rows += ['u7,"{""n"": NaN}"', 'u8,"{""n"": [1, 2,]}"', 'u9,"{""n"": -inf}"']
    source.write_text("user_id,data\n" + "\n".join(rows) + "\n")
    proc = bulkbatch(
        "--quiet", "send", str(source), "--event", "welcome", "--emulator",
        "--run-dir", str(tmp_path / "r"), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert report["counts"]["ingested"] == 6
    assert report["rejected_by_reason"] == {"bad_json": 3}
    assert report["accounting_ok"] and not report["problems"]
