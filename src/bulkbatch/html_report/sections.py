"""The sections of the page, one function each: header, accounting, jobs, stage timings,
rejects, duplicates, plan warnings, bulk statuses, the delivery funnel and throughput."""

from __future__ import annotations

from bulkbatch.html_report.charts import _hbars, _throughput_svg
from bulkbatch.html_report.facts import _Facts
from bulkbatch.html_report.markup import _e, _n, _not_sent, _seconds, _section, _table, _when
from bulkbatch.html_report.masking import mask_text, mask_value

_DELIVERY_NOTE = "bulkbatch results {run_dir} --webhooks STORE --reconcile"
_DELIVERY_NOTE_SMALL = "bulkbatch results {run_dir} --messages"


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
            "unsent",
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
            "unsent": "unsent (the run stopped first)",
        }
        rows = [[_e(labels[k]), f'<span data-count="{k}">{values[k]:,}</span>'] for k in keys]
        eq = (
            f"{values['input_rows']:,} = {values['ingested']:,} ingested + "
            f"{values['duplicates']:,} duplicates + {values['rejected']:,} rejected"
            + "".join(
                f" + {values[k]:,} {k}"
                for k in ("filtered", "skipped", "canceled", "unsent")
                if values[k]
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
    step = (  # resuming a run 'bulkbatch plan' started only plans
        "send it with <code>bulkbatch send</code> and the same input and options"
        if f.state.plan_only
        else f"send or finish it with <code>bulkbatch resume {_e(f.state.run_dir)}</code>"
    )
    note = (
        f'<p class="note">The plan adds up; results are not written yet'
        f"{f' ({int(acked):,} users acknowledged so far)' if acked else ''}: {step}.</p>"
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
                (
                    f'<span data-cpu="{_e(stage)}">{_e(_seconds(s.cpu[stage]))}</span>'
                    if stage in s.cpu
                    else "–"
                ),
            ]
        )
    total = sum(s.timings.values())
    rows.append(["<strong>total</strong>", "", f"<strong>{_e(_seconds(total))}</strong>", ""])
    headers = ["stage", "finished", "took", "CPU (every thread)"]
    note = (
        '<p class="note">CPU near the time a stage took times the cores: this machine was '
        "the bound. Far below it: the stage waited, on the network or on Courier.</p>"
    )
    return _section("timings", "Stages", _table(headers, rows, {2, 3}) + note)


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
    """What the plan found before sending: its warnings, then its notes."""
    warnings = [str(w) for w in f.state.plan.get("warnings", [])]
    notes = [str(n) for n in f.state.plan.get("notes", [])]
    if not warnings and not notes:
        return ""
    body = ""
    if warnings:
        items = "".join(f"<li>{_e(mask_text(w))}</li>" for w in warnings)
        body += f'<ul class="warn">{items}</ul>'
    if notes:
        body += "<ul>" + "".join(f"<li>{_e(mask_text(n))}</li>" for n in notes) + "</ul>"
    title = (
        "Plan warnings" if not notes else "Plan warnings and notes" if warnings else "Plan notes"
    )
    return _section("warnings", title, body)
