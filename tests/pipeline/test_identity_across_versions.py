"""A campaign keeps its identity from one bulkbatch version to the next.

The campaign id is a hash of what is sent (every user's JSON, the job message, the layout), and
each request's Idempotency-Key is the id plus the batch or job number. So a retry run by a newer
bulkbatch (a scheduler retry after an upgrade, on a fresh worker) is recognised as the same
campaign only if the new version builds the same bytes and cuts the same batches:

* other user JSON bytes (a re-ordered key, another number format, a speed-up of the merge)
  give another id, and the retry sends everyone again;
* the same id with another cut sends batch N's key with other people in it: Courier replays
  the saved answer, and those people are never sent.

These pins were computed with bulkbatch at b631226. If one fails, the change alters what an
existing campaign computes. Do not update the pins to pass: make the change keep the bytes
and the cut. Changing them on purpose needs ``identity.IDENTITY_VERSION`` raised and a release
note saying that runs started before the upgrade must be finished by the version that began them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

import bulkbatch
from bulkbatch.config import auto_job_size

# What each row exercises: the address rules (trim, lower-case, E.164 and given phones, an
# integer-looking id), the merge (global under per-user, nulls that must not delete, a
# "null" inside a string, nesting, odd whitespace and number forms), data.<name> columns over
# the data column, the locale default, a duplicate and rejects.
ROWS = [
    ("u1", " Ada@Example.COM ", "+15550100001", "fr", "Ada", '{"city": "Paris", "promo": null}'),
    ("u2", "bob@example.com", "+1 (555) 010-0002", None, "Bob", '{"nested": {"b": 2, "a": null}}'),
    (None, "carol@example.com", "0044 20 7946 0003", "de", None, '{"note":"null island"}'),
    (None, None, "555-0004", None, "Dan", None),
    ("u5", "eve@example.com", None, "en", "Eve", '{ "score" : 1.50, "big": 12345678901234567890 }'),
    ("u1", "ada@example.com", None, None, "Ada again", "{}"),
    ("u7", "not-an-email", None, None, None, None),
    ("u8", "gus@example.com", None, None, "Gus", "[1, 2]"),
    ("42", "hal@example.com", "+44 20 7946 0009", None, "Hal", '{"tags": ["a", "b"]}'),
    ("u10", "ivy@example.com", None, "pt", "Ivy", '{"\\u00e9t\\u00e9": "\\u263a"}'),
]

CAMPAIGN = "652e3d0099b055214b629a65"
PLAN = "8bbe871553d59d3a986f67972a849734bbb631fb59928bbec0425cf09b23d249"


def _audience(path: Path) -> Path:
    columns = ("user_id", "email", "phone_number", "locale", "data.first_name", "data")
    pl.DataFrame(
        {name: [row[i] for row in ROWS] for i, name in enumerate(columns)},
        schema=dict.fromkeys(columns, pl.Utf8),
    ).write_csv(path)
    return path


def test_a_fixed_campaign_keeps_its_id_and_its_cut(tmp_path: Path) -> None:
    run = bulkbatch.plan(
        _audience(tmp_path / "audience.csv"),
        template="welcome-template",
        brand="brand-1",
        locale="en",
        data={"promo": "SPRING", "nested": {"a": 1, "c": 3}},
        batch_size=2,
        max_job_size=3,
        channel="none",
        run_dir=tmp_path / "run",
    )
    plan = run.read_plan().sort("row_number")
    rows = plan.select("row_number", "job_no", "batch_no", "recipient", "user_json").rows()
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()
    assert (run.campaign, digest) == (CAMPAIGN, PLAN), rows


def test_the_default_cut_of_large_audiences_is_pinned() -> None:
    """With no ``max_job_size``, the job size comes from the row count alone (about 64 jobs,
    at least 10,000 users), pinned at the values of round 32. It once followed the default
    ``--concurrency`` (16); round 33 raised that default to 32, and a cut that followed it
    would have halved every job: a retry after the upgrade would send under other keys."""
    pins = {
        2_000: 10_000,
        200_000: 10_000,
        640_001: 10_001,
        1_000_000: 15_625,
        10_000_000: 156_250,
        100_000_000: 1_562_500,
    }
    assert {rows: auto_job_size(rows) for rows in pins} == pins
