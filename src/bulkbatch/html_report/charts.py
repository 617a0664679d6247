"""Inline SVG charts: horizontal bars (rejects, statuses, the funnel) and throughput over
time. No script and no external resource."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from bulkbatch.html_report.markup import _e

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
