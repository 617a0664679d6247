"""``bulkbatch report RUN_DIR``: one self-contained HTML page about a run.

What a person opens the morning after a scheduled send: the run and its jobs, when each
stage finished and how long it took, the accounting (``input = ingested + duplicates +
rejected (+ skipped)``) with an OK/FAILED badge, rejects by reason, duplicate groups, bulk
statuses, the delivery funnel, throughput over time from the batch ledger, and a few
rejected rows.

The page has inline CSS and inline SVG charts only: no script, no external resource, so it
can be mailed or archived as one file. Everything that comes from data is HTML-escaped, and
personal data is masked: e-mail addresses show as ``j***@example.com`` and phone numbers as
``***42``, also inside reject reasons.

Data is read with DuckDB: the run database read-only; when another process holds it (a send
in progress), from ``summary.json``, ``state.json`` and the Parquet files, and the report
says so.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

from bulkbatch.errors import StateError
from bulkbatch.files import atomic_write_bytes
from bulkbatch.state import DB_FILE, RunState, open_run_db

__all__ = ["mask_email", "mask_text", "mask_value", "write_report"]

_EXAMPLES = 10
_DUP_GROUPS = 5
_MAX_BINS = 240
_DELIVERY_NOTE = "bulkbatch results {run_dir} --webhooks STORE --reconcile"
_DELIVERY_NOTE_SMALL = "bulkbatch results {run_dir} --messages"


# -- masking --------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"[^\s\"'<>@,;:()\[\]]*@[^\s\"'<>,;()\[\]]*")
_PHONE_RE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_QUOTED_RE = re.compile(r"\"([^\"]*)\"")


def mask_email(value: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com`` (the domain stays, the person goes)."""
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain}"


def _mask_phone(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    return "***" + digits[-2:]


def mask_value(value: object, column: str = "") -> str:
    """A key-column value as the report may show it: e-mails and phone numbers masked.

    A value in a column named like ``*mail*`` or ``*phone*`` is always masked, valid or not;
    ``email:``/``phone:`` recipients keep their prefix. Other values (user ids, list ids) are
    shown as they are: they are the keys already in ``results.parquet``.
    """
    if value is None:
        return ""
    text = str(value)
    name = column.lower()
    if "mail" in name and "@" not in text:
        return f"{text[:1]}***" if text else ""
    if "phone" in name:
        return _mask_phone(text) if text else ""
    for prefix in ("email:", "phone:"):
        if text.startswith(prefix):
            return prefix + mask_value(text[len(prefix) :])
    if "@" in text:
        return mask_email(text)
    if _PHONE_RE.fullmatch(text.strip()):
        return _mask_phone(text)
    return text


def mask_text(text: str) -> str:
    """Free text (a reject reason, an error) with quoted values, e-mails and phones masked."""

    def quoted(m: re.Match[str]) -> str:
        inner = m.group(1)
        if "@" in inner or _PHONE_RE.fullmatch(inner.strip()):
            return f'"{mask_value(inner)}"'
        return f'"{inner[:1]}***"' if inner else '""'

    text = _QUOTED_RE.sub(quoted, text)
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: _mask_phone(m.group(0)), text)


# -- the facts ------------------------------------------------------------------------


@dataclass
class _Facts:
    """Everything the page shows, gathered from the run directory."""

    state: RunState
    source: str = "run database"
    source_note: str | None = None
    summary: dict[str, Any] | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int | None = None
    dup_groups: list[tuple[str, int, list[int]]] = field(default_factory=list)
    statuses: dict[str, int] | None = None
    delivery: dict[str, int] | None = None
    funnel: list[tuple[str, int]] | None = None
    to_deliver: dict[str, float] | None = None
    """Seconds from enqueued to delivered: p50, p90, p99, max."""
    failure_reasons: dict[str, int] = field(default_factory=dict)
    throughput: list[tuple[datetime, int]] | None = None
    bin_seconds: int = 1
    throughput_note: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    example_columns: list[str] = field(default_factory=list)

    @property
    def planned(self) -> bool:
        return self.state.done("plan")

    @property
    def sent(self) -> bool:
        return bool(self.state.jobs) and any(j.job_id for j in self.state.jobs)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {str(r[0]) for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _counts(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    rows = con.execute(sql).fetchall()
    return {str(k): int(v) for k, v in sorted(rows, key=lambda r: (-int(r[1]), str(r[0])))}


def _funnel(
    con: duckdb.DuckDBPyConnection, relation: str, where: str = ""
) -> list[tuple[str, int]]:
    row = con.execute(
        "SELECT count(*) FILTER (WHERE enqueued_at IS NOT NULL OR delivery_status IS NOT NULL), "
        "count(*) FILTER (WHERE sent_at IS NOT NULL), "
        "count(*) FILTER (WHERE delivered_at IS NOT NULL), "
        "count(*) FILTER (WHERE opened_at IS NOT NULL), "
        "count(*) FILTER (WHERE clicked_at IS NOT NULL) "
        f"FROM {relation} {where}"
    ).fetchone()
    assert row is not None
    steps = [("ENQUEUED", int(row[0])), ("SENT", int(row[1])), ("DELIVERED", int(row[2]))]
    if row[3]:
        steps.append(("OPENED", int(row[3])))
    if row[4]:
        steps.append(("CLICKED", int(row[4])))
    return steps


def _delivery_times(
    con: duckdb.DuckDBPyConnection, relation: str, where: str = ""
) -> tuple[dict[str, float] | None, dict[str, int]]:
    """Time to deliver (p50/p90/p99/max seconds) and the reasons of failed deliveries."""
    cond = f"{where} {'AND' if where else 'WHERE'}"
    row = con.execute(
        "SELECT quantile_cont(s, [0.5, 0.9, 0.99]), max(s), count(s) FROM (SELECT "
        "epoch(delivered_at) - epoch(enqueued_at) AS s FROM "
        f"{relation} {cond} delivered_at IS NOT NULL AND enqueued_at IS NOT NULL)"
    ).fetchone()
    times = None
    if row and row[2]:
        p50, p90, p99 = row[0]
        times = {"p50": p50, "p90": p90, "p99": p99, "max": row[1]}
    reasons = _counts(
        con,
        f"SELECT delivery_status || coalesce(': ' || delivery_reason, ''), count(*) FROM "
        f"{relation} {cond} delivery_status IN ('UNDELIVERABLE', 'UNROUTABLE') GROUP BY 1",
    )
    return times, reasons


def _throughput(
    con: duckdb.DuckDBPyConnection,
) -> tuple[list[tuple[datetime, int]], int]:
    """Users acknowledged per time bin (1 s, or wider so a long send has at most _MAX_BINS)."""
    span = con.execute(
        "SELECT min(acked_at), max(acked_at), count(*) FROM batches WHERE acked_at IS NOT NULL"
    ).fetchone()
    if not span or not span[2]:
        return [], 1
    first, last = span[0], span[1]
    seconds = max(1, math.ceil((last - first).total_seconds()) + 1)
    width = max(1, math.ceil(seconds / _MAX_BINS))
    start = first.replace(microsecond=0)
    rows = con.execute(
        "SELECT CAST(floor(epoch(acked_at - ?::TIMESTAMP) / ?) AS BIGINT) AS b, sum(users) "
        "FROM batches WHERE acked_at IS NOT NULL GROUP BY b ORDER BY b",
        [start, width],
    ).fetchall()
    by_bin = {int(b): int(n) for b, n in rows}
    bins = max(by_bin) + 1
    return [(start + timedelta(seconds=i * width), by_bin.get(i, 0)) for i in range(bins)], width


def _key_columns(state: RunState, available: Sequence[str]) -> list[str]:
    keys = [str(c) for c in state.plan.get("key_columns", ())]
    return [c for c in keys if c in available]


def _from_db(facts: _Facts, con: duckdb.DuckDBPyConnection) -> None:
    state = facts.state
    tables = _tables(con)
    if "rejects" in tables and not facts.rejected_by_reason:
        facts.rejected_by_reason = _counts(
            con, "SELECT reason_code, count(*) FROM rejects GROUP BY 1"
        )
    if "duplicates" in tables:
        n = con.execute("SELECT count(*) FROM duplicates").fetchone()
        facts.duplicates = int(n[0]) if n else 0
        facts.dup_groups = [
            (str(r), int(k), [int(x) for x in rows])
            for r, k, rows in con.execute(
                "SELECT recipient, kept_row_number, list(row_number ORDER BY row_number) "
                "FROM duplicates GROUP BY recipient, kept_row_number "
                f"ORDER BY least(kept_row_number, min(row_number)) LIMIT {_DUP_GROUPS}"
            ).fetchall()
        ]
    if "user_pages" in tables and facts.statuses is None:
        statuses = _counts(
            con,
            "SELECT coalesce(status, 'PENDING'), count(*) FROM (SELECT job_no, recipient, "
            "max(status) AS status FROM user_pages GROUP BY 1, 2) GROUP BY 1",
        )
        facts.statuses = statuses or None
    if "delivery" in tables:  # webhooks and/or GET /messages, merged (stages.delivery)
        has = con.execute("SELECT count(*) FROM delivery").fetchone()
        if has and has[0]:
            facts.delivery = _counts(
                con,
                "SELECT coalesce(delivery_status, 'UNKNOWN'), count(*) FROM delivery GROUP BY 1",
            )
            facts.funnel = _funnel(con, "delivery")
            facts.to_deliver, facts.failure_reasons = _delivery_times(con, "delivery")
    if "batches" in tables:
        facts.throughput, facts.bin_seconds = _throughput(con)
    # A few rejected rows: the row number, the reason, and the key columns (masked).
    if "rejects" in tables and "inputs" in tables:
        keys = _key_columns(state, _columns(con, "inputs"))
        facts.example_columns = keys
        select_keys = "".join(f", i.{_q(c)}" for c in keys)
        rows = con.execute(
            f"SELECT r.row_number, r.reason_code, r.reason{select_keys} FROM rejects r "
            f"LEFT JOIN inputs i USING (row_number) ORDER BY r.row_number LIMIT {_EXAMPLES}"
        ).fetchall()
        if "ingest_errors" in tables and "plan" in tables and len(rows) < _EXAMPLES:
            rows += con.execute(
                f"SELECT p.row_number, 'ingest_error', 'ingest error: ' || e.error{select_keys} "
                "FROM ingest_errors e JOIN plan p ON p.recipient = e.recipient "
                "LEFT JOIN inputs i ON i.row_number = p.row_number "
                f"ORDER BY p.row_number LIMIT {_EXAMPLES - len(rows)}"
            ).fetchall()
        facts.examples = [_example(r, keys) for r in rows]


def _example(row: Sequence[Any], keys: Sequence[str]) -> dict[str, Any]:
    return {
        "row_number": int(row[0]),
        "reason_code": str(row[1] or ""),
        "reason": mask_text(str(row[2] or "")),
        "keys": {k: mask_value(v, k) for k, v in zip(keys, row[3:], strict=False)},
    }


def _from_files(facts: _Facts, run_dir: Path) -> None:
    """The same facts from the Parquet and JSON files (the database is locked)."""
    state = facts.state
    plan = state.plan
    if not facts.rejected_by_reason:
        facts.rejected_by_reason = dict(plan.get("rejected_by_reason", {}))
    facts.duplicates = int(plan["duplicates"]) if "duplicates" in plan else None
    facts.dup_groups = [
        (str(g["recipient"]), int(g["kept"]), [int(x) for x in g["rows"] if int(x) != g["kept"]])
        for g in plan.get("duplicate_groups", [])[:_DUP_GROUPS]
    ]
    facts.throughput_note = (
        "Throughput needs the batch ledger in the run database, which is in use by another "
        "process; run the report again when the send has finished."
    )
    con = duckdb.connect()
    try:
        results = run_dir / "results.parquet"
        rejects = run_dir / "rejects.parquet"
        if results.exists():
            rel = f"read_parquet({_lit(results)})"
            cols = _columns(con, rel)
            if facts.statuses is None and "status" in cols:
                facts.statuses = (
                    _counts(
                        con,
                        f"SELECT status, count(*) FROM {rel} WHERE outcome = 'ingested' "
                        "AND status IS NOT NULL GROUP BY 1",
                    )
                    or None
                )
            if "delivery_status" in cols:
                delivery = _counts(
                    con,
                    f"SELECT delivery_status, count(*) FROM {rel} WHERE outcome = 'ingested' "
                    "AND delivery_status IS NOT NULL GROUP BY 1",
                )
                if delivery:
                    facts.delivery = delivery
                    facts.funnel = _funnel(con, rel, "WHERE outcome = 'ingested'")
                    if "delivered_at" in cols:
                        facts.to_deliver, facts.failure_reasons = _delivery_times(
                            con, rel, "WHERE outcome = 'ingested'"
                        )
            keys = _key_columns(state, cols)
            facts.example_columns = keys
            select_keys = "".join(f", {_q(c)}" for c in keys)
            rows = con.execute(
                f"SELECT row_number, reason_code, reason{select_keys} FROM {rel} "
                f"WHERE outcome = 'rejected' ORDER BY row_number LIMIT {_EXAMPLES}"
            ).fetchall()
            facts.examples = [_example(r, keys) for r in rows]
        elif rejects.exists():
            rel = f"read_parquet({_lit(rejects)})"
            keys = _key_columns(state, _columns(con, rel))
            facts.example_columns = keys
            select_keys = "".join(f", {_q(c)}" for c in keys)
            rows = con.execute(
                f"SELECT row_number, reason_code, reason{select_keys} FROM {rel} "
                f"ORDER BY row_number LIMIT {_EXAMPLES}"
            ).fetchall()
            facts.examples = [_example(r, keys) for r in rows]
    finally:
        con.close()


def _gather(run_dir: Path) -> _Facts:
    state = RunState.load(run_dir)
    facts = _Facts(state=state)
    facts.summary = _read_json(run_dir / "summary.json")
    if facts.summary:
        facts.rejected_by_reason = dict(facts.summary.get("rejected_by_reason") or {})
        facts.statuses = dict(facts.summary.get("statuses") or {}) or None
    con: duckdb.DuckDBPyConnection | None = None
    if (run_dir / DB_FILE).exists():
        try:
            con = open_run_db(run_dir, read_only=True)
        except StateError as exc:
            facts.source = "files (summary.json, state.json, Parquet)"
            facts.source_note = (
                f"The run database could not be opened ({exc}); this report was built from "
                "the run's Parquet and JSON files instead, so some sections are incomplete."
            )
    else:
        facts.source = "files (summary.json, state.json, Parquet)"
        facts.source_note = f"{run_dir} has no {DB_FILE}; this report was built from its files."
    if con is not None:
        try:
            _from_db(facts, con)
        finally:
            con.close()
    else:
        _from_files(facts, run_dir)
    return facts


# -- SVG charts -----------------------------------------------------------------------

_PALETTE = {
    "DELIVERED": "#16a34a",
    "SENT": "#0ea5e9",
    "ENQUEUED": "#6366f1",
    "OPENED": "#14b8a6",
    "CLICKED": "#0d9488",
    "UNDELIVERABLE": "#dc2626",
    "UNROUTABLE": "#f97316",
    "ERROR": "#dc2626",
    "PENDING": "#a3a3a3",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _hbars(
    items: Sequence[tuple[str, int]],
    *,
    label: str,
    total: int | None = None,
    color: str = "#3b82f6",
) -> str:
    """A horizontal bar chart as inline SVG (one bar per item, with the count and share)."""
    if not items:
        return ""
    bar_h, gap, label_w, value_w, width = 22, 8, 170, 130, 720
    plot_w = width - label_w - value_w
    height = len(items) * (bar_h + gap) + gap
    top = max(v for _, v in items) or 1
    out = [
        (
            f'<svg class="chart" role="img" aria-label="{_e(label)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            f"<title>{_e(label)}</title>"
        )
    ]
    for i, (name, value) in enumerate(items):
        y = gap + i * (bar_h + gap)
        w = 0 if value <= 0 else max(2.0, plot_w * value / top)
        fill = _PALETTE.get(name, color)
        share = f" ({100 * value / total:.1f} %)" if total else ""
        out.append(
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" '
            f'class="lbl">{_e(name)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" '
            f'fill="{fill}"><title>{_e(name)}: {value:,}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}" class="val">'
            f"{value:,}{share}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _throughput_svg(points: Sequence[tuple[datetime, int]], bin_seconds: int) -> str:
    """Users acknowledged per second over time: bars per bin with a line over them."""
    width, height = 720, 260
    left, right, top, bottom = 64, 16, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    rates = [users / bin_seconds for _, users in points]
    y_max = _nice_ceiling(max(rates) if rates else 1.0)
    n = len(points)
    slot = plot_w / max(n, 1)
    out = [
        (
            '<svg class="chart" role="img" aria-label="users acknowledged per second" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            "<title>users acknowledged per second</title>"
        )
    ]
    for k in range(5):
        value = y_max * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{value:,.0f}</text>"
        )
    line: list[str] = []
    for i, rate in enumerate(rates):
        h = plot_h * rate / y_max
        x = left + i * slot
        bar_w = min(max(slot * 0.8, 1.0), 48.0)
        out.append(
            f'<rect x="{x + (slot - bar_w) / 2:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar_w:.1f}" height="{h:.1f}" fill="#93c5fd">'
            f"<title>{_e(points[i][0].strftime('%H:%M:%S'))} UTC: {rate:,.1f} users/s</title>"
            "</rect>"
        )
        line.append(f"{x + slot / 2:.1f},{top + plot_h - h:.1f}")
    if len(line) > 1:
        out.append(
            f'<polyline points="{" ".join(line)}" fill="none" stroke="#1d4ed8" stroke-width="2"/>'
        )
    ticks = sorted({0, n // 2, n - 1}) if n > 2 else list(range(n))
    for i in ticks:
        x = left + i * slot + slot / 2
        offset = i * bin_seconds
        out.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="tick">'
            f"{_e(points[i][0].strftime('%H:%M:%S'))}</text>"
            f'<text x="{x:.1f}" y="{top + plot_h + 30}" text-anchor="middle" class="tick">'
            f"+{offset:,} s</text>"
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'class="axis"/></svg>'
    )
    return "".join(out)


# -- HTML -----------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2937;
  margin: 0; background: #f3f4f6; }
main { max-width: 1000px; margin: 0 auto; padding: 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header h1 code { font-size: 20px; background: none; padding: 0; }
header p { margin: 2px 0; color: #4b5563; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 16px 20px;
  margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 10px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid #f0f0f0;
  vertical-align: top; }
th { color: #6b7280; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: #f3f4f6; padding: 1px 4px; border-radius: 3px; }
.badge { display: inline-block; padding: 3px 12px; border-radius: 999px; color: #fff;
  font-weight: 700; letter-spacing: .04em; }
.badge.ok { background: #16a34a; }
.badge.failed { background: #dc2626; }
.badge.pending { background: #6b7280; }
.note { color: #6b7280; font-style: italic; }
.warn { background: #fffbeb; border-left: 4px solid #f59e0b; padding: 8px 12px; }
.equation { font-size: 15px; margin: 8px 0; }
.chart { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.chart .lbl, .chart .val, .chart .tick { font: 12px system-ui, sans-serif; fill: #374151; }
.chart .grid { stroke: #e5e7eb; }
.chart .axis { stroke: #9ca3af; }
footer { color: #9ca3af; font-size: 12px; text-align: center; margin: 24px 0; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""


def _when(epoch: float | None) -> str:
    if not epoch:
        return "–"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:02.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """``rows`` are already-escaped cell HTML; ``numeric`` are right-aligned column indexes."""
    head = "".join(
        f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _not_sent(what: str) -> str:
    return f'<p class="note">Not sent yet: {_e(what)}.</p>'


def _header(f: _Facts) -> str:
    s = f.state
    msg = s.message
    what = (
        f"event {msg['event']}"
        if msg.get("event")
        else "template " + str(msg.get("template") or msg.get("message", {}).get("template", ""))
    )
    if not msg:
        what = "not planned yet"
    channels = msg.get("message", {}).get("routing", {}).get("channels") if msg else None
    where = "in-process emulator" if s.emulator else (s.base_url or "Courier")
    sent_to = f"sent to {where}" if s.done("send") else f"to be sent to {where}"
    stage = (
        "finished"
        if all(s.done(x) for x in ("load", "plan", "send", "track", "results"))
        else (
            "sent, not finished"
            if s.done("send")
            else ("planned, not sent yet" if s.done("plan") else "started")
        )
    )
    lines = [
        f"<h1>Run <code>{_e(s.run_id)}</code></h1>",
        f"<p>{_e(what)}"
        + (f" via {_e(', '.join(str(c) for c in channels))}" if channels else "")
        + f" · {_e(sent_to)} · <strong>{_e(stage)}</strong></p>",
        f"<p>Started {_e(_when(s.created_at))}"
        + (f" · last stage at {_e(_when(max(s.stages.values())))}" if s.stages else "")
        + "</p>",
        f"<p>Input: {_e(', '.join(str(x) for x in s.inputs.get('files', [])) or '–')}</p>",
    ]
    if f.source_note:
        lines.append(f'<p class="warn">{_e(f.source_note)}</p>')
    return "<header>" + "".join(lines) + "</header>"


def _accounting(f: _Facts) -> str:
    plan = f.state.plan
    if f.summary:
        c = f.summary.get("counts", {})
        keys = (
            "input_rows", "ingested", "duplicates", "rejected", "filtered", "skipped", "canceled",
        )  # fmt: skip
        values = {k: int(c.get(k, 0)) for k in keys}
        parts = sum(values[k] for k in keys[1:])
        ok = bool(f.summary.get("accounting_ok")) and parts == values["input_rows"]
        labels = {
            "input_rows": "input rows",
            "ingested": "ingested",
            "duplicates": "duplicates",
            "rejected": "rejected",
            "filtered": "filtered (--where/--sql)",
            "skipped": "skipped (--once-per)",
            "canceled": "canceled (never sent)",
        }
        rows = [[_e(labels[k]), f'<span data-count="{k}">{values[k]:,}</span>'] for k in keys]
        eq = (
            f"{values['input_rows']:,} = {values['ingested']:,} ingested + "
            f"{values['duplicates']:,} duplicates + {values['rejected']:,} rejected"
            + "".join(
                f" + {values[k]:,} {k}" for k in ("filtered", "skipped", "canceled") if values[k]
            )
        )
        badge = (
            '<span class="badge ok" data-accounting="ok">OK</span>'
            if ok
            else '<span class="badge failed" data-accounting="failed">FAILED</span>'
        )
        problems = "".join(
            f"<li>{_e(mask_text(str(p)))}</li>" for p in f.summary.get("problems", [])
        )
        if not ok and not problems:
            total = values["input_rows"]
            problems = f"<li>{_e(f'the parts add up to {parts:,}, not {total:,}')}</li>"
        body = (
            f'<p>{badge} <span class="equation">{_e(eq)}</span></p>'
            + (f'<ul class="warn">{problems}</ul>' if problems else "")
            + _table(["", "rows"], rows, {1})
        )
        return _section("accounting", "Accounting", body)
    if not plan:
        return _section("accounting", "Accounting", '<p class="note">Not planned yet.</p>')
    values = {k: int(plan.get(k, 0)) for k in ("rows_read", "to_send", "duplicates", "rejected")}
    ok = values["rows_read"] == values["to_send"] + values["duplicates"] + values["rejected"]
    badge = (
        '<span class="badge ok" data-accounting="ok">OK</span>'
        if ok
        else '<span class="badge failed" data-accounting="failed">FAILED</span>'
    )
    eq = (
        f"{values['rows_read']:,} = {values['to_send']:,} to send + "
        f"{values['duplicates']:,} duplicates + {values['rejected']:,} rejected"
    )
    rows = [
        [_e("input rows"), f'<span data-count="input_rows">{values["rows_read"]:,}</span>'],
        [_e("to send"), f'<span data-count="to_send">{values["to_send"]:,}</span>'],
        [_e("ingested"), '<span class="note">not sent yet</span>'],
        [_e("duplicates"), f'<span data-count="duplicates">{values["duplicates"]:,}</span>'],
        [_e("rejected"), f'<span data-count="rejected">{values["rejected"]:,}</span>'],
    ]
    acked = f.state.progress.get("users_acked")
    note = (
        f'<p class="note">The plan adds up; results are not written yet'
        f"{f' ({int(acked):,} users acknowledged so far)' if acked else ''}: "
        f"send or finish it with <code>bulkbatch resume {_e(f.state.run_dir)}</code>.</p>"
    )
    body = f'<p>{badge} <span class="equation">{_e(eq)}</span></p>{note}' + _table(
        ["", "rows"], rows, {1}
    )
    return _section("accounting", "Accounting", body)


def _jobs(f: _Facts) -> str:
    s = f.state
    if not s.jobs:
        text = "Not planned yet." if not s.done("plan") else "No job: nobody to send to."
        return _section("jobs", "Jobs", f'<p class="note">{_e(text)}</p>')
    rows = [
        [
            f"<code>{_e(j.job_id)}</code>"
            if j.job_id
            else '<span class="note">not sent yet</span>',
            _e(j.status or "–"),
            _n(j.users),
            _n(j.received),
            _n(j.enqueued),
            _n(j.failures),
        ]
        for j in s.jobs
    ]
    body = _table(
        ["job id", "status", "users", "received", "enqueued", "failures"], rows, {2, 3, 4, 5}
    )
    client = s.progress.get("client") or {}
    if client:
        codes = ", ".join(
            f"{_e(k)}: {int(v):,}" for k, v in sorted(client.get("status_counts", {}).items())
        )
        body += (
            f"<p>API requests {int(client.get('requests', 0)):,} · retries "
            f"{int(client.get('retries', 0)):,} · throttled (429) "
            f"{int(client.get('throttled', 0)):,}" + (f" · HTTP {codes}" if codes else "") + "</p>"
        )
    return _section("jobs", "Jobs", body)


def _timings(f: _Facts) -> str:
    s = f.state
    order = ("load", "plan", "send", "track", "results")
    rows = []
    for stage in order:
        done = s.done(stage)
        rows.append(
            [
                _e(stage),
                _e(_when(s.stages.get(stage))) if done else '<span class="note">not yet</span>',
                _e(_seconds(s.timings.get(stage))) if stage in s.timings else "–",
            ]
        )
    total = sum(s.timings.values())
    rows.append(["<strong>total</strong>", "", f"<strong>{_e(_seconds(total))}</strong>"])
    return _section("timings", "Stages", _table(["stage", "finished", "took"], rows, {2}))


def _rejects(f: _Facts) -> str:
    if not f.planned:
        return _section("rejects", "Rejects by reason", '<p class="note">Not planned yet.</p>')
    items = list(f.rejected_by_reason.items())
    if not items:
        return _section("rejects", "Rejects by reason", "<p>No rows were rejected.</p>")
    total = sum(v for _, v in items)
    rows = [
        [f"<code>{_e(k)}</code>", f'<span data-reason="{_e(k)}">{v:,}</span>'] for k, v in items
    ]
    rows.append(["<strong>total</strong>", f"<strong>{total:,}</strong>"])
    body = _table(["reason", "rows"], rows, {1}) + _hbars(
        items, label="rejected rows by reason", total=total, color="#f59e0b"
    )
    if f.examples:
        headers = ["row", "reason code", "reason", *f.example_columns]
        ex_rows = [
            [
                f"{e['row_number']:,}",
                f"<code>{_e(e['reason_code'])}</code>",
                _e(e["reason"]),
                *(_e(e["keys"].get(c, "")) for c in f.example_columns),
            ]
            for e in f.examples
        ]
        body += (
            f'<h3 id="examples">First {len(f.examples)} rejected rows</h3>'
            '<p class="note">Row numbers are 1-based input rows; e-mail addresses and phone '
            "numbers are masked.</p>" + _table(headers, ex_rows, {0})
        )
    return _section("rejects", "Rejects by reason", body)


def _duplicates(f: _Facts) -> str:
    if not f.planned:
        return _section("duplicates", "Duplicates", '<p class="note">Not planned yet.</p>')
    n = f.duplicates if f.duplicates is not None else int(f.state.plan.get("duplicates", 0))
    body = (
        f'<p><span data-count="duplicate_rows">{n:,}</span> rows were dropped because another '
        "row has the same recipient (Courier's dedupe key).</p>"
    )
    if f.dup_groups:
        rows = [
            [
                f"<code>{_e(mask_value(r))}</code>",
                f"{kept:,}",
                _e(", ".join(f"{x:,}" for x in dropped)),
            ]
            for r, kept, dropped in f.dup_groups
        ]
        body += f"<h3>First {len(rows)} groups</h3>" + _table(
            ["recipient", "kept row", "dropped rows"], rows, {1}
        )
    return _section("duplicates", "Duplicates", body)


def _statuses(f: _Facts) -> str:
    title = "Bulk user statuses"
    if not f.sent:
        return _section("statuses", title, _not_sent("no job has been created"))
    if not f.statuses:
        return _section(
            "statuses",
            title,
            '<p class="note">Not tracked yet: finish the run with '
            f"<code>bulkbatch resume {_e(f.state.run_dir)}</code>.</p>",
        )
    items = list(f.statuses.items())
    total = sum(v for _, v in items)
    rows = [[_e(k), f'<span data-status="{_e(k)}">{v:,}</span>'] for k, v in items]
    return _section(
        "statuses",
        title,
        _table(["status", "users"], rows, {1})
        + _hbars(items, label="bulk user statuses", total=total),
    )


def _delivery(f: _Facts) -> str:
    title = "Delivery funnel"
    if not f.sent:
        return _section("delivery", title, _not_sent("there is nothing to deliver"))
    if not f.delivery or not f.funnel:
        cmd = _DELIVERY_NOTE.format(run_dir=f.state.run_dir)
        small = _DELIVERY_NOTE_SMALL.format(run_dir=f.state.run_dir)
        return _section(
            "delivery",
            title,
            '<p class="note">No delivery data in this run. Join Courier\'s delivery webhooks '
            f"(received by <code>bulkbatch webhooks serve</code>) with <code>{_e(cmd)}</code>, "
            f"or, for a small audience, ask for each message with <code>{_e(small)}</code>; "
            "then write the report again.</p>",
        )
    base = f.funnel[0][1] or 1
    failed = [(k, f.delivery.get(k, 0)) for k in ("UNDELIVERABLE", "UNROUTABLE")]
    items = [*f.funnel, *failed]
    rows = [
        [_e(k), f'<span data-funnel="{_e(k)}">{v:,}</span>', f"{100 * v / base:.1f} %"]
        for k, v in items
    ]
    body = (
        "<p>How far the enqueued messages got (a message counts at every step it reached); "
        "UNDELIVERABLE bounced, UNROUTABLE had no channel it could use.</p>"
        + _table(["step", "messages", "of enqueued"], rows, {1, 2})
        + _hbars(items, label="delivery funnel", total=base)
    )
    others = [[_e(k), f"{v:,}"] for k, v in f.delivery.items()]
    body += "<h3>Final delivery status</h3>" + _table(["status", "messages"], others, {1})
    if f.to_deliver:
        cells = [
            [_e(k), f'<span data-deliver="{k}">{_seconds(v)}</span>']
            for k, v in f.to_deliver.items()
        ]
        body += "<h3>Time to deliver (enqueued → delivered)</h3>" + _table(
            ["percentile", "time"], cells, {1}
        )
    if f.failure_reasons:
        reasons = [[_e(mask_text(k)), f"{v:,}"] for k, v in f.failure_reasons.items()]
        body += "<h3>Why messages were not delivered</h3>" + _table(
            ["status: reason", "messages"], reasons, {1}
        )
    return _section("delivery", title, body)


def _throughput_section(f: _Facts) -> str:
    title = "Throughput"
    if f.throughput_note and f.throughput is None:
        return _section("throughput", title, f'<p class="note">{_e(f.throughput_note)}</p>')
    if not f.throughput:
        return _section("throughput", title, _not_sent("no batch has been acknowledged"))
    pts = f.throughput
    users = sum(u for _, u in pts)
    span = len(pts) * f.bin_seconds
    peak = max(u for _, u in pts) / f.bin_seconds
    unit = "second" if f.bin_seconds == 1 else f"{f.bin_seconds:,} seconds"
    body = (
        f"<p>Users acknowledged by Courier per second, from the batch ledger (one bar per "
        f"{_e(unit)}). {users:,} users from {_e(pts[0][0].strftime('%Y-%m-%d %H:%M:%S'))} UTC "
        f"over {_e(_seconds(span))}: {users / span:,.1f} users/s on average, peak "
        f"{peak:,.1f} users/s.</p>" + _throughput_svg(pts, f.bin_seconds)
    )
    return _section("throughput", title, body)


def _warnings(f: _Facts) -> str:
    warnings = [str(w) for w in f.state.plan.get("warnings", [])]
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(mask_text(w))}</li>" for w in warnings)
    return _section("warnings", "Plan warnings", f'<ul class="warn">{items}</ul>')


def _render(f: _Facts) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = "".join(
        [
            _header(f),
            _accounting(f),
            _jobs(f),
            _timings(f),
            _rejects(f),
            _duplicates(f),
            _warnings(f),
            _statuses(f),
            _delivery(f),
            _throughput_section(f),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bulkbatch report: {_e(f.state.run_id)}</title>"
        f"<style>{_CSS}</style></head><body><main>{body}"
        f"<footer>bulkbatch report · generated {_e(generated)} · read from {_e(f.source)}"
        "</footer></main></body></html>\n"
    )


def _write(out: Path, text: str) -> None:
    atomic_write_bytes(out, text.encode("utf-8"), then="choose a writable place with --out")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a self-contained HTML report of the run in ``run_dir``; return its path.

    :param run_dir: a run directory (it holds ``state.json`` and ``run.duckdb``)
    :param out: where to write (default ``<run_dir>/report.html``)
    :raises StateError: when ``run_dir`` is not a run directory, or ``out`` is not writable

    Works at any stage: sections that need a later stage say so. When another process holds
    the run database, the report is built from the run's files and says so.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise StateError(
            f"Run directory not found: {path}. Pass the directory a 'bulkbatch send' or "
            "'bulkbatch plan' created, e.g. 'bulkbatch report runs/<run-id>'."
        )
    if not RunState.exists(path):
        raise StateError(
            f"{path} is not a bulkbatch run directory: it has no state.json. Pass the "
            "directory a 'bulkbatch send' or 'bulkbatch plan' created, e.g. runs/<run-id>."
        )
    facts = _gather(path)
    target = Path(out) if out is not None else path / "report.html"
    text = _render(facts)
    _write(target, text)
    return target
