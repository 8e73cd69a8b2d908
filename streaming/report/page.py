"""Compose the run report: one self-contained HTML page of inline SVG."""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from streaming.report.charts import (
    PALETTE,
    Bar,
    Formatter,
    Line,
    Marker,
    bar_chart,
    heatmap,
    line_chart,
)
from streaming.report.records import RunRecords, Sample, counter_rates

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 920px;
       color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.when { white-space: nowrap; font-size: 12px; }
td.details { font-size: 12px; }
svg.chart { display: block; margin: 10px 0; }
.chart-title { font-weight: 600; font-size: 13px; }
.tick, .legend { font-size: 11px; fill: #444; }
.cell-count { font-size: 10px; }
.empty { font-size: 13px; fill: #999; }
"""

# Bins of the events-per-second chart. Runners process input in bundles, so
# finer bins show the bundles rather than the rate.
THROUGHPUT_BINS = 40
# A long run may decide thousands of times; the page lists the latest.
MAX_DECISION_ROWS = 300

EVENT_TITLES = {
    "promotion": "promoted",
    "rejection": "rejected",
    "rollback": "rolled back",
    "drift_alarm": "drift alarm",
}


def render_page(records: RunRecords, run_dir: Path, top_roles: int = 10) -> str:
    """Return the report page for one run."""
    sections = [
        _header(records, run_dir),
        _summary(records),
        _quality_section(records),
        _holdout_section(records),
        _confusion_section(records, top_roles),
        _throughput_section(records),
        _resource_section(records),
        _decisions_section(records),
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>streamlearn report: {escape(records.job)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


# --- header and tables ----------------------------------------------------------


def _header(records: RunRecords, run_dir: Path) -> str:
    span = ""
    if records.first_time_s is not None and records.last_time_s is not None:
        start = _utc(records.first_time_s)
        span = f"{start} to {_utc(records.last_time_s)} UTC, " + _duration(
            records.last_time_s - records.first_time_s
        )
    return (
        f'<h1>streamlearn run report</h1><p class="meta">job '
        f"<b>{escape(records.job)}</b>, model <b>{escape(records.model)}</b>, "
        f"{escape(str(run_dir))}<br>{escape(span)}</p>"
    )


def _summary(records: RunRecords) -> str:
    rows = [
        ("events read", "events/read"),
        ("events learned", "events/learned"),
        ("events held out", "events/held_out"),
        ("duplicates dropped", "events/duplicate"),
        ("predictions answered", "predictions/answered"),
        ("messages dead-lettered", "events/dead_lettered"),
        ("promotions", "registry/promotions"),
        ("rejections", "registry/rejections"),
        ("rollbacks", "registry/rollbacks"),
        ("drift alarms", "drift/alarms"),
    ]
    cells = [
        f'<tr><td>{label}</td><td class="number">'
        f"{records.counter_final_total(name):,.0f}</td></tr>"
        for label, name in rows
    ]
    for key, total in sorted(
        records.counter_totals_by_label("events/dead_lettered").items()
    ):
        reason = dict(key).get("reason", "")
        cells.append(
            f"<tr><td>&nbsp;&nbsp;dead-lettered: {escape(reason)}</td>"
            f'<td class="number">{total:,.0f}</td></tr>'
        )
    serving = records.gauge("registry/serving_version")
    if serving:
        cells.append(
            f'<tr><td>serving version at the end</td><td class="number">'
            f"v{serving[-1].value:.0f}</td></tr>"
        )
    return "<h2>Summary</h2><table>" + "".join(cells) + "</table>"


def _decisions_section(records: RunRecords) -> str:
    if not records.events:
        return "<h2>Decisions and alarms</h2><p>None recorded.</p>"
    shown = records.events[-MAX_DECISION_ROWS:]
    rows = []
    for event in shown:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(event.labels.items()))
        details = ", ".join(
            f"{k}={_format_detail(v)}" for k, v in event.details.items()
        )
        event_time = ""
        if event.event_time_ms is not None:
            event_time = _utc(event.event_time_ms / 1000)
        rows.append(
            f'<tr><td class="when">{_utc(event.time_s)}</td>'
            f'<td class="when">{escape(event_time)}</td>'
            f"<td>{escape(EVENT_TITLES.get(event.kind, event.kind))}</td>"
            f"<td>{escape(labels)}</td>"
            f'<td class="details">{escape(details)}</td></tr>'
        )
    left_out = len(records.events) - len(shown)
    note = ""
    if left_out:
        note = (
            f"<p>The {left_out} earlier decisions and alarms are in "
            "metrics.jsonl (records of type event).</p>"
        )
    return (
        "<h2>Decisions and alarms</h2>"
        + note
        + "<table><tr><th>time (UTC)</th><th>event time (UTC)</th><th>what</th>"
        "<th>labels</th><th>numbers</th></tr>" + "".join(rows) + "</table>"
    )


# --- charts ------------------------------------------------------------------


def _quality_section(records: RunRecords) -> str:
    top1 = records.gauge("prequential/top1_accuracy")
    top5 = records.gauge("prequential/top5_accuracy")
    loss = records.gauge("training/loss")
    to_event_ms = _event_time_mapping(top5 or top1 or loss)
    markers = _markers(records, to_event_ms)
    use_event_time = to_event_ms is not None
    x_format = (
        _date_format(top5 or loss) if use_event_time else _elapsed_format(records)
    )
    axis = "event time" if use_event_time else "time since start"

    accuracy = line_chart(
        f"Prequential accuracy (test-then-train) over {axis}",
        [
            Line("top-5", _xy(top5, use_event_time), PALETTE[0]),
            Line("top-1", _xy(top1, use_event_time), PALETTE[1]),
        ],
        x_format=x_format,
        y_format=_percent,
        markers=markers,
        y_range=(0.0, 1.0),
    )
    loss_chart = line_chart(
        f"Training loss (cross-entropy, nats) over {axis}",
        [Line("loss", _xy(loss, use_event_time), PALETTE[2])],
        x_format=x_format,
        y_format=_number,
        markers=markers,
    )
    return "<h2>Learning</h2>" + accuracy + loss_chart


def _holdout_section(records: RunRecords) -> str:
    latest: dict[tuple[str, str], dict[str, float]] = {}
    order: list[str] = []
    for metric in ("holdout/top1_accuracy", "holdout/top5_accuracy", "holdout/loss"):
        for key, samples in records.gauges.get(metric, {}).items():
            labels = dict(key)
            version, role = labels.get("version", "?"), labels.get("role", "?")
            latest.setdefault((version, role), {})[metric] = samples[-1].value
            if version not in order:
                order.append(version)
    if not latest:
        return "<h2>Holdout metrics per version</h2><p>None recorded.</p>"
    order.sort(key=lambda version: _first_seen(records, version))

    bars = [
        Bar(
            f"top-5 as {role}",
            [latest.get((v, role), {}).get("holdout/top5_accuracy") for v in order],
            color,
        )
        for role, color in (("candidate", PALETTE[1]), ("serving", PALETTE[0]))
    ]
    chart = bar_chart(
        "Holdout top-5 accuracy per version", order, bars, y_format=_percent
    )
    rows = []
    for (version, role), metrics in sorted(
        latest.items(), key=lambda item: (order.index(item[0][0]), item[0][1])
    ):
        rows.append(
            f"<tr><td>{escape(version)}</td><td>{escape(role)}</td>"
            f'<td class="number">{_maybe(metrics, "holdout/top1_accuracy", _percent)}'
            f'</td><td class="number">'
            f"{_maybe(metrics, 'holdout/top5_accuracy', _percent)}</td>"
            f'<td class="number">{_maybe(metrics, "holdout/loss", _number)}</td></tr>'
        )
    table = (
        "<table><tr><th>version</th><th>role</th><th>top-1</th><th>top-5</th>"
        "<th>loss</th></tr>" + "".join(rows) + "</table>"
    )
    return "<h2>Holdout metrics per version</h2>" + chart + table


def _confusion_section(records: RunRecords, top_roles: int) -> str:
    if not records.confusions:
        return "<h2>Confusion matrix</h2><p>None recorded.</p>"
    holdout = [c for c in records.confusions if c.source == "holdout"]
    confusion = (holdout or records.confusions)[-1]
    row_totals: dict[str, int] = {}
    for (true_label, _), count in confusion.counts.items():
        row_totals[true_label] = row_totals.get(true_label, 0) + count
    roles = sorted(row_totals, key=lambda role: (-row_totals[role], role))[:top_roles]
    columns = [*roles, "other"]
    matrix = []
    for true_label in roles:
        row = [confusion.counts.get((true_label, predicted), 0) for predicted in roles]
        row.append(row_totals[true_label] - sum(row))
        matrix.append(row)
    title = (
        f"Confusion matrix of the {len(roles)} most frequent roles, version "
        f"{confusion.version} on the {confusion.source} events"
    )
    return "<h2>Confusion matrix</h2>" + heatmap(title, roles, columns, matrix)


def _throughput_section(records: RunRecords) -> str:
    start_s = records.first_time_s or 0.0
    lines = []
    for index, (label, name) in enumerate(
        (("learned", "events/learned"), ("read", "events/read"))
    ):
        samples = _merged_counter(records, name)
        rates = [
            (t - start_s, rate)
            for t, rate in counter_rates(samples, max_points=THROUGHPUT_BINS)
        ]
        lines.append(Line(f"{label} per second", rates, PALETTE[index]))
    charts = line_chart(
        "Events per second over time since start",
        [line for line in lines if line.points],
        x_format=_elapsed_format(records),
        y_format=_number,
    )
    reported = records.gauge("training/examples_per_second")
    if reported:
        step_speed = Line(
            "events/s of each learning step",
            [(s.time_s - start_s, s.value) for s in reported],
            PALETTE[2],
        )
        charts += line_chart(
            "Speed of the learning step alone (the job's own measure)",
            [step_speed],
            x_format=_elapsed_format(records),
            y_format=_number,
        )
    return "<h2>Throughput</h2>" + charts


def _resource_section(records: RunRecords) -> str:
    start_s = records.first_time_s or 0.0
    x_format = _elapsed_format(records)

    def over_time(
        samples: Sequence[Sample], scale: float = 1.0
    ) -> list[tuple[float, float]]:
        return [(s.time_s - start_s, s.value * scale) for s in samples]

    utilization = [
        Line(
            "CPU (cores busy)",
            over_time(records.gauge("resource/cpu_utilization")),
            PALETTE[0],
        ),
        Line(
            "memory / limit",
            over_time(records.gauge("resource/memory_utilization")),
            PALETTE[1],
        ),
    ]
    for key, samples in sorted(
        records.gauges.get("resource/gpu_utilization", {}).items()
    ):
        device = dict(key).get("device", "0")
        utilization.append(Line(f"GPU {device}", over_time(samples), PALETTE[3]))
    cpu_chart = line_chart(
        "CPU, memory and GPU utilisation",
        [line for line in utilization if line.points],
        x_format=x_format,
        y_format=_number,
    )
    memory = [
        Line(
            "resident memory (MiB)",
            over_time(records.gauge("resource/memory_rss"), 1 / 2**20),
            PALETTE[1],
        )
    ]
    for key, samples in sorted(
        records.gauges.get("resource/gpu_memory_allocated", {}).items()
    ):
        device = dict(key).get("device", "0")
        memory.append(
            Line(
                f"GPU {device} allocated (MiB)",
                over_time(samples, 1 / 2**20),
                PALETTE[3],
            )
        )
    memory_chart = line_chart(
        "Memory",
        [line for line in memory if line.points],
        x_format=x_format,
        y_format=_number,
    )
    network = []
    for index, (label, name) in enumerate(
        (
            ("sent", "resource/network_sent_bytes"),
            ("received", "resource/network_received_bytes"),
        )
    ):
        rates = counter_rates(_merged_counter(records, name))
        network.append(
            Line(
                f"{label} (KiB/s)",
                [(t - start_s, r / 1024) for t, r in rates],
                PALETTE[index],
            )
        )
    network_chart = line_chart(
        "Network, host-wide",
        [line for line in network if line.points],
        x_format=x_format,
        y_format=_number,
    )
    return "<h2>Resource use</h2>" + cpu_chart + memory_chart + network_chart


# --- helpers -------------------------------------------------------------------


def _merged_counter(records: RunRecords, name: str) -> list[Any]:
    series = records.counters.get(name, {})
    if len(series) == 1:
        return next(iter(series.values()))
    return records.counter(name)


def _event_time_mapping(samples: Sequence[Sample]) -> list[tuple[float, int]] | None:
    pairs = sorted(
        (s.time_s, s.event_time_ms) for s in samples if s.event_time_ms is not None
    )
    return pairs or None


def _markers(
    records: RunRecords, to_event_ms: list[tuple[float, int]] | None
) -> list[Marker]:
    start_s = records.first_time_s or 0.0
    markers = []
    for event in records.events:
        if to_event_ms is None:
            x = event.time_s - start_s
        elif event.event_time_ms is not None:
            x = float(event.event_time_ms)
        else:
            x = float(_interpolate_event_ms(to_event_ms, event.time_s))
        details = ", ".join(
            f"{k}={_format_detail(v)}" for k, v in event.details.items()
        )
        title = f"{EVENT_TITLES.get(event.kind, event.kind)}: {details}".rstrip(": ")
        markers.append(Marker(x, event.kind, title))
    return markers


def _interpolate_event_ms(mapping: list[tuple[float, int]], time_s: float) -> int:
    times = [time for time, _ in mapping]
    index = bisect.bisect_left(times, time_s)
    if index == 0:
        return mapping[0][1]
    if index >= len(mapping):
        return mapping[-1][1]
    (t0, e0), (t1, e1) = mapping[index - 1], mapping[index]
    share = (time_s - t0) / (t1 - t0) if t1 > t0 else 0.0
    return round(e0 + share * (e1 - e0))


def _xy(samples: Sequence[Sample], use_event_time: bool) -> list[tuple[float, float]]:
    if use_event_time:
        return [
            (float(s.event_time_ms), s.value)
            for s in samples
            if s.event_time_ms is not None
        ]
    start_s = samples[0].time_s if samples else 0.0
    return [(s.time_s - start_s, s.value) for s in samples]


def _first_seen(records: RunRecords, version: str) -> float:
    times = [
        samples[0].time_s
        for metric in records.gauges.values()
        for key, samples in metric.items()
        if dict(key).get("version") == version
    ]
    return min(times, default=0.0)


def _date_format(samples: Sequence[Sample]) -> Formatter:
    event_ms = [s.event_time_ms for s in samples if s.event_time_ms is not None]
    span_days = (max(event_ms) - min(event_ms)) / 86_400_000 if event_ms else 0
    pattern = "%Y-%m-%d" if span_days > 3 else "%m-%d %H:%M"

    def format_ms(value: float) -> str:
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC).strftime(pattern)

    return format_ms


def _elapsed_format(records: RunRecords) -> Formatter:
    def format_elapsed(seconds: float) -> str:
        seconds = max(0.0, seconds)
        if seconds >= 3600:
            return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}"
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"

    return format_elapsed


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _number(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:,.0f}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _maybe(metrics: dict[str, float], name: str, formatter: Formatter) -> str:
    value = metrics.get(name)
    return "" if value is None else escape(formatter(value))


def _format_detail(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
