"""Small server-rendered SVG charts for the dashboard (pure: text in, markup out).

No script and no style attribute: the dashboard's Content-Security-Policy allows neither inline
styles nor inline scripts, and SVG presentation attributes (`fill`, `stroke`) are not styles.
Colours come from CSS classes in dashboard.css, so a dark theme changes them in one place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape as _escape

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape(text: str) -> str:
    """Escaped for SVG text and attributes; control characters (not allowed in XML) dropped."""
    return _escape(_CONTROL.sub("", text))


# Stacked from the bottom, in this order; the class names are styled in dashboard.css.
SERIES = ("delivered", "failed", "waiting")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time slot of a target's activity (an hour on the overview)."""

    label: str  # "14:00", shown in the bar's tooltip
    received: int = 0
    delivered: int = 0
    failed: int = 0
    waiting: int = 0

    def value(self, series: str) -> int:
        count: int = getattr(self, series)
        return count


def activity_chart(buckets: Sequence[Bucket], width: int = 240, height: int = 48, title: str = "") -> str:
    """A stacked bar per bucket (delivered, failed, waiting) and a line for received.

    Scaled to the largest bucket, so a quiet target's bars are as readable as a busy one's; the
    numbers beside the chart give the absolute counts. Returns safe SVG markup.
    """
    n = max(len(buckets), 1)
    top = max([max(b.received, b.delivered + b.failed + b.waiting) for b in buckets] + [1])
    slot = width / n
    bar = max(slot - 1.0, 1.0)
    scale = (height - 2) / top
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" height="{height}" '
        f'preserveAspectRatio="none" role="img" aria-label="{escape(title or "activity")}">',
        f"<title>{escape(title or 'activity')}</title>",
        f'<line class="axis" x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}"/>',
    ]
    for i, b in enumerate(buckets):
        x = i * slot
        y = float(height)
        tip = escape(
            f"{b.label}: {b.received} received, {b.delivered} delivered, "
            f"{b.failed} failed, {b.waiting} waiting"
        )
        parts.append(f"<g><title>{tip}</title>")
        # An invisible full-height rectangle so the tooltip shows over an empty hour too.
        parts.append(f'<rect class="slot" x="{x:.2f}" y="0" width="{bar:.2f}" height="{height}"/>')
        for series in SERIES:
            count = b.value(series)
            if count <= 0:
                continue
            # Half a pixel at least: one failure among thousands of deliveries still shows.
            h = max(count * scale, 0.5)
            y -= h
            parts.append(
                f'<rect class="{series}" x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" height="{h:.2f}"/>'
            )
        parts.append("</g>")
    if any(b.received for b in buckets):
        points = " ".join(
            f"{i * slot + bar / 2:.2f},{height - 1 - b.received * scale:.2f}" for i, b in enumerate(buckets)
        )
        parts.append(f'<polyline class="received" fill="none" points="{points}"/>')
    parts.append("</svg>")
    return "".join(parts)
