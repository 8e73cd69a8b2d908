"""The learning sections of the report: prequential accuracy and loss over
event time with decisions marked, holdout metrics per version, and the
confusion matrix."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from html import escape

from streaming.report.charts import (
    PALETTE,
    Bar,
    Line,
    Marker,
    bar_chart,
    heatmap,
    line_chart,
)
from streaming.report.formats import (
    date_format,
    detail_text,
    elapsed_format,
    number_text,
    optional_text,
    percent_text,
)
from streaming.report.records import RunRecords, Sample

EVENT_TITLES = {
    "promotion": "promoted",
    "rejection": "rejected",
    "rollback": "rolled back",
    "drift_alarm": "drift alarm",
}


def quality_section(records: RunRecords) -> str:
    top1 = records.gauge("prequential/top1_accuracy")
    top5 = records.gauge("prequential/top5_accuracy")
    loss = records.gauge("training/loss")
    to_event_ms = _event_time_mapping(top5 or top1 or loss)
    markers = _markers(records, to_event_ms)
    use_event_time = to_event_ms is not None
    x_format = date_format(top5 or loss) if use_event_time else elapsed_format(records)
    axis = "event time" if use_event_time else "time since start"

    accuracy = line_chart(
        f"Prequential accuracy (test-then-train) over {axis}",
        [
            Line("top-5", _xy(top5, use_event_time), PALETTE[0]),
            Line("top-1", _xy(top1, use_event_time), PALETTE[1]),
        ],
        x_format=x_format,
        y_format=percent_text,
        markers=markers,
        y_range=(0.0, 1.0),
    )
    loss_chart = line_chart(
        f"Training loss (cross-entropy, nats) over {axis}",
        [Line("loss", _xy(loss, use_event_time), PALETTE[2])],
        x_format=x_format,
        y_format=number_text,
        markers=markers,
    )
    return "<h2>Learning</h2>" + accuracy + loss_chart


def holdout_section(records: RunRecords) -> str:
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
        "Holdout top-5 accuracy per version", order, bars, y_format=percent_text
    )
    rows = []
    for (version, role), metrics in sorted(
        latest.items(), key=lambda item: (order.index(item[0][0]), item[0][1])
    ):
        cells = [
            optional_text(metrics, "holdout/top1_accuracy", percent_text),
            optional_text(metrics, "holdout/top5_accuracy", percent_text),
            optional_text(metrics, "holdout/loss", number_text),
        ]
        numbers = "".join(f'<td class="number">{cell}</td>' for cell in cells)
        rows.append(
            f"<tr><td>{escape(version)}</td><td>{escape(role)}</td>{numbers}</tr>"
        )
    table = (
        "<table><tr><th>version</th><th>role</th><th>top-1</th><th>top-5</th>"
        "<th>loss</th></tr>" + "".join(rows) + "</table>"
    )
    note = (
        "<p>Each row shows a model at the latest gate it took part in: a "
        "candidate (cN) when it met the gate, a version (vN) when it served and "
        "a later candidate met it. The holdout window moves between gates, so "
        "a candidate and the version it became (such as c5 and v3), and the "
        "numbers in <code>versions list</code>, come from different events.</p>"
    )
    return "<h2>Holdout metrics per version</h2>" + note + chart + table


def confusion_section(records: RunRecords, top_roles: int) -> str:
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
        details = ", ".join(f"{k}={detail_text(v)}" for k, v in event.details.items())
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
