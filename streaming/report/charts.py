"""Inline SVG charts: line charts with event markers, grouped bars, heatmaps.

Every chart is one ``<svg class="chart ...">`` element with no scripts or
external references, so the page renders offline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 880
HEIGHT = 290
MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 50
MARGIN_BOTTOM = 42
# More points than pixels only slows the browser, so lines are thinned.
MAX_POINTS_PER_LINE = 1500

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
MARKER_COLORS = {
    "promotion": "#2ca02c",
    "rejection": "#ff7f0e",
    "rollback": "#d62728",
    "drift_alarm": "#9467bd",
}

Formatter = Callable[[float], str]


@dataclass(frozen=True)
class Line:
    """One series of (x, y) points, drawn as a polyline."""

    label: str
    points: Sequence[tuple[float, float]]
    color: str


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x`` for an event of ``kind``; ``title`` is its
    tooltip."""

    x: float
    kind: str
    title: str


@dataclass(frozen=True)
class Bar:
    """One bar per group; ``values`` has one entry per group (None: no bar)."""

    label: str
    values: Sequence[float | None]
    color: str


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Return about ``count`` round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw_step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = magnitude
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * magnitude
        if step >= raw_step:
            break
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _thin(points: Sequence[tuple[float, float]]) -> Sequence[tuple[float, float]]:
    if len(points) <= MAX_POINTS_PER_LINE:
        return points
    stride = math.ceil(len(points) / MAX_POINTS_PER_LINE)
    thinned = list(points[::stride])
    if thinned[-1] != points[-1]:
        thinned.append(points[-1])
    return thinned


class _Frame:
    """The plot area and the mapping from data to pixels."""

    def __init__(
        self, x_range: tuple[float, float], y_range: tuple[float, float]
    ) -> None:
        self.x_low, self.x_high = x_range
        self.y_low, self.y_high = y_range
        if self.x_high <= self.x_low:
            self.x_high = self.x_low + 1.0
        if self.y_high <= self.y_low:
            self.y_high = self.y_low + 1.0
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        share = (value - self.x_low) / (self.x_high - self.x_low)
        return self.left + share * (self.right - self.left)

    def y(self, value: float) -> float:
        share = (value - self.y_low) / (self.y_high - self.y_low)
        return self.bottom - share * (self.bottom - self.top)


def _open_svg(kind: str, title: str) -> list[str]:
    return [
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text class="chart-title" x="{MARGIN_LEFT}" y="20">{escape(title)}</text>',
    ]


def _axes(frame: _Frame, x_format: Formatter, y_format: Formatter) -> list[str]:
    parts = [
        f'<rect x="{frame.left}" y="{frame.top}" width="{frame.right - frame.left}" '
        f'height="{frame.bottom - frame.top}" fill="#fafafa" stroke="#ccc"/>'
    ]
    for tick in nice_ticks(frame.y_low, frame.y_high):
        y = frame.y(tick)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'class="tick">{escape(y_format(tick))}</text>'
        )
    for tick in nice_ticks(frame.x_low, frame.x_high, 6):
        x = frame.x(tick)
        if not frame.left <= x <= frame.right:
            continue
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom}" '
            f'y2="{frame.bottom + 4}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{frame.bottom + 18}" text-anchor="middle" '
            f'class="tick">{escape(x_format(tick))}</text>'
        )
    return parts


def _legend(items: Sequence[tuple[str, str]], frame: _Frame) -> list[str]:
    parts = []
    x = frame.right
    for label, color in reversed(items):
        width = 14 + 7 * len(label)
        x -= width
        parts.append(
            f'<rect x="{x}" y="{frame.top - 19}" width="10" height="10" '
            f'fill="{color}"/><text x="{x + 13}" y="{frame.top - 10}" '
            f'class="legend">{escape(label)}</text>'
        )
        x -= 10
    return parts


def line_chart(
    title: str,
    lines: Sequence[Line],
    *,
    x_format: Formatter,
    y_format: Formatter,
    markers: Sequence[Marker] = (),
    y_range: tuple[float, float] | None = None,
) -> str:
    """Draw lines over a shared x axis, with vertical event markers."""
    xs = [x for line in lines for x, _ in line.points] + [m.x for m in markers]
    ys = [y for line in lines for _, y in line.points]
    if not xs or not ys:
        return empty_chart(title, "no data recorded")
    if y_range is None:
        low, high = min(ys), max(ys)
        padding = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
        y_range = (low - padding, high + padding)
    frame = _Frame((min(xs), max(xs)), y_range)

    parts = _open_svg("line-chart", title)
    parts += _axes(frame, x_format, y_format)
    for marker in markers:
        color = MARKER_COLORS.get(marker.kind, "#555")
        x = frame.x(marker.x)
        parts.append(
            f'<line class="marker marker-{escape(marker.kind)}" x1="{x:.1f}" '
            f'x2="{x:.1f}" y1="{frame.top}" y2="{frame.bottom}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="4 3">'
            f"<title>{escape(marker.title)}</title></line>"
        )
    for line in lines:
        coordinates = " ".join(
            f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in _thin(line.points)
        )
        parts.append(
            f'<polyline class="series" fill="none" stroke="{line.color}" '
            f'stroke-width="1.6" points="{coordinates}">'
            f"<title>{escape(line.label)}</title></polyline>"
        )
    legend = [(line.label, line.color) for line in lines]
    kinds = sorted({marker.kind for marker in markers})
    legend += [
        (kind.replace("_", " "), MARKER_COLORS.get(kind, "#555")) for kind in kinds
    ]
    parts += _legend(legend, frame)
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(
    title: str,
    groups: Sequence[str],
    bars: Sequence[Bar],
    *,
    y_format: Formatter,
    y_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """Draw grouped bars: one group per entry of ``groups``."""
    if not groups or not bars:
        return empty_chart(title, "no data recorded")
    frame = _Frame((0.0, float(len(groups))), y_range)
    parts = _open_svg("bar-chart", title)
    parts += _axes(frame, lambda _: "", y_format)
    group_width = (frame.right - frame.left) / len(groups)
    bar_width = group_width * 0.8 / len(bars)
    for group_index, group in enumerate(groups):
        group_left = frame.left + group_index * group_width + group_width * 0.1
        for bar_index, bar in enumerate(bars):
            value = bar.values[group_index]
            if value is None:
                continue
            x = group_left + bar_index * bar_width
            y = frame.y(value)
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" '
                f'width="{bar_width - 1:.1f}" height="{frame.bottom - y:.1f}" '
                f'fill="{bar.color}"><title>{escape(group)} {escape(bar.label)}: '
                f"{escape(y_format(value))}</title></rect>"
            )
        parts.append(
            f'<text x="{group_left + group_width * 0.4:.1f}" y="{frame.bottom + 18}" '
            f'text-anchor="middle" class="tick">{escape(group)}</text>'
        )
    parts += _legend([(bar.label, bar.color) for bar in bars], frame)
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap(
    title: str,
    rows: Sequence[str],
    columns: Sequence[str],
    counts: Sequence[Sequence[int]],
) -> str:
    """Draw a confusion matrix: rows are true labels, columns predictions.

    Cell shade is the share of its row, so rare and frequent labels compare.
    """
    if not rows:
        return empty_chart(title, "no confusion counts recorded")
    label_width = 190
    cell = min(44, (WIDTH - label_width - 20) // max(1, len(columns)))
    top = 150
    height = top + cell * len(rows) + 20
    parts = [
        f'<svg class="chart heatmap" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text class="chart-title" x="{MARGIN_LEFT}" y="20">{escape(title)}</text>',
        f'<text class="legend" x="{label_width}" y="40">predicted (top-1) →</text>',
    ]
    for column_index, column in enumerate(columns):
        x = label_width + column_index * cell + cell / 2
        parts.append(
            f'<text class="tick" transform="translate({x:.1f},{top - 6}) '
            f'rotate(-55)">{escape(_shorten(column))}</text>'
        )
    for row_index, row in enumerate(rows):
        y = top + row_index * cell
        row_total = sum(counts[row_index]) or 1
        parts.append(
            f'<text class="tick" x="{label_width - 6}" y="{y + cell / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(_shorten(row))}</text>'
        )
        for column_index, count in enumerate(counts[row_index]):
            share = count / row_total
            x = label_width + column_index * cell
            shade = _blue(share)
            text_color = "#fff" if share > 0.5 else "#222"
            parts.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{cell - 1}" '
                f'height="{cell - 1}" fill="{shade}"><title>true {escape(row)}, '
                f"predicted {escape(columns[column_index])}: {count}</title></rect>"
            )
            if count:
                parts.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                    f'text-anchor="middle" class="cell-count" '
                    f'fill="{text_color}">{count}</text>'
                )
    parts.append("</svg>")
    return "\n".join(parts)


def empty_chart(title: str, message: str) -> str:
    """Draw a placeholder that shows why a chart has nothing to draw."""
    parts = _open_svg("empty-chart", title)
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
        f'class="empty">{escape(message)}</text></svg>'
    )
    return "\n".join(parts)


def _shorten(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _blue(share: float) -> str:
    # From near-white (share 0) to a dark blue (share 1).
    low, high = (247, 251, 255), (8, 48, 107)
    red, green, blue = (
        round(a + (b - a) * share) for a, b in zip(low, high, strict=True)
    )
    return f"rgb({red},{green},{blue})"
