"""The in-process telemetry API: counters, gauges, distributions and events.

``Telemetry`` checks every call against the catalogue, keeps the cumulative
totals of counters, and hands each point to its sinks (a JSON-lines file,
Beam metrics, Cloud Monitoring). Sinks must return quickly: a sink that talks
to a network buffers the point and sends it from its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, SupportsFloat

from streaming.monitoring.catalogue import (
    EVENT_COUNTERS,
    EventKind,
    MetricSpec,
    ValueType,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
LabelValues = tuple[str, ...]
DetailValue = str | int | float | bool | None


class MetricError(ValueError):
    """A call that does not match the metric's catalogue entry."""


@dataclass(frozen=True, slots=True)
class Point:
    """One value written to one series, as every sink receives it.

    ``labels`` contains the values of ``spec.labels`` in the same order. For a
    counter, ``value`` is the cumulative total since ``start_time_s`` and
    ``increment`` the amount just added. For a gauge, ``value`` is the current
    value. For a distribution, ``value`` is the single observation just made.
    Times are seconds since the Unix epoch from the telemetry's clock;
    ``event_time_ms`` is the event time the value refers to, when the caller
    gave one.
    """

    spec: MetricSpec
    labels: LabelValues
    value: float
    time_s: float
    start_time_s: float
    increment: float = 0.0
    event_time_ms: int | None = None

    def label_dict(self) -> dict[str, str]:
        return dict(zip(self.spec.labels, self.labels, strict=True))


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A decision or alarm: a promotion, rejection, rollback or drift alarm.

    ``labels`` are the labels of the event's counter (``trigger`` for a
    rollback, ``detector`` for a drift alarm). ``details`` carries the numbers
    behind the decision (versions, scores, reason) for the report.
    """

    kind: EventKind
    time_s: float
    labels: Mapping[str, str]
    details: Mapping[str, DetailValue]
    event_time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ConfusionCounts:
    """Counts of (true label, predicted top-1 label) pairs for one version.

    ``source`` names the events that were scored: ``holdout`` for the
    holdout window, ``prequential`` for the live stream.
    """

    version: str
    source: str
    counts: Mapping[tuple[str, str], int]
    time_s: float = 0.0
    event_time_ms: int | None = None


class ConfusionTable(Protocol):
    """A square confusion matrix: ``counts[i][j]`` events had the true label
    ``labels[i]`` and the predicted label ``labels[j]``."""

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def counts(self) -> Sequence[Sequence[int]]: ...


class Sink:
    """Destination of points, events and confusion matrices.

    Every method runs on the caller's thread, so it must return without
    waiting on I/O that can stall, such as a network call. The default
    methods discard what they receive.
    """

    def write_point(self, point: Point) -> None:
        pass

    def write_event(self, event: RecordedEvent) -> None:
        pass

    def write_confusion(self, confusion: ConfusionCounts) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _CounterState:
    total: float = 0
    start_time_s: float = 0.0


@dataclass
class _SeriesStarts:
    counters: dict[tuple[str, LabelValues], _CounterState] = field(default_factory=dict)
    distributions: dict[tuple[str, LabelValues], float] = field(default_factory=dict)


class Telemetry:
    """Record metrics and events and fan them out to sinks.

    Thread-safe: the job's DoFns, the resource sampler and the exporter's
    error reporting may call it from different threads.

    >>> from streaming.monitoring.catalogue import EVENTS_LEARNED
    >>> telemetry = Telemetry([], clock=lambda: 1000.0)
    >>> telemetry.count(EVENTS_LEARNED, 256)
    >>> telemetry.count(EVENTS_LEARNED, 256)
    >>> telemetry.counter_total(EVENTS_LEARNED)
    512
    """

    def __init__(self, sinks: Sequence[Sink], clock: Clock = time.time) -> None:
        self.sinks = tuple(sinks)
        self.clock = clock
        # Guards _starts and the order in which points reach the sinks, so
        # each sink receives a counter's totals in increasing order.
        self._lock = threading.Lock()
        self._starts = _SeriesStarts()
        self._closed = False

    def count(
        self,
        spec: MetricSpec,
        increment: SupportsFloat = 1,
        *,
        event_time_ms: int | None = None,
        **labels: str,
    ) -> None:
        """Add ``increment`` (zero or more) to a counter."""
        if not spec.is_counter:
            raise MetricError(f"{spec.name} is a {_kind_word(spec)}, not a counter")
        amount = _coerce(spec, increment)
        if amount < 0:
            raise MetricError(
                f"{spec.name}: counter increment must be >= 0, got {amount}"
            )
        values = _label_values(spec, labels)
        with self._lock:
            now = self.clock()
            key = (spec.name, values)
            state = self._starts.counters.get(key)
            if state is None:
                state = _CounterState(start_time_s=now)
                self._starts.counters[key] = state
            state.total += amount
            point = Point(
                spec,
                values,
                state.total,
                now,
                state.start_time_s,
                amount,
                event_time_ms,
            )
            self._fan_out(point)

    def set(
        self,
        spec: MetricSpec,
        value: SupportsFloat,
        *,
        event_time_ms: int | None = None,
        **labels: str,
    ) -> None:
        """Set a gauge to ``value``."""
        if not spec.is_gauge:
            raise MetricError(f"{spec.name} is a {_kind_word(spec)}, not a gauge")
        number = _coerce(spec, value)
        values = _label_values(spec, labels)
        with self._lock:
            now = self.clock()
            point = Point(spec, values, number, now, now, 0.0, event_time_ms)
            self._fan_out(point)

    def observe(
        self,
        spec: MetricSpec,
        value: SupportsFloat,
        *,
        event_time_ms: int | None = None,
        **labels: str,
    ) -> None:
        """Add one observation (a latency, a batch size) to a distribution."""
        if not spec.is_distribution:
            raise MetricError(
                f"{spec.name} is a {_kind_word(spec)}, not a distribution"
            )
        number = float(value)
        values = _label_values(spec, labels)
        with self._lock:
            now = self.clock()
            start = self._starts.distributions.setdefault((spec.name, values), now)
            point = Point(spec, values, number, now, start, 0.0, event_time_ms)
            self._fan_out(point)

    def record_event(
        self,
        kind: EventKind,
        *,
        event_time_ms: int | None = None,
        labels: Mapping[str, str] | None = None,
        **details: DetailValue,
    ) -> None:
        """Record a promotion, rejection, rollback or drift alarm.

        Adds one to the event's counter (with ``labels``) and writes the event
        with its ``details`` to the sinks, so the report can mark it.
        """
        counter = EVENT_COUNTERS[kind]
        label_map = dict(labels or {})
        self.count(counter, 1, event_time_ms=event_time_ms, **label_map)
        with self._lock:
            event = RecordedEvent(
                kind, self.clock(), label_map, dict(details), event_time_ms
            )
            for sink in self.sinks:
                sink.write_event(event)

    def record_confusion(
        self,
        counts: Mapping[tuple[str, str], int] | ConfusionTable,
        *,
        version: str,
        source: str = "holdout",
        event_time_ms: int | None = None,
    ) -> None:
        """Write a confusion matrix of top-1 predictions.

        ``counts`` maps (true, predicted) label pairs to counts, or is a
        table with ``labels`` and ``counts[row][column]`` (rows true labels),
        such as ``online_model.evaluation.ConfusionMatrix``.
        """
        pairs = dict(counts) if isinstance(counts, Mapping) else _table_pairs(counts)
        with self._lock:
            confusion = ConfusionCounts(
                version, source, pairs, self.clock(), event_time_ms
            )
            for sink in self.sinks:
                sink.write_confusion(confusion)

    def counter_total(self, spec: MetricSpec, **labels: str) -> float:
        """Return a counter's cumulative total in this process (0 if unseen)."""
        values = _label_values(spec, labels)
        with self._lock:
            state = self._starts.counters.get((spec.name, values))
            return 0.0 if state is None else state.total

    def flush(self) -> None:
        """Flush every sink's buffers (files; not network exports)."""
        with self._lock:
            for sink in self.sinks:
                sink.flush()

    def close(self) -> None:
        """Flush and close every sink. Later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sinks = self.sinks
        # Outside the lock: an exporter's close joins its thread, which may
        # report an error through this object.
        for sink in sinks:
            sink.close()
        logger.debug("telemetry closed (%d sinks)", len(sinks))

    def _fan_out(self, point: Point) -> None:
        for sink in self.sinks:
            sink.write_point(point)


def _label_values(spec: MetricSpec, labels: Mapping[str, str]) -> LabelValues:
    if len(labels) != len(spec.labels):
        raise MetricError(
            f"{spec.name}: expected labels {list(spec.labels)}, got {sorted(labels)}"
        )
    try:
        return tuple(str(labels[key]) for key in spec.labels)
    except KeyError:
        raise MetricError(
            f"{spec.name}: expected labels {list(spec.labels)}, got {sorted(labels)}"
        ) from None


def _table_pairs(table: ConfusionTable) -> dict[tuple[str, str], int]:
    pairs: dict[tuple[str, str], int] = {}
    for row_label, row in zip(table.labels, table.counts, strict=True):
        for column_label, count in zip(table.labels, row, strict=True):
            if count:
                pairs[(row_label, column_label)] = int(count)
    return pairs


def _coerce(spec: MetricSpec, value: SupportsFloat) -> float:
    """Return ``value`` as a Python int for INT64 metrics, else a float, so
    numpy and torch scalars never reach the sinks."""
    if spec.value_type is ValueType.INT64:
        number = float(value)
        whole = int(number)
        if whole != number:
            raise MetricError(f"{spec.name} takes whole numbers, got {value}")
        return whole
    return float(value)


def _kind_word(spec: MetricSpec) -> str:
    if spec.is_distribution:
        return "distribution"
    return "counter" if spec.is_counter else "gauge"
