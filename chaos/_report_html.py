"""The HTML form of a chaos report: one self-contained page, charts as inline SVG.

It fetches nothing (no script, stylesheet, font or image from anywhere). The model and its
JSON form are in `chaos._report_model`, which this module reads and never changes.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chaos._report_model import FaultRecord, JournalEvent, Report, Sample, write_atomically

__all__ = ["render_html", "write_html"]


# --------------------------------------------------------------------------------------------
# HTML: formatting helpers

_DETAIL_LIMIT = 400  # characters of a detail shown in a table cell; the rest is in `title`
_LABEL_LIMIT = 44  # characters of a fault label on the timeline
_LABEL_CHAR_PX = 6.4  # rough width of one character at 11px, to keep labels apart
_MAX_LABEL_ROWS = 4


# Characters a page must not carry as they are: C0 controls (ANSI colour codes in a captured
# log, say) make the inline SVG invalid XML, and lone surrogates (undecodable file names)
# cannot be written as UTF-8 at all.
_UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode "control picture" of it, e.g. ␛ for ESC
    return "\u2421" if code == 0x7F else "\ufffd"


def _esc(value: object) -> str:
    """Escape for both text and attribute values (quotes included), controls made visible."""
    return html.escape(_UNSAFE_CHARACTERS.sub(_visible, str(value)), quote=True)


def _px(value: float) -> str:
    return f"{value:.1f}"


def _fmt_seconds(value: float) -> str:
    return f"{value:.2f}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s"


def _fmt_count(value: float) -> str:
    """Compact number for axes and summaries: 950, 1.2k, 3.4M."""
    # Round first so that 999_999 becomes "1M", not "1e+03k".
    magnitude = float(f"{abs(value):.3g}")
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _fmt_timestamp(unix: float) -> str:
    try:
        return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{unix} (unix time)"


def _compact_json(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _long_text(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """Text of any length for a table cell: up to `limit` characters, all of it in `title`."""
    if len(text) <= limit:
        return f'<span class="text">{_esc(text)}</span>'
    return (
        f'<span class="text truncated" title="{_esc(text)}">{_esc(text[:limit])}'
        f'<span class="more">… ({len(text) - limit} more characters; hover for all)</span></span>'
    )


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# HTML: scales, ticks, decimation


@dataclass(frozen=True)
class _Scale:
    """Linear map from a data interval (non-empty) onto a pixel interval."""

    d0: float
    d1: float
    p0: float
    p1: float

    def __call__(self, value: float) -> float:
        return self.p0 + (value - self.d0) * (self.p1 - self.p0) / (self.d1 - self.d0)


def _nice_step(span: float, target: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about `target` intervals over `span`.

    Never longer than `span`, so any interval of that length holds a multiple of it (a
    step of 5e6 over [1, 4004006] would have left the axis without a single tick).
    """
    raw = span / max(target, 1)
    if not raw > 0:  # a span so small that dividing it underflows
        return span if span > 0 else 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next((m * magnitude for m in (1.0, 2.0, 5.0, 10.0)
                 if raw * 0.999 <= m * magnitude <= span), magnitude)


_POINT_WIDTH = 1e-9


def _nice_ticks(lo: float, hi: float, target: int = 8) -> tuple[list[float], float]:
    """Round tick values within [lo, hi] and the step between them."""
    if not hi - lo > _POINT_WIDTH * max(1.0, abs(lo), abs(hi)):
        return [lo], 1.0  # a point, as far as a chart can tell (also a denormal width)
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    ticks: list[float] = []
    index = first
    # The cap only matters for absurd domains, where float rounding could stall the count.
    while index * step <= hi + step * 1e-9 and len(ticks) < 1000:
        ticks.append(index * step)
        index += 1
    return ticks, step


def _nice_ceiling(value: float, target: int = 5) -> float:
    """The smallest round number (a multiple of a nice step) at least `value`; 1 for <= 0."""
    if value <= 0:
        return 1.0
    step = _nice_step(value, target)
    return math.ceil(value / step - 1e-9) * step


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def _decimate(points: Sequence[tuple[float, float]], buckets: int) -> list[tuple[float, float]]:
    """At most about 2 points per bucket, keeping each bucket's lowest and highest point.

    A plot is only so many pixels wide; keeping the extremes of each pixel column draws the
    same picture as all the points (dips after a fault stay visible) with a bounded size.
    """
    if len(points) <= 2 * buckets:
        return list(points)
    out = [points[0]]
    size = len(points) / buckets
    for bucket in range(buckets):
        chunk = points[int(bucket * size) : int((bucket + 1) * size)]
        if not chunk:
            continue
        low = min(range(len(chunk)), key=lambda i: chunk[i][1])
        high = max(range(len(chunk)), key=lambda i: chunk[i][1])
        out.extend(chunk[i] for i in sorted({low, high}))
    if out[-1] is not points[-1]:
        out.append(points[-1])
    return out


_SAME_INSTANT_S = 1e-6


def _throughput(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """Events committed per second between consecutive samples, at the later sample's time."""
    rates = []
    for before, after in itertools.pairwise(samples):
        elapsed = after.t - before.t
        # Two samples within a microsecond are the same instant to a sampler: they say
        # nothing about a rate (and a denormal interval would make it infinite).
        if elapsed >= _SAME_INSTANT_S:
            rate = (after.committed - before.committed) / elapsed
            if math.isfinite(rate):
                rates.append((after.t, rate))
    return rates


# --------------------------------------------------------------------------------------------
# HTML: the SVG charts

_WIDTH = 960
_LEFT = 64  # room for the y tick labels and the rotated y axis title
_RIGHT = 24
_PLOT_HEIGHT = 230
_READ_COLOUR = "#2563eb"
_COMMITTED_COLOUR = "#15803d"
_RESTORE_COLOUR = "#1e293b"
_ABORT_COLOUR = "#dc2626"
# Distinct hues for fault kinds, away from the two series colours.
_FAULT_PALETTE = ("#f97316", "#a855f7", "#e11d48", "#ca8a04", "#0891b2", "#db2777", "#65a30d")
_SVG_FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="11"'


def _fault_colours(faults: Sequence[FaultRecord]) -> dict[str, str]:
    """One colour per fault kind, in order of first appearance, so a report is stable."""
    colours: dict[str, str] = {}
    for fault in faults:
        if fault.kind not in colours:
            colours[fault.kind] = _FAULT_PALETTE[len(colours) % len(_FAULT_PALETTE)]
    return colours


def _time_domain(report: Report) -> tuple[float, float]:
    """The x interval of the charts: from the run start (or earlier data) to its last datum."""
    times = [0.0, report.duration_s]
    times += [s.t for s in report.samples]
    times += [e.t for e in report.journal]
    for fault in report.faults:
        times.append(fault.injected_at)
        if fault.healed_at is not None:
            times.append(fault.healed_at)
    lo, hi = min(times), max(times)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _is_restore(event: JournalEvent) -> bool:
    return event.kind.lower().startswith("restore")


def _fault_label(fault: FaultRecord) -> str:
    label = f"{fault.kind} → {fault.target}" if fault.target else fault.kind
    return label if fault.healed_at is not None else f"{label} (not healed)"


def _fault_title(fault: FaultRecord) -> str:
    healed = (
        f"healed at {_fmt_seconds(fault.healed_at)} s ({_fmt_seconds(fault.duration_s or 0.0)} s)"
        if fault.healed_at is not None
        else "never healed"
    )
    lines = [
        f"{fault.kind} on {fault.target}",
        f"injected at {_fmt_seconds(fault.injected_at)} s, {healed}",
    ]
    if fault.params:
        lines.append(f"params: {_compact_json(fault.params)}")
    if fault.detail:
        lines.append(fault.detail)
    return "\n".join(lines)


def _label_span(x0: float, text: str) -> tuple[float, float, str]:
    """Where a label drawn for a band starting at `x0` lies: (left, right, text-anchor).

    Labels start just right of their band, except near the right edge, where they end just
    left of it so that they stay inside the SVG.
    """
    width = len(text) * _LABEL_CHAR_PX
    if x0 + 3 + width > _WIDTH:
        return x0 - 3 - width, x0 - 3, "end"
    return x0 + 3, x0 + 3 + width, "start"


def _place_labels(
    starts: Sequence[float], fulls: Sequence[str], shorts: Sequence[str]
) -> list[tuple[int, str]]:
    """A row and a text for each fault label, so that labels in one row do not overlap.

    First, greedily from left to right, each full label goes to the first row with room.
    When that needs more than `_MAX_LABEL_ROWS` rows, the faults are crowded: labels take
    the rows in turn and each is cut to the room left before the next label of its row, down
    to the short label ("#3", the fault's number in the faults table). Only faults closer
    than a short label's width can then overlap, and an unbounded header would be worse.
    """
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    row_ends: list[float] = []
    placed = [(0, "")] * len(starts)
    for index in order:
        left, right, _ = _label_span(starts[index], fulls[index])
        row = next((r for r, end in enumerate(row_ends) if end + 6 <= left), len(row_ends))
        if row == _MAX_LABEL_ROWS:
            break
        if row == len(row_ends):
            row_ends.append(right)
        row_ends[row] = right
        placed[index] = (row, fulls[index])
    else:
        return placed

    for rank, index in enumerate(order):
        following = rank + _MAX_LABEL_ROWS
        limit = starts[order[following]] - 6 if following < len(order) else float(_WIDTH)
        room = int((limit - starts[index] - 3) // _LABEL_CHAR_PX)
        full, short = fulls[index], shorts[index]
        if room >= len(full):
            text = full
        elif room > len(short) + 2:
            text = full[: room - 1] + "…"
        else:
            text = short
        placed[index] = (rank % _MAX_LABEL_ROWS, text)
    return placed


def _timeline_svg(report: Report) -> str:
    """Progress of the job over time, with fault bands, restore markers, axes and a legend."""
    samples = sorted(report.samples, key=lambda s: s.t)
    t_lo, t_hi = _time_domain(report)
    right = _WIDTH - _RIGHT
    x = _Scale(t_lo, t_hi, _LEFT, right)

    # Labels carry the fault's number in the faults table, so a crowded timeline that falls
    # back to "#3" alone still points to the row that explains it.
    starts = [x(f.injected_at) for f in report.faults]
    placed = _place_labels(
        starts,
        [
            _truncate(f"#{n} {_fault_label(f)}", _LABEL_LIMIT)
            for n, f in enumerate(report.faults, start=1)
        ],
        [f"#{n}" for n in range(1, len(report.faults) + 1)],
    )
    row_count = max((row for row, _ in placed), default=-1) + 1
    label_top = 8
    plot_top = label_top + row_count * 15 + 10
    plot_bottom = plot_top + _PLOT_HEIGHT
    height = plot_bottom + 74

    peak = max((max(s.lines_read, s.committed) for s in samples), default=0)
    # 5% headroom keeps the lines off the frame, where they would be hard to see.
    y_max = _nice_ceiling(peak * 1.05)
    y = _Scale(0.0, y_max, plot_bottom, plot_top)

    colours = _fault_colours(report.faults)
    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-labelledby="timeline-title" {_SVG_FONT}>',
        '<title id="timeline-title">Events read and committed over time, with faults</title>',
        f'<rect class="plot-area" x="{_LEFT}" y="{plot_top}" width="{right - _LEFT}" '
        f'height="{_PLOT_HEIGHT}" fill="#ffffff" stroke="#cbd5e1"/>',
    ]

    # Grid and y ticks first, so everything else draws over them.
    y_ticks, _ = _nice_ticks(0.0, y_max, 5)
    for value in y_ticks:
        py = y(value)
        out.append(
            f'<line x1="{_LEFT}" y1="{_px(py)}" x2="{right}" y2="{_px(py)}" stroke="#eef2f7"/>'
        )
        # Counts are whole events: no "0.2 events" tick, and no scale at all without data.
        if samples and value == int(value):
            out.append(
                f'<text x="{_LEFT - 6}" y="{_px(py + 4)}" text-anchor="end" fill="#475569">'
                f"{_esc(_fmt_count(value))}</text>"
            )
    x_ticks, x_step = _nice_ticks(t_lo, t_hi, 10)
    for value in x_ticks:
        px = x(value)
        out.append(
            f'<line x1="{_px(px)}" y1="{plot_top}" x2="{_px(px)}" y2="{plot_bottom}" '
            'stroke="#eef2f7"/>'
        )
        out.append(
            f'<line x1="{_px(px)}" y1="{plot_bottom}" x2="{_px(px)}" y2="{plot_bottom + 5}" '
            'stroke="#64748b"/>'
        )
        out.append(
            f'<text x="{_px(px)}" y="{plot_bottom + 18}" text-anchor="middle" fill="#475569">'
            f"{_esc(_tick_label(value, x_step))}</text>"
        )

    # Fault bands and their labels.
    for fault, (row, label) in zip(report.faults, placed, strict=True):
        colour = colours[fault.kind]
        x0 = x(fault.injected_at)
        x1 = x(fault.healed_at if fault.healed_at is not None else t_hi)
        # An instantaneous fault (a kill) would be invisible at zero width.
        width = max(x1 - x0, 2.0)
        dash = "" if fault.healed_at is not None else ' stroke-dasharray="5 3"'
        healed = "healed" if fault.healed_at is not None else "unhealed"
        out.append(
            f'<rect class="fault-band {healed}" x="{_px(x0)}" y="{plot_top}" '
            f'width="{_px(width)}" height="{_PLOT_HEIGHT}" fill="{colour}" fill-opacity="0.16" '
            f'stroke="{colour}" stroke-opacity="0.6"{dash}>'
            f"<title>{_esc(_fault_title(fault))}</title></rect>"
        )
        label_y = label_top + 11 + row * 15
        out.append(
            f'<line x1="{_px(x0)}" y1="{label_y + 3}" x2="{_px(x0)}" y2="{plot_top}" '
            f'stroke="{colour}" stroke-opacity="0.6"/>'
        )
        label_left, label_right, anchor = _label_span(x0, label)
        label_x = label_right if anchor == "end" else label_left
        out.append(
            f'<text class="fault-label" x="{_px(label_x)}" y="{label_y}" text-anchor="{anchor}" '
            f'fill="{colour}" font-weight="600"><title>{_esc(_fault_title(fault))}</title>'
            f"{_esc(label)}</text>"
        )

    # The two series; a single sample is drawn as dots since a one-point line is invisible.
    if samples:
        for name, colour, values in (
            ("read", _READ_COLOUR, [(s.t, float(s.lines_read)) for s in samples]),
            ("committed", _COMMITTED_COLOUR, [(s.t, float(s.committed)) for s in samples]),
        ):
            points = _decimate(values, int(right - _LEFT))
            coords = " ".join(f"{_px(x(t))},{_px(y(v))}" for t, v in points)
            out.append(
                f'<polyline class="series series-{name}" points="{coords}" fill="none" '
                f'stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>'
            )
            if len(samples) == 1:
                t, v = points[0]
                out.append(
                    f'<circle class="series-dot" cx="{_px(x(t))}" cy="{_px(y(v))}" r="3.5" '
                    f'fill="{colour}"/>'
                )
    else:
        out.append(
            f'<text x="{_px((_LEFT + right) / 2)}" y="{_px((plot_top + plot_bottom) / 2)}" '
            'text-anchor="middle" fill="#64748b" font-size="13">'
            "no progress samples were recorded</text>"
        )

    # Restore and abort markers over everything else, so they are never hidden by a band.
    for event in report.journal:
        px = x(event.t)
        tip = f"{_fmt_seconds(event.t)} s  {event.kind}: {event.message}"
        if _is_restore(event):
            out.append(
                f'<path class="restore-marker" d="M{_px(px - 5)},{plot_top - 1} '
                f'L{_px(px + 5)},{plot_top - 1} L{_px(px)},{plot_top + 8} Z" '
                f'fill="{_RESTORE_COLOUR}"><title>{_esc(tip)}</title></path>'
            )
            out.append(
                f'<line x1="{_px(px)}" y1="{plot_top + 8}" x2="{_px(px)}" y2="{plot_bottom}" '
                f'stroke="{_RESTORE_COLOUR}" stroke-opacity="0.35" stroke-dasharray="2 3"/>'
            )
        elif event.kind.lower().startswith("abort"):
            out.append(
                f'<line class="abort-marker" x1="{_px(px)}" y1="{plot_top}" x2="{_px(px)}" '
                f'y2="{plot_bottom}" stroke="{_ABORT_COLOUR}" stroke-width="2">'
                f"<title>{_esc(tip)}</title></line>"
            )

    # Axes and their titles.
    out.append(
        f'<line x1="{_LEFT}" y1="{plot_bottom}" x2="{right}" y2="{plot_bottom}" stroke="#64748b"/>'
    )
    out.append(
        f'<line x1="{_LEFT}" y1="{plot_top}" x2="{_LEFT}" y2="{plot_bottom}" stroke="#64748b"/>'
    )
    out.append(
        f'<text x="{_px((_LEFT + right) / 2)}" y="{plot_bottom + 36}" text-anchor="middle" '
        'fill="#334155">seconds since start</text>'
    )
    mid_y = (plot_top + plot_bottom) / 2
    out.append(
        f'<text x="14" y="{_px(mid_y)}" text-anchor="middle" fill="#334155" '
        f'transform="rotate(-90 14 {_px(mid_y)})">events</text>'
    )

    out.append(_legend(plot_bottom + 58, has_faults=bool(report.faults)))
    out.append("</svg>")
    return "\n".join(out)


def _legend(baseline: float, *, has_faults: bool) -> str:
    """The legend row under the x axis: swatch then words, laid out left to right."""
    items: list[tuple[str, str]] = [
        (
            f'<line x1="0" y1="-4" x2="18" y2="-4" stroke="{_READ_COLOUR}" stroke-width="2"/>',
            "events read by the source",
        ),
        (
            f'<line x1="0" y1="-4" x2="18" y2="-4" stroke="{_COMMITTED_COLOUR}" stroke-width="2"/>',
            "events committed to the ledger",
        ),
    ]
    if has_faults:
        items.append(
            (
                f'<rect class="legend-swatch" x="0" y="-10" width="18" height="11" '
                f'fill="{_FAULT_PALETTE[0]}" fill-opacity="0.16" stroke="{_FAULT_PALETTE[0]}"/>',
                "fault, injected → healed (dashed: never healed)",
            )
        )
    items.append(
        (
            f'<path d="M4,-9 L14,-9 L9,0 Z" fill="{_RESTORE_COLOUR}"/>',
            "restore",
        )
    )
    out = ['<g class="legend">']
    cursor = float(_LEFT)
    for swatch, words in items:
        out.append(f'<g transform="translate({_px(cursor)},{_px(baseline)})">{swatch}')
        out.append(f'<text x="24" y="0" fill="#334155">{_esc(words)}</text></g>')
        cursor += 24 + len(words) * _LABEL_CHAR_PX * 0.9 + 20
    out.append("</g>")
    return "".join(out)


def _sparkline_svg(report: Report) -> str:
    """Committed events per second over time, on the same x axis as the timeline."""
    samples = sorted(report.samples, key=lambda s: s.t)
    rates = _throughput(samples)
    height = 96
    top, bottom = 10, 76
    right = _WIDTH - _RIGHT
    t_lo, t_hi = _time_domain(report)
    x = _Scale(t_lo, t_hi, _LEFT, right)
    out = [
        f'<svg class="sparkline" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-labelledby="sparkline-title" {_SVG_FONT}>',
        '<title id="sparkline-title">Throughput: events committed per second</title>',
    ]
    colours = _fault_colours(report.faults)
    for fault in report.faults:
        x0 = x(fault.injected_at)
        x1 = x(fault.healed_at if fault.healed_at is not None else t_hi)
        out.append(
            f'<rect class="spark-band" x="{_px(x0)}" y="{top}" width="{_px(max(x1 - x0, 2.0))}" '
            f'height="{bottom - top}" fill="{colours[fault.kind]}" fill-opacity="0.12"/>'
        )
    out.append(f'<line x1="{_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#cbd5e1"/>')
    if rates:
        low = min(0.0, *(r for _, r in rates))
        high = _nice_ceiling(max(r for _, r in rates))
        y = _Scale(low, high if high > low else low + 1.0, bottom, top)
        points = _decimate(rates, int(right - _LEFT))
        coords = " ".join(f"{_px(x(t))},{_px(y(v))}" for t, v in points)
        out.append(
            f'<polyline class="spark-line" points="{coords}" fill="none" '
            f'stroke="{_COMMITTED_COLOUR}" stroke-width="1.5" stroke-linejoin="round"/>'
        )
        if low < 0:
            out.append(
                f'<line x1="{_LEFT}" y1="{_px(y(0.0))}" x2="{right}" y2="{_px(y(0.0))}" '
                'stroke="#94a3b8" stroke-dasharray="3 3"/>'
            )
        out.append(
            f'<text x="{_LEFT - 6}" y="{top + 8}" text-anchor="end" fill="#475569">'
            f"{_esc(_fmt_count(high))}/s</text>"
        )
        out.append(
            f'<text x="{_LEFT - 6}" y="{bottom}" text-anchor="end" fill="#475569">'
            f"{_esc(_fmt_count(low))}</text>"
        )
    else:
        out.append(
            f'<text x="{_px((_LEFT + right) / 2)}" y="{_px((top + bottom) / 2 + 4)}" '
            'text-anchor="middle" fill="#64748b">'
            "at least two samples at different times are needed for a throughput</text>"
        )
    out.append(
        f'<text x="{_LEFT}" y="{height - 4}" fill="#334155">'
        "events committed per second (bands: faults)</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# HTML: tables and page

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #0f172a; background: #f8fafc; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
header.verdict { display: flex; gap: 20px; align-items: center; padding: 18px 20px;
                 border-radius: 10px; border: 2px solid; margin-bottom: 16px; }
header.passed { background: #f0fdf4; border-color: #16a34a; }
header.failed { background: #fef2f2; border-color: #dc2626; }
.badge { font-size: 34px; font-weight: 800; letter-spacing: 0.04em; padding: 4px 16px;
         border-radius: 8px; color: #fff; }
.passed .badge { background: #15803d; }
.failed .badge { background: #b91c1c; }
h1 { font-size: 22px; margin: 0; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { margin: 2px 0 0; color: #475569; overflow-wrap: anywhere; }
.reasons { margin: 8px 0 0; padding-left: 20px; color: #7f1d1d; }
.warning { background: #fffbeb; border: 1px solid #f59e0b; border-radius: 6px;
           padding: 8px 12px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.meta dt { color: #475569; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
pre.replay { background: #0f172a; color: #e2e8f0; padding: 10px 12px; border-radius: 6px;
             white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
figure { margin: 0; background: #fff; border: 1px solid #e2e8f0; border-radius: 8px;
         padding: 8px; overflow-x: auto; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: #475569; font-size: 13px; padding: 4px 4px 0; }
table { border-collapse: collapse; width: 100%; background: #fff; table-layout: auto; }
th, td { border: 1px solid #e2e8f0; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; font-weight: 600; }
table.kv th { width: 1%; white-space: nowrap; }
td.num { width: 1%; text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td .text { white-space: pre-wrap; overflow-wrap: anywhere; }
.truncated { cursor: help; }
.more { color: #64748b; font-style: italic; }
.pass { color: #15803d; font-weight: 700; }
.fail { color: #b91c1c; font-weight: 700; }
tr.failed-row { background: #fef2f2; }
tr.kind-restore td { background: #f1f5f9; }
tr.kind-abort td { background: #fee2e2; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.empty { color: #64748b; font-style: italic; }
"""


def _verdict_cell(passed: bool) -> str:
    return '<td class="pass">PASS</td>' if passed else '<td class="fail">FAIL</td>'


def _table(caption: str, headers: Sequence[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_esc(empty)}</p>'
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    return (
        f"<table><caption hidden>{_esc(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def _invariants_table(report: Report) -> str:
    rows = []
    for inv in report.invariants:
        # The data (counts, sample ids) goes under the detail: a column of its own would be
        # too narrow for JSON.
        data = f"<div><code>{_long_text(_compact_json(inv.data), 300)}</code></div>"
        rows.append(
            f'<tr class="{"" if inv.passed else "failed-row"}">'
            f"<td>{_long_text(inv.name, 120)}</td>{_verdict_cell(inv.passed)}"
            f"<td>{_long_text(inv.detail)}{data if inv.data else ''}</td></tr>"
        )
    return _table(
        "Invariants", ("invariant", "result", "detail"), rows, "No invariant was checked."
    )


def _steady_state_table(report: Report) -> str:
    rows = [
        f'<tr class="{"" if check.passed else "failed-row"}"><td>{_long_text(check.name, 120)}</td>'
        f"<td>{_esc(check.phase)}</td>{_verdict_cell(check.passed)}"
        f'<td class="num">{"—" if check.observed is None else _esc(f"{check.observed:.6g}")}</td>'
        f"<td>{_long_text(check.threshold, 120)}</td><td>{_long_text(check.detail)}</td></tr>"
        for check in report.steady_state
    ]
    return _table(
        "Steady-state checks",
        ("check", "phase", "result", "observed", "threshold", "detail"),
        rows,
        "No steady-state check was made.",
    )


def _faults_table(report: Report) -> str:
    rows = []
    for number, fault in enumerate(report.faults, start=1):
        healed = "not healed" if fault.healed_at is None else _fmt_seconds(fault.healed_at)
        duration = "—" if fault.duration_s is None else _fmt_seconds(fault.duration_s)
        params = _long_text(_compact_json(fault.params), 200) if fault.params else ""
        rows.append(
            f'<tr><td class="num">{number}</td><td>{_long_text(fault.kind, 80)}</td>'
            f"<td>{_long_text(fault.target, 120)}</td>"
            f'<td class="num">{_fmt_seconds(fault.injected_at)}</td>'
            f'<td class="num">{healed}</td><td class="num">{duration}</td>'
            f"<td><code>{params}</code></td><td>{_long_text(fault.detail)}</td></tr>"
        )
    return _table(
        "Faults",
        ("#", "kind", "target", "injected (s)", "healed (s)", "lasted (s)", "params", "detail"),
        rows,
        "No fault was injected.",
    )


def _journal_table(report: Report) -> str:
    rows = []
    # Stable sort: events logged at the same instant keep the order they were logged in.
    for event in sorted(report.journal, key=lambda e: e.t):
        kind_class = (
            "kind-restore"
            if _is_restore(event)
            else "kind-abort"
            if event.kind.lower().startswith("abort")
            else ""
        )
        rows.append(
            f'<tr class="{kind_class}"><td class="num">{_fmt_seconds(event.t)}</td>'
            f"<td><code>{_long_text(event.kind, 60)}</code></td>"
            f"<td>{_long_text(event.message)}</td></tr>"
        )
    return _table("Journal", ("t (s)", "kind", "message"), rows, "The journal is empty.")


def _job_table(report: Report) -> str:
    rows = [
        f"<tr><th>{_long_text(str(key), 80)}</th>"
        f"<td><code>{_long_text(_compact_json(value), 300)}</code></td></tr>"
        for key, value in sorted(report.job.items(), key=lambda item: str(item[0]))
    ]
    if not rows:
        return '<p class="empty">No job summary was recorded.</p>'
    return '<table class="kv"><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"


def _throughput_summary(report: Report) -> str:
    samples = sorted(report.samples, key=lambda s: s.t)
    rates = _throughput(samples)
    if not rates:
        return ""
    elapsed = samples[-1].t - samples[0].t
    mean = (samples[-1].committed - samples[0].committed) / elapsed
    return (
        f"Committed: {_esc(_fmt_count(mean))} events/s on average, "
        f"peak {_esc(_fmt_count(max(r for _, r in rates)))}/s, "
        f"lowest {_esc(_fmt_count(min(r for _, r in rates)))}/s "
        f"over {len(samples)} samples."
    )


def _header(report: Report) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    sub = f"scenario file: {report.scenario_file}" if report.scenario_file else "scenario"
    reasons = report.failure_reasons()
    reason_list = ""
    if reasons:
        shown = "".join(f"<li>{_long_text(r, 240)}</li>" for r in reasons[:10])
        more = f"<li>… and {len(reasons) - 10} more</li>" if len(reasons) > 10 else ""
        reason_list = f'<ul class="reasons">{shown}{more}</ul>'
    return (
        f'<header class="verdict {verdict.lower()}">'
        f'<div class="badge" id="verdict">{verdict}</div>'
        f"<div><h1>{_esc(report.scenario)}</h1>"
        f'<p class="sub">{_esc(sub)}</p>{reason_list}</div></header>'
    )


def _meta(report: Report) -> str:
    inv_ok = sum(i.passed for i in report.invariants)
    ss_ok = sum(s.passed for s in report.steady_state)
    unhealed = sum(f.healed_at is None for f in report.faults)
    items = [
        ("seed", f"<code>{_esc(report.seed)}</code>"),
        ("code version", f"<code>{_esc(report.code_version)}</code>"),
        ("started", _esc(_fmt_timestamp(report.started_at))),
        ("duration", _esc(_fmt_duration(report.duration_s))),
        ("aborted", _esc(report.aborted) if report.aborted is not None else "no"),
        ("invariants", f"{inv_ok} of {len(report.invariants)} passed"),
        ("steady state", f"{ss_ok} of {len(report.steady_state)} passed"),
        (
            "faults",
            f"{len(report.faults)} injected" + (f", {unhealed} never healed" if unhealed else ""),
        ),
    ]
    return '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (no scripts, nothing fetched).

    Every string from the report is escaped, so scenario names, details and journal
    messages cannot inject markup. Charts are inline SVG sized for a 1000px-wide page.
    """
    verdict = "PASSED" if report.passed else "FAILED"
    warning = (
        '<p class="warning">No invariant was checked: this pass shows only that the run '
        "completed, not that the job behaved.</p>"
        if not report.invariants
        else ""
    )
    summary = _throughput_summary(report)
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{verdict}: {_esc(report.scenario)} (seed {_esc(report.seed)})</title>",
        f"<style>{_CSS}</style></head><body><main>",
        _header(report),
        warning,
        _meta(report),
        "<h2>Replay</h2>",
        f'<pre class="replay"><code>{_esc(report.replay)}</code></pre>',
        "<h2>Timeline</h2>",
        f"<figure>{_timeline_svg(report)}"
        "<figcaption>Hover a band or a marker for details.</figcaption></figure>",
        "<h2>Throughput</h2>",
        f"<figure>{_sparkline_svg(report)}"
        + (f"<figcaption>{summary}</figcaption>" if summary else "")
        + "</figure>",
        "<h2>Invariants</h2>",
        _invariants_table(report),
        "<h2>Steady-state checks</h2>",
        _steady_state_table(report),
        "<h2>Faults</h2>",
        _faults_table(report),
        "<h2>Job</h2>",
        _job_table(report),
        f"<h2>Journal ({len(report.journal)} events)</h2>",
        _journal_table(report),
        "</main></body></html>",
    ]
    return "\n".join(s for s in sections if s) + "\n"


def write_html(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write `render_html(report)` to `path` atomically and return the path."""
    return write_atomically(path, render_html(report))
