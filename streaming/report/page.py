"""Compose the run report: one self-contained HTML page of inline SVG."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from streaming.decisions import account_decisions, describe_decision
from streaming.job_metrics import moves_back
from streaming.report.formats import detail_text, duration_text, utc_text
from streaming.report.learning import (
    EVENT_TITLES,
    confusion_section,
    holdout_section,
    quality_section,
)
from streaming.report.records import RunRecords
from streaming.report.system import resource_section, throughput_section

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

# A long run may decide thousands of times; the page lists the latest.
MAX_DECISION_ROWS = 300
# Records of the decision log that metrics.jsonl has as events already.
_RECORDED_AS_EVENTS = frozenset({"promotion", "rejection", "rollback"})


def render_page(records: RunRecords, run_dir: Path, top_roles: int = 10) -> str:
    """Return the report page for one run."""
    sections = [
        _header(records, run_dir),
        _summary(records),
        quality_section(records),
        holdout_section(records),
        confusion_section(records, top_roles),
        throughput_section(records),
        resource_section(records),
        _decisions_section(records),
        _job_records_section(run_dir),
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>streamlearn report: {escape(records.job)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _header(records: RunRecords, run_dir: Path) -> str:
    span = ""
    if records.first_time_s is not None and records.last_time_s is not None:
        start = utc_text(records.first_time_s)
        span = f"{start} to {utc_text(records.last_time_s)} UTC, " + duration_text(
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
        details = ", ".join(f"{k}={detail_text(v)}" for k, v in event.details.items())
        event_time = ""
        if event.event_time_ms is not None:
            event_time = utc_text(event.event_time_ms / 1000)
        rows.append(
            f'<tr><td class="when">{utc_text(event.time_s)}</td>'
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


def _job_records_section(run_dir: Path) -> str:
    """List the decision log's records that metrics.jsonl does not carry.

    These are candidates kept in training while promotion is paused, drift
    alerts without a rollback, adoptions of an operator's move to a newer
    version, restores and failures, in the words of the job's account. An
    adopted move to an older version is listed above, as a rollback.
    """
    records = [
        record
        for record in account_decisions(run_dir / "decisions.jsonl")
        if record["kind"] not in _RECORDED_AS_EVENTS
        and not (record["kind"] == "adopted" and moves_back(record))
    ]
    title = "<h2>Other job records</h2>"
    if not records:
        return title + "<p>None recorded.</p>"
    latest = records[-MAX_DECISION_ROWS:]
    rows = [
        f'<tr><td class="when">{_time_text(record.get("time"))}</td>'
        f'<td class="details">{escape(_shortened(describe_decision(record)))}</td>'
        "</tr>"
        for record in latest
    ]
    note = ""
    if len(records) > len(latest):
        note = (
            f"<p>The {len(records) - len(latest)} earlier records are in "
            "decisions.jsonl.</p>"
        )
    return (
        title
        + note
        + "<table><tr><th>time (UTC)</th><th>what</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _shortened(text: str, limit: int = 2000) -> str:
    """Return ``text`` cut to ``limit`` characters, marked where it was cut."""
    return text if len(text) <= limit else text[:limit] + " [cut]"


def _time_text(value: Any) -> str:
    """Return a record's time as UTC text, or "" for a time no date can show."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    try:
        return escape(utc_text(float(value)))
    except (OverflowError, ValueError, OSError):
        return ""
