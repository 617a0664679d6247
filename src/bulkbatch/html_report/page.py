"""The whole page: the stylesheet and the sections in order, as one HTML document."""

from __future__ import annotations

from datetime import UTC, datetime

from bulkbatch.html_report.facts import _Facts
from bulkbatch.html_report.markup import _e
from bulkbatch.html_report.sections import (
    _accounting,
    _delivery,
    _duplicates,
    _header,
    _jobs,
    _rejects,
    _statuses,
    _throughput_section,
    _timings,
    _warnings,
)

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
