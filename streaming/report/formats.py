"""Text formats of the report: times, durations, numbers, shares."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any

from streaming.report.charts import Formatter
from streaming.report.records import RunRecords, Sample


def date_format(samples: Sequence[Sample]) -> Formatter:
    event_ms = [s.event_time_ms for s in samples if s.event_time_ms is not None]
    span_days = (max(event_ms) - min(event_ms)) / 86_400_000 if event_ms else 0
    pattern = "%Y-%m-%d" if span_days > 3 else "%m-%d %H:%M"

    def format_ms(value: float) -> str:
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC).strftime(pattern)

    return format_ms


def elapsed_format(records: RunRecords) -> Formatter:
    def format_elapsed(seconds: float) -> str:
        seconds = max(0.0, seconds)
        if seconds >= 3600:
            return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}"
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"

    return format_elapsed


def utc_text(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def percent_text(value: float) -> str:
    return f"{value * 100:.0f}%"


def number_text(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:,.0f}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def optional_text(metrics: dict[str, float], name: str, formatter: Formatter) -> str:
    value = metrics.get(name)
    return "" if value is None else escape(formatter(value))


def detail_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
