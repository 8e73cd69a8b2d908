"""The JSON-lines sink: every point, event and confusion matrix of a run,
one JSON object per line, in ``RUN_DIR/metrics.jsonl``.

Record formats (all times in seconds since the Unix epoch, UTC):

``{"type": "run", "time": T, "job": J, "model": M}``
    First line written by each process that opens the file.
``{"type": "point", "time": T, "name": N, "kind": K, "labels": {...},
"value": V, "start_time": S, "event_time_ms": E}``
    One metric point. ``kind`` is ``counter``, ``gauge`` or
    ``distribution``. A counter's ``value`` is its cumulative total since
    ``start_time``; a new ``start_time`` means the process restarted and the
    total began again at zero. A distribution's ``value`` is one
    observation. ``start_time`` and ``event_time_ms`` appear only when set.
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


class JsonLinesSink(Sink):
    """Append telemetry records to ``run_dir/metrics.jsonl``.

    Writes are buffered and reach the disk at least every
    ``flush_interval_s`` seconds of the clock (checked on each write), on
    ``flush()`` and on ``close()``.

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
        flush_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(run_dir) / METRICS_FILE_NAME
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Guards _file and _last_flush_s.
        self._lock = threading.Lock()
        # A large buffer: the file is written on flush, not every 8 KiB.
        self._file: TextIO | None = self.path.open(
            "a", encoding="utf-8", buffering=_BUFFER_BYTES
        )
        self._last_flush_s = clock()
        # Encoded name, kind and labels of each series seen, by (name, labels).
        self._series_json: dict[tuple[str, tuple[str, ...]], str] = {}
        self._write(
            {"type": "run", "time": self._last_flush_s, "job": job, "model": model}
        )
        logger.info("writing metrics to %s", self.path)

    def write_point(self, point: Point) -> None:
        # Points are the hot path (several per micro-batch), so the parts of
        # a line that never change for a series are encoded once.
        key = (point.spec.name, point.labels)
        series_json = self._series_json.get(key)
        if series_json is None:
            series_json = _series_json(point)
            self._series_json[key] = series_json
        extra = ""
        if point.spec.is_counter:
            extra = f',"start_time":{_number_json(point.start_time_s)}'
        if point.event_time_ms is not None:
            extra += f',"event_time_ms":{int(point.event_time_ms)}'
        line = (
            f'{{"type":"point","time":{_number_json(point.time_s)},{series_json},'
            f'"value":{_number_json(point.value)}{extra}}}\n'
        )
        self._write_line(line, point.time_s)

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
            if self._file is not None:
                self._file.flush()
                self._last_flush_s = self._clock()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=_plain) + "\n"
        self._write_line(line, record["time"])

    def _write_line(self, line: str, now: float) -> None:
        with self._lock:
            if self._file is None:
                logger.debug("dropped a record written after close: %s", line)
                return
            self._file.write(line)
            if now - self._last_flush_s >= self.flush_interval_s:
                self._file.flush()
                self._last_flush_s = now


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
