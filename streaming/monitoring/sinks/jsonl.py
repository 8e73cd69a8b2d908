"""The JSON-lines sink: the points, events and confusion matrices of a run,
one JSON object per line, in ``RUN_DIR/metrics.jsonl``.

A series gets at most one line per ``point_interval_s`` (1 s by default),
so a job that records every micro-batch for a day writes megabytes, not
gigabytes. A counter line carries the latest total and a gauge line the
latest value; a distribution line summarizes the observations since the
previous one. Events and confusion matrices are written when they happen.

Record formats (all times in seconds since the Unix epoch, UTC):

``{"type": "run", "time": T, "job": J, "model": M}``
    First line written by each process that opens the file.
``{"type": "point", "time": T, "name": N, "kind": K, "labels": {...},
"value": V, "start_time": S, "event_time_ms": E}``
    One counter or gauge point. ``kind`` is ``counter`` or ``gauge``. A
    counter's ``value`` is its total since ``start_time``; a new
    ``start_time`` means the process restarted and the total began again at
    zero. ``start_time`` (counters) and ``event_time_ms`` appear only when
    set.
``{"type": "point", "time": T, "name": N, "kind": "distribution",
"labels": {...}, "count": C, "sum": S, "min": A, "max": B}``
    The observations of a distribution since its previous line.
``{"type": "event", "time": T, "event": KIND, "labels": {...},
"details": {...}, "event_time_ms": E}``
    A promotion, rejection, rollback or drift alarm.
``{"type": "confusion", "time": T, "version": V, "source": S,
"counts": [[TRUE, PREDICTED, N], ...], "event_time_ms": E}``
    A confusion matrix of top-1 predictions.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat, TextIO

from streaming.monitoring.telemetry import (
    Clock,
    ConfusionCounts,
    Point,
    RecordedEvent,
    Sink,
)

logger = logging.getLogger(__name__)

METRICS_FILE_NAME = "metrics.jsonl"
_BUFFER_BYTES = 1 << 20


@dataclass
class _Summary:
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)


@dataclass
class _SeriesLog:
    """State the sink keeps for one series between its lines."""

    series_json: str
    last_written_s: float = -math.inf
    pending: Point | None = None
    summary: _Summary | None = None


class JsonLinesSink(Sink):
    """Append telemetry records to ``run_dir/metrics.jsonl``.

    Writes are buffered. Every ``flush_interval_s`` seconds of the clock
    (checked on each write), on ``flush()`` and on ``close()``, the sink
    writes the lines that are due and flushes the file. ``flush()`` and
    ``close()`` also write every point still held back by
    ``point_interval_s``; 0 writes every point as it comes.

    NOTE: one process per file. Buffered writes of two processes appending
    to the same file can interleave in the middle of a line.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        job: str,
        model: str,
        clock: Clock,
        point_interval_s: float = 1.0,
        flush_interval_s: float = 1.0,
    ) -> None:
        if point_interval_s < 0 or flush_interval_s < 0:
            raise ValueError(
                "point_interval_s and flush_interval_s must be >= 0, got "
                f"{point_interval_s} and {flush_interval_s}"
            )
        self.path = Path(run_dir) / METRICS_FILE_NAME
        self.point_interval_s = point_interval_s
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Guards _file, _last_flush_s and _series.
        self._lock = threading.Lock()
        # A large buffer: the file is written on flush, not every 8 KiB.
        self._file: TextIO | None = self.path.open(
            "a", encoding="utf-8", buffering=_BUFFER_BYTES
        )
        self._last_flush_s = clock()
        self._series: dict[tuple[str, tuple[str, ...]], _SeriesLog] = {}
        # Writes and flushes that failed, such as on a full disk.
        self.failed_writes = 0
        self._write(
            {"type": "run", "time": self._last_flush_s, "job": job, "model": model}
        )
        logger.info("writing metrics to %s", self.path)

    def write_point(self, point: Point) -> None:
        key = (point.spec.name, point.labels)
        now = point.time_s
        with self._lock:
            log = self._series.get(key)
            if log is None:
                # The parts of a line that never change for a series are
                # encoded once: points are the hot path.
                log = _SeriesLog(_series_json(point))
                self._series[key] = log
            due = now - log.last_written_s >= self.point_interval_s
            if point.spec.is_distribution:
                if log.summary is None:
                    log.summary = _Summary()
                log.summary.add(point.value)
                if due:
                    self._write_summary(log, now)
            elif due:
                self._write_locked(_point_line(log.series_json, point))
                log.last_written_s = now
                log.pending = None
            else:
                log.pending = point
            if now - self._last_flush_s >= self.flush_interval_s:
                self._flush_locked(now, held_back_too=False)

    def write_event(self, event: RecordedEvent) -> None:
        record: dict[str, Any] = {
            "type": "event",
            "time": event.time_s,
            "event": event.kind.value,
            "labels": dict(event.labels),
            "details": dict(event.details),
        }
        if event.event_time_ms is not None:
            record["event_time_ms"] = event.event_time_ms
        self._write(record)

    def write_confusion(self, confusion: ConfusionCounts) -> None:
        counts = [
            [true_label, predicted_label, count]
            for (true_label, predicted_label), count in sorted(confusion.counts.items())
        ]
        record: dict[str, Any] = {
            "type": "confusion",
            "time": confusion.time_s,
            "version": confusion.version,
            "source": confusion.source,
            "counts": counts,
        }
        if confusion.event_time_ms is not None:
            record["event_time_ms"] = confusion.event_time_ms
        self._write(record)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked(self._clock(), held_back_too=True)

    def close(self) -> None:
        with self._lock:
            self._flush_locked(self._clock(), held_back_too=True)
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as error:
                    self._failed(error)
                self._file = None

    def _flush_locked(self, now: float, *, held_back_too: bool) -> None:
        """Write the held-back points that are due (all of them when
        ``held_back_too``), then flush the file."""
        for log in self._series.values():
            due = held_back_too or now - log.last_written_s >= self.point_interval_s
            if not due:
                continue
            if log.pending is not None:
                self._write_locked(_point_line(log.series_json, log.pending))
                log.last_written_s = log.pending.time_s
                log.pending = None
            if log.summary is not None and log.summary.count:
                self._write_summary(log, now)
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as error:
                self._failed(error)
        self._last_flush_s = now

    def _write_summary(self, log: _SeriesLog, now: float) -> None:
        summary = log.summary
        if summary is None:
            return
        line = (
            f'{{"type":"point","time":{_number_json(now)},{log.series_json},'
            f'"count":{summary.count},"sum":{_number_json(summary.total)},'
            f'"min":{_number_json(summary.minimum)},'
            f'"max":{_number_json(summary.maximum)}}}\n'
        )
        self._write_locked(line)
        log.summary = _Summary()
        log.last_written_s = now

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=_plain) + "\n"
        with self._lock:
            self._write_locked(line)

    def _write_locked(self, line: str) -> None:
        if self._file is None:
            logger.debug("dropped a record written after close: %s", line)
            return
        try:
            self._file.write(line)
        except OSError as error:
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        """Count a failed write; the job goes on without metrics meanwhile.

        A full disk must not stop learning. The first failure is logged.
        """
        self.failed_writes += 1
        if self.failed_writes == 1:
            logger.error(
                "cannot write metrics to %s: %s; records are dropped until "
                "writing works again",
                self.path,
                error,
            )


def _series_json(point: Point) -> str:
    spec = point.spec
    if spec.is_distribution:
        kind = "distribution"
    elif spec.is_counter:
        kind = "counter"
    else:
        kind = "gauge"
    labels = json.dumps(point.label_dict(), separators=(",", ":"))
    return f'"name":{json.dumps(spec.name)},"kind":"{kind}","labels":{labels}'


def _point_line(series_json: str, point: Point) -> str:
    extra = ""
    if point.spec.is_counter:
        extra = f',"start_time":{_number_json(point.start_time_s)}'
    if point.event_time_ms is not None:
        extra += f',"event_time_ms":{int(point.event_time_ms)}'
    return (
        f'{{"type":"point","time":{_number_json(point.time_s)},{series_json},'
        f'"value":{_number_json(point.value)}{extra}}}\n'
    )


def _number_json(value: float) -> str:
    # Telemetry passes only Python ints and floats. repr gives the shortest
    # round-tripping form, as json.dumps does, but NaN and infinities need
    # json.dumps.
    if isinstance(value, int) or math.isfinite(value):
        return repr(value)
    return json.dumps(value)


def _plain(value: Any) -> Any:
    """Convert a detail value json cannot encode: numbers (numpy, torch
    scalars) to float, anything else to its string form."""
    if isinstance(value, SupportsFloat):
        return float(value)
    return str(value)
