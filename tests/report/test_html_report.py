"""``bulkbatch.html_report.write_report``: a self-contained HTML report of a run.

A real run of the sample audience on the in-process emulator (messages on) is built once;
the report is parsed with ``html.parser`` and checked against ``run.summary()``. A plan-only
run, a locked run database, a run without delivery data, hostile input values and a
directory that is not a run are covered too. When Chromium is installed, the report is also
rendered headless to a screenshot.
"""

from __future__ import annotations

import csv
import os
import shutil
import struct
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import orjson
import pytest

import bulkbatch
from bulkbatch.errors import StateError
from bulkbatch.html_report import _throughput, mask_text, mask_value, write_report
from bulkbatch.html_report.markup import _seconds
from tests.support import SAMPLE

HOLD_LOCK = (
    "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
    "print('locked', flush=True); sys.stdin.read()"
)
SECTIONS = (
    "accounting",
    "jobs",
    "timings",
    "rejects",
    "duplicates",
    "statuses",
    "delivery",
    "throughput",
)


class Page(HTMLParser):
    """What the tests look at: title, sections, data-* counts, resource links, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[str] = []
        self.tags: defaultdict[str, int] = defaultdict(int)
        self.resources: list[tuple[str, str, str]] = []
        self.data: dict[str, dict[str, str]] = defaultdict(dict)
        self.text_parts: list[str] = []
        self._in: list[str] = []
        self._pending: list[tuple[str, str]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self._in.append(tag)
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections.append(a.get("id", ""))
        for name in ("src", "href", "xlink:href", "data", "action", "poster", "srcset"):
            if name in a:
                self.resources.append((tag, name, a[name]))
        for name, value in a.items():
            if name.startswith("data-") and name != "data-accounting":
                self._pending.append((name[5:], value))
            if name == "data-accounting":
                self.data["accounting"]["badge"] = value

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "title" and "svg" not in self._in:
            self.title += data
        self.text_parts.append(data)
        while self._pending:
            kind, key = self._pending.pop()
            self.data[kind][key] = data.strip()

    @property
    def text(self) -> str:
        return " ".join(self.text_parts)

    def number(self, kind: str, key: str) -> int:
        return int(self.data[kind][key].replace(",", ""))


def sample_emails() -> set[str]:
    with SAMPLE.open(newline="") as f:
        return {row["email"].strip() for row in csv.DictReader(f) if row["email"].strip()}


def assert_self_contained(html_text: str, page: Page) -> None:
    assert page.tags["script"] == 0, "the report must not contain scripts"
    assert page.tags["link"] == 0 and page.tags["iframe"] == 0 and page.tags["img"] == 0
    assert "<script src=" not in html_text.lower()
    for tag, attr, value in page.resources:
        assert not value.lower().startswith(("http:", "https:", "//")), (tag, attr, value)
    assert "url(" not in html_text.lower(), "no CSS resources (fonts, images) either"
    assert "@import" not in html_text.lower()


def assert_no_clear_emails(html_text: str) -> None:
    lowered = html_text.lower()
    leaked = [e for e in sample_emails() if e.lower() in lowered]
    assert not leaked, f"e-mail addresses in clear: {leaked[:5]}"


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sent_run(tmp_path_factory: pytest.TempPathFactory) -> bulkbatch.Run:
    root = tmp_path_factory.mktemp("report")
    return bulkbatch.send(
        str(SAMPLE),
        event="welcome",
        emulator="immediate",
        messages=True,
        settings=bulkbatch.Settings(poll_interval=0.1, start_rate=1000),
        run_dir=root / "runs" / "sent",
    )


@pytest.fixture(scope="module")
def sent_report(sent_run: bulkbatch.Run) -> tuple[Path, str, Page]:
    path = write_report(sent_run.path)
    text = path.read_text(encoding="utf-8")
    return path, text, Page(text)


@pytest.fixture
def plan_run(tmp_path: Path) -> bulkbatch.Run:
    return bulkbatch.plan(str(SAMPLE), event="welcome", run_dir=tmp_path / "runs" / "planned")


# -- a finished run -------------------------------------------------------------------


def test_report_of_a_finished_run(
    sent_run: bulkbatch.Run, sent_report: tuple[Path, str, Page]
) -> None:
    path, text, page = sent_report
    assert path == sent_run.path / "report.html"
    summary = sent_run.summary()
    assert summary["accounting_ok"] is True

    assert page.title == f"bulkbatch report: {sent_run.run_id}"
    assert text.startswith("<!DOCTYPE html>")
    for section in SECTIONS:
        assert section in page.sections, f"section {section!r} missing"

    # The accounting equals run.summary(), and the badge says OK.
    for key, value in summary["counts"].items():
        assert page.number("count", key) == value, key
    assert page.data["accounting"]["badge"] == "ok"
    counts = summary["counts"]
    assert f"{counts['input_rows']:,} = {counts['ingested']:,} ingested" in page.text

    # Rejects by reason, bulk statuses, the delivery funnel.
    assert {k: page.number("reason", k) for k in page.data["reason"]} == summary[
        "rejected_by_reason"
    ]
    assert {k: page.number("status", k) for k in page.data["status"]} == summary["statuses"]
    delivery = summary["delivery"]
    assert page.number("funnel", "DELIVERED") == delivery["DELIVERED"]
    assert page.number("funnel", "UNDELIVERABLE") == delivery.get("UNDELIVERABLE", 0)
    # time to deliver, and why the failed ones failed (#17)
    assert 'data-deliver="p50"' in text and 'data-deliver="p99"' in text
    assert "Why messages were not delivered" in page.text
    assert page.number("funnel", "UNROUTABLE") == delivery.get("UNROUTABLE", 0)
    assert page.number("funnel", "ENQUEUED") == counts["ingested"]

    # Each stage's wall and CPU time, as summary.json has them (#19: CPU per request).
    stages = ("load", "plan", "send", "track", "results")
    assert set(summary["timings"]) == set(summary["cpu_seconds"]) == set(stages)
    for stage in stages:
        assert page.data["cpu"][stage] == _seconds(summary["cpu_seconds"][stage]), stage

    # Jobs, duplicates, throughput.
    for job in summary["jobs"]:
        assert job["job_id"] in page.text
        assert job["status"] in page.text
    assert page.number("count", "duplicate_rows") == counts["duplicates"]
    first_group = sent_run.plan_info.duplicate_groups[0]
    assert first_group["recipient"] in page.text
    assert "users acknowledged per second" in text
    assert text.count("<svg") >= 4  # rejects, statuses, funnel, throughput

    # Example rejects show row numbers and reason codes, never personal data in clear.
    rejects = sent_run.read_rejects()
    first = rejects.sort("row_number").row(0, named=True)
    assert f"{first['row_number']:,}" in page.text
    assert "bad_email" in page.text and "no_address" in page.text
    assert_no_clear_emails(text)
    assert "not-an-email" not in text  # a rejected (invalid) address is masked as well

    assert_self_contained(text, page)
    assert "read from run database" in page.text


def test_report_to_another_path(
    sent_run: bulkbatch.Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = write_report(str(sent_run.path), tmp_path / "deep" / "r.html")
    assert capsys.readouterr() == ("", ""), "library code must not print"
    assert out == tmp_path / "deep" / "r.html"
    assert Page(out.read_text(encoding="utf-8")).title.endswith(sent_run.run_id)
    assert not list(out.parent.glob(".*tmp"))


def test_report_when_the_database_is_locked(sent_run: bulkbatch.Run, tmp_path: Path) -> None:
    """Another process holds run.duckdb: the report comes from the files and says so."""
    copy = tmp_path / "locked"
    shutil.copytree(sent_run.path, copy)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(copy / "run.duckdb"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        text = write_report(copy).read_text(encoding="utf-8")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    page = Page(text)
    assert "could not be opened" in page.text and "Parquet and JSON files" in page.text
    summary = sent_run.summary()
    for key, value in summary["counts"].items():
        assert page.number("count", key) == value
    assert page.number("funnel", "DELIVERED") == summary["delivery"]["DELIVERED"]
    assert "Throughput needs the batch ledger" in page.text
    assert_no_clear_emails(text)
    assert_self_contained(text, page)


def test_failed_accounting_shows_a_failed_badge(sent_run: bulkbatch.Run, tmp_path: Path) -> None:
    copy = tmp_path / "failed"
    shutil.copytree(sent_run.path, copy)
    summary = orjson.loads((copy / "summary.json").read_bytes())
    summary["accounting_ok"] = False
    summary["problems"] = ["1983 rows are ingested but Courier reports 1982 users received"]
    (copy / "summary.json").write_bytes(orjson.dumps(summary))
    page = Page(write_report(copy).read_text(encoding="utf-8"))
    assert page.data["accounting"]["badge"] == "failed"
    assert "FAILED" in page.text and "Courier reports 1982 users received" in page.text


def test_report_without_delivery_data_says_how_to_get_it(
    sent_run: bulkbatch.Run, tmp_path: Path
) -> None:
    copy = tmp_path / "nomessages"
    shutil.copytree(sent_run.path, copy)
    con = duckdb.connect(str(copy / "run.duckdb"))
    con.execute("DELETE FROM messages")
    con.execute("DROP TABLE IF EXISTS delivery")  # derived from messages (and webhooks)
    con.close()
    page = Page(write_report(copy).read_text(encoding="utf-8"))
    assert "No delivery data" in page.text
    assert f"bulkbatch results {copy} --messages" in page.text
    assert "funnel" not in page.data


# -- earlier stages and bad input -----------------------------------------------------


def test_report_of_a_plan_only_run(plan_run: bulkbatch.Run) -> None:
    text = write_report(plan_run.path).read_text(encoding="utf-8")
    page = Page(text)
    info = plan_run.plan_info
    assert page.title == f"bulkbatch report: {plan_run.run_id}"
    for section in SECTIONS:
        assert section in page.sections
    assert page.number("count", "input_rows") == info.rows_read
    assert page.number("count", "to_send") == info.to_send
    assert page.number("count", "duplicates") == info.duplicates
    assert page.number("count", "rejected") == info.rejected
    assert page.data["accounting"]["badge"] == "ok"
    assert {k: page.number("reason", k) for k in page.data["reason"]} == info.rejected_by_reason
    assert page.text.count("Not sent yet") >= 3  # statuses, delivery, throughput
    assert "planned, not sent yet" in page.text
    # Resuming a run that 'bulkbatch plan' started only plans: the page said to send it so.
    words = " ".join(page.text.split())
    assert "bulkbatch resume" not in words
    assert "send it with bulkbatch send and the same input and options" in words
    assert_no_clear_emails(text)
    assert_self_contained(text, page)


def test_report_escapes_and_masks_hostile_values(tmp_path: Path) -> None:
    src = tmp_path / "hostile.csv"
    src.write_text(
        "user_id,email,phone_number\n"
        "ok1,ok1@example.com,\n"
        "<script>alert(1)</script>,a1@example.com,\n"  # a duplicate group shows the recipient
        "<script>alert(1)</script>,a2@example.com,\n"
        "<b>bold</b>,nope,+1 555 010 9999\n"  # bad_email: an example row shows the keys
        ',"carol.<i>@",\n',
        encoding="utf-8",
    )
    run = bulkbatch.plan(str(src), event="welcome", run_dir=tmp_path / "runs" / "hostile")
    text = write_report(run.path).read_text(encoding="utf-8")
    page = Page(text)
    assert page.tags["script"] == 0 and page.tags["b"] == 0 and page.tags["i"] == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    for secret in ("ok1@example.com", "a1@example.com", "a2@example.com", "carol", "nope"):
        assert secret not in text, secret
    assert "5550109999" not in text.replace(" ", "")
    assert "***99" in page.text and "c***@" in page.text


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(StateError) as missing:
        write_report(tmp_path / "nope")
    with pytest.raises(StateError) as empty:
        write_report(tmp_path)
    for exc in (missing.value, empty.value):
        assert "\n" not in str(exc)
        assert "runs/<run-id>" in str(exc)
    assert "no state.json" in str(empty.value)
    assert not (tmp_path / "report.html").exists()


def test_masking() -> None:
    assert mask_value("jane.doe@example.com") == "j***@example.com"
    assert mask_value("email:jane@example.org") == "email:j***@example.org"
    assert mask_value("phone:+15551234567") == "phone:***67"
    assert mask_value("+1 (555) 123-4567") == "***67"
    assert mask_value("u00042") == "u00042"
    assert mask_value("not-an-email", "email") == "n***"
    assert mask_value(None) == ""
    assert (
        mask_text('e-mail "two@@example.com" does not look like an e-mail address')
        == 'e-mail "t***@@example.com" does not look like an e-mail address'
    )
    assert mask_text('bad "jane.doe@"') == 'bad "j***@"'
    assert mask_text("ingest error for bob@example.com") == "ingest error for b***@example.com"


def test_throughput_bins_stay_bounded() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE batches (users INTEGER, acked_at TIMESTAMP)")
    start = datetime(2026, 1, 1, 3, 0, 0, 250000)
    rows = [(1000, start + timedelta(seconds=2 * i)) for i in range(3600)]  # 2 hours
    con.executemany("INSERT INTO batches VALUES (?, ?)", rows)
    points, width = _throughput(con)
    assert len(points) <= 240 and width == 30
    assert sum(u for _, u in points) == 3600 * 1000
    assert points[0][0] == start.replace(microsecond=0)
    con.execute("DELETE FROM batches")
    con.execute(
        "INSERT INTO batches VALUES (10, ?), (20, ?)", [start, start + timedelta(seconds=3)]
    )
    points, width = _throughput(con)
    assert width == 1 and [u for _, u in points] == [10, 0, 0, 20]


# -- a real browser -------------------------------------------------------------------


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_report_renders_in_headless_chromium(
    sent_report: tuple[Path, str, Page], tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        reason = "chromium not installed: checked structurally only"
        print(reason)
        pytest.skip(reason)
    path = sent_report[0]
    shot = tmp_path / "r.png"
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 2000)
    assert len(data) > 30_000, "the screenshot is (almost) blank"

    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(shot))
    # Not one flat colour: text, tables and the coloured badge and bars were drawn.
    assert pixels.std() > 0.05
    green = (pixels[..., 1] > 0.5) & (pixels[..., 0] < 0.3) & (pixels[..., 2] < 0.4)
    assert green.sum() > 200, "the green OK badge / DELIVERED bar is not visible"


def test_report_shows_the_plans_notes_beside_its_warnings(tmp_path: Path) -> None:
    """The notes (columns nothing sends, phones sent as given) were in state.json only."""
    src = tmp_path / "notes.csv"
    src.write_text("user_id,email,first_name\nu1,u1@x.com,Ann\nu2,,Bob\n", encoding="utf-8")
    run = bulkbatch.plan(str(src), event="welcome", run_dir=tmp_path / "runs" / "notes")
    page = Page(write_report(run.path).read_text(encoding="utf-8"))
    assert "warnings" in page.sections
    words = " ".join(page.text.split())
    assert "1 input column(s) are not sent: first_name" in words
    assert "have no profile.email" in words
