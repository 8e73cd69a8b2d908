"""Read ``RUN_DIR/metrics.jsonl`` into series the report can draw.

The record formats are described in ``streaming.monitoring.sinks.jsonl``.
Lines that are not valid JSON (a line cut short by a crash) are skipped and
counted.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One value at wall-clock ``time_s``, with its event time when known."""

    time_s: float
    value: float
    event_time_ms: int | None = None


@dataclass(frozen=True)
class CounterSample:
    """A counter's total at ``time_s``, counted since ``start_time_s``."""

    time_s: float
    total: float
    start_time_s: float


@dataclass(frozen=True)
class RunEvent:
    """A promotion, rejection, rollback or drift alarm."""

    kind: str
    time_s: float
    labels: dict[str, str]
    details: dict[str, Any]
    event_time_ms: int | None = None


@dataclass(frozen=True)
class Confusion:
    """Counts of (true, predicted) label pairs written for one version."""

    time_s: float
    version: str
    source: str
    counts: dict[tuple[str, str], int]


@dataclass
class RunRecords:
    """Everything in one run's metrics file, grouped by series."""

    job: str = ""
    model: str = ""
    gauges: dict[str, dict[LabelKey, list[Sample]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    counters: dict[str, dict[LabelKey, list[CounterSample]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    distributions: dict[str, list[Sample]] = field(
        default_factory=lambda: defaultdict(list)
    )
    events: list[RunEvent] = field(default_factory=list)
    confusions: list[Confusion] = field(default_factory=list)
    first_time_s: float | None = None
    last_time_s: float | None = None
    skipped_lines: int = 0

    def gauge(self, name: str, **labels: str) -> list[Sample]:
        """Return the samples of one gauge series (empty if absent)."""
        return list(self.gauges.get(name, {}).get(_label_key(labels), []))

    def counter(self, name: str, **labels: str) -> list[CounterSample]:
        """Return the samples of one counter series (empty if absent)."""
        return list(self.counters.get(name, {}).get(_label_key(labels), []))

    def counter_final_total(self, name: str) -> float:
        """Return a counter's total over the whole run, summed over label
        values and over process restarts."""
        total = 0.0
        for samples in self.counters.get(name, {}).values():
            total += sum(_segment_totals(samples))
        return total

    def counter_totals_by_label(self, name: str) -> dict[LabelKey, float]:
        return {
            key: sum(_segment_totals(samples))
            for key, samples in self.counters.get(name, {}).items()
        }


def _label_key(labels: dict[str, Any]) -> LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _segment_totals(samples: list[CounterSample]) -> list[float]:
    """Return the last total of each process (each distinct start time)."""
    last_by_start: dict[float, float] = {}
    for sample in samples:
        last_by_start[sample.start_time_s] = sample.total
    return list(last_by_start.values())


def read_run(run_dir: Path) -> RunRecords:
    """Read ``run_dir/metrics.jsonl``; raise FileNotFoundError if missing."""
    path = Path(run_dir) / "metrics.jsonl"
    records = RunRecords()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                _add(records, json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                # Not JSON (a line cut short by a crash; JSONDecodeError is a
                # ValueError) or a record without the fields of its type.
                records.skipped_lines += 1
    if records.skipped_lines:
        logger.warning(
            "skipped %d lines of %s that are not valid records",
            records.skipped_lines,
            path,
        )
    return records


def _add(records: RunRecords, record: dict[str, Any]) -> None:
    kind = record.get("type")
    time_s = float(record.get("time", 0.0))
    if records.first_time_s is None or time_s < records.first_time_s:
        records.first_time_s = time_s
    if records.last_time_s is None or time_s > records.last_time_s:
        records.last_time_s = time_s

    if kind == "point":
        _add_point(records, record, time_s)
    elif kind == "event":
        records.events.append(
            RunEvent(
                kind=str(record["event"]),
                time_s=time_s,
                labels=dict(record.get("labels", {})),
                details=dict(record.get("details", {})),
                event_time_ms=record.get("event_time_ms"),
            )
        )
    elif kind == "confusion":
        counts = {
            (str(true), str(predicted)): int(count)
            for true, predicted, count in record.get("counts", [])
        }
        records.confusions.append(
            Confusion(time_s, str(record["version"]), str(record["source"]), counts)
        )
    elif kind == "run":
        records.job = str(record.get("job", records.job))
        records.model = str(record.get("model", records.model))
    else:
        records.skipped_lines += 1


def _add_point(records: RunRecords, record: dict[str, Any], time_s: float) -> None:
    name = str(record["name"])
    key = _label_key(record.get("labels", {}))
    point_kind = record.get("kind")
    if point_kind == "distribution":
        # Stored as the mean of the observations the line summarizes.
        count = int(record.get("count", 0))
        if count:
            mean = float(record["sum"]) / count
            records.distributions[name].append(Sample(time_s, mean))
        return
    value = float(record["value"])
    if point_kind == "counter":
        start_s = float(record.get("start_time", 0.0))
        records.counters[name][key].append(CounterSample(time_s, value, start_s))
    else:
        records.gauges[name][key].append(
            Sample(time_s, value, record.get("event_time_ms"))
        )


def counter_rates(
    samples: list[CounterSample], max_points: int = 120
) -> list[tuple[float, float]]:
    """Return (bin middle time, increase per second) over equal time bins.

    Increases are taken between successive samples of one process; a new
    start time (a restart) begins a new sequence instead of a negative step.
    Each step's increase is spread evenly over the time it covers, so a long
    step does not show as a spike in one bin. Bins are at least twice the
    median step long, so sparse samples do not leave empty bins between them.
    """
    steps: list[tuple[float, float, float]] = []  # (start, end, increase)
    for previous, sample in itertools.pairwise(samples):
        if previous.start_time_s != sample.start_time_s:
            continue
        if sample.time_s > previous.time_s:
            increase = sample.total - previous.total
            steps.append((previous.time_s, sample.time_s, increase))
    if not steps:
        return []
    first_s, last_s = steps[0][0], steps[-1][1]
    median_step_s = statistics.median(end - start for start, end, _ in steps)
    width_s = max((last_s - first_s) / max_points, 2 * median_step_s)
    bins = max(1, math.ceil((last_s - first_s) / width_s))
    sums = [0.0] * bins
    for start, end, increase in steps:
        rate = increase / (end - start)
        first_bin = int((start - first_s) / width_s)
        last_bin = min(bins - 1, int((end - first_s) / width_s))
        for index in range(first_bin, last_bin + 1):
            low = first_s + index * width_s
            overlap = min(end, low + width_s) - max(start, low)
            if overlap > 0:
                sums[index] += rate * overlap
    return [
        (first_s + (index + 0.5) * width_s, total / width_s)
        for index, total in enumerate(sums)
    ]
