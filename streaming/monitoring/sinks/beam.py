"""The Beam sink: counters and distributions as Beam metrics, so they show in
the Dataflow console next to the job's steps.

Beam binds a metric to the step whose ``DoFn`` is running on the calling
thread. Points recorded on other threads (the resource sampler, the
exporter) or outside a pipeline have no step, so Beam drops them. They still
reach the other sinks.
"""

from __future__ import annotations

from typing import Any

from apache_beam.metrics import Metrics

from streaming.monitoring.catalogue import BEAM_NAMESPACE, ValueType
from streaming.monitoring.telemetry import Point, Sink

# Beam distributions and gauges hold integers, so values in seconds are
# scaled to milliseconds and the Beam name gets a ``_ms`` suffix.
_SECONDS_TO_MS = 1000.0


def beam_metric_name(point: Point) -> str:
    """Return the Beam name of a point's series: ``name`` or
    ``name[label=value,...]`` (Beam metrics have no labels)."""
    name = point.spec.name
    if point.spec.unit == "s" and not point.spec.is_counter:
        name += "_ms"
    if not point.labels:
        return name
    pairs = ",".join(
        f"{key}={value}"
        for key, value in zip(point.spec.labels, point.labels, strict=True)
    )
    return f"{name}[{pairs}]"


class BeamMetricsSink(Sink):
    """Forward counters, distributions and integer gauges to Beam metrics.

    Double-valued gauges (accuracies, loss) are skipped, because a Beam gauge
    stores an integer and rounding them would mislead.
    """

    def __init__(self, namespace: str = BEAM_NAMESPACE) -> None:
        self.namespace = namespace
        # Beam's metric objects look up the running step on every update, so
        # one object per name serves every thread and bundle.
        self._counters: dict[str, Any] = {}
        self._distributions: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}

    def write_point(self, point: Point) -> None:
        spec = point.spec
        name = beam_metric_name(point)
        if spec.is_counter:
            counter = self._counters.get(name)
            if counter is None:
                counter = self._counters[name] = Metrics.counter(self.namespace, name)
            counter.inc(int(point.increment))
        elif spec.is_distribution:
            distribution = self._distributions.get(name)
            if distribution is None:
                distribution = Metrics.distribution(self.namespace, name)
                self._distributions[name] = distribution
            distribution.update(_to_beam_int(point))
        elif spec.value_type is ValueType.INT64:
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = self._gauges[name] = Metrics.gauge(self.namespace, name)
            gauge.set(int(point.value))


def _to_beam_int(point: Point) -> int:
    if point.spec.unit == "s":
        return round(point.value * _SECONDS_TO_MS)
    return round(point.value)


__all__ = ["BeamMetricsSink", "beam_metric_name"]
