"""The state of exported series and the protos Cloud Monitoring receives.

``CloudMonitoringSink`` keeps one ``SeriesState`` per series, copies due
series into ``SeriesSnapshot`` values under its lock, and builds the
requests from the snapshots with the functions here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from google.api import distribution_pb2, label_pb2, metric_pb2
from google.cloud import monitoring_v3
from google.protobuf import timestamp_pb2

from streaming.monitoring.catalogue import (
    COMMON_LABELS,
    MetricKind,
    MetricSpec,
    ValueType,
)
from streaming.monitoring.telemetry import LabelValues


@dataclass
class DistributionState:
    """Running count, mean, squared deviation and bucket counts of the
    observations of one distribution series."""

    bounds: tuple[float, ...]
    count: int = 0
    mean: float = 0.0
    sum_of_squared_deviation: float = 0.0
    bucket_counts: list[int] = field(default_factory=list)

    def add(self, value: float) -> None:
        if not self.bucket_counts:
            self.bucket_counts = [0] * (len(self.bounds) + 1)
        # Welford's update keeps mean and squared deviation exact enough in
        # one pass.
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.sum_of_squared_deviation += delta * (value - self.mean)
        index = 0
        while index < len(self.bounds) and value >= self.bounds[index]:
            index += 1
        self.bucket_counts[index] += 1


@dataclass
class SeriesState:
    """The latest value of one series and when its last point was sent.

    ``changed`` is true when a value arrived after the last export.
    """

    spec: MetricSpec
    labels: LabelValues
    start_time_s: float
    value: float = 0.0
    distribution: DistributionState | None = None
    changed: bool = True
    last_end_s: float | None = None


@dataclass(frozen=True)
class SeriesSnapshot:
    """The values of one series at the moment it was taken for export."""

    key: tuple[str, LabelValues]
    spec: MetricSpec
    start_time_s: float
    end_s: float
    value: float
    distribution: DistributionState | None

    @classmethod
    def of(
        cls, key: tuple[str, LabelValues], series: SeriesState, end_s: float
    ) -> SeriesSnapshot:
        distribution = None
        if series.distribution is not None:
            state = series.distribution
            distribution = DistributionState(
                state.bounds,
                state.count,
                state.mean,
                state.sum_of_squared_deviation,
                list(state.bucket_counts),
            )
        return cls(
            key, series.spec, series.start_time_s, end_s, series.value, distribution
        )


def build_time_series(
    snapshot: SeriesSnapshot, common_labels: dict[str, str], resource: dict[str, Any]
) -> monitoring_v3.TimeSeries:
    """Build the one-point TimeSeries of a snapshot for CreateTimeSeries.

    ``common_labels`` are the ``job`` and ``model`` metric labels, and
    ``resource`` the monitored resource (type and labels).
    """
    spec = snapshot.spec
    labels = dict(common_labels)
    labels.update(zip(spec.labels, snapshot.key[1], strict=True))
    interval: dict[str, Any] = {"end_time": to_timestamp(snapshot.end_s)}
    if spec.kind is MetricKind.CUMULATIVE:
        interval["start_time"] = to_timestamp(snapshot.start_time_s)
    point = monitoring_v3.Point(
        interval=monitoring_v3.TimeInterval(**interval),
        value=_typed_value(snapshot),
    )
    return monitoring_v3.TimeSeries(
        metric={"type": spec.metric_type, "labels": labels},
        resource=resource,
        metric_kind=spec.kind.value,
        value_type=spec.value_type.value,
        points=[point],
    )


def _typed_value(snapshot: SeriesSnapshot) -> monitoring_v3.TypedValue:
    state = snapshot.distribution
    if state is not None:
        distribution = distribution_pb2.Distribution(
            count=state.count,
            mean=state.mean,
            sum_of_squared_deviation=state.sum_of_squared_deviation,
            bucket_counts=state.bucket_counts,
        )
        distribution.bucket_options.explicit_buckets.bounds.extend(state.bounds)
        return monitoring_v3.TypedValue(distribution_value=distribution)
    if snapshot.spec.value_type is ValueType.INT64:
        return monitoring_v3.TypedValue(int64_value=int(snapshot.value))
    return monitoring_v3.TypedValue(double_value=float(snapshot.value))


def metric_descriptor(spec: MetricSpec) -> metric_pb2.MetricDescriptor:
    """Build the Cloud Monitoring descriptor of a catalogue metric."""
    descriptor = metric_pb2.MetricDescriptor(
        type=spec.metric_type,
        metric_kind=metric_pb2.MetricDescriptor.MetricKind.Value(spec.kind.value),
        value_type=metric_pb2.MetricDescriptor.ValueType.Value(spec.value_type.value),
        unit=spec.unit,
        description=spec.description,
        display_name=spec.name,
    )
    for key in COMMON_LABELS + spec.labels:
        descriptor.labels.append(
            label_pb2.LabelDescriptor(
                key=key, value_type=label_pb2.LabelDescriptor.ValueType.STRING
            )
        )
    return descriptor


def to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = math.floor(seconds)
    return timestamp_pb2.Timestamp(
        seconds=whole, nanos=min(999_999_999, round((seconds - whole) * 1e9))
    )
