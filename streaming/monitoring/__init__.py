"""Telemetry for the streaming job: metrics, events, resource use, export.

The job builds one ``Telemetry`` per process with ``shared_telemetry`` and
records through it::

    from streaming import monitoring as mon

    telemetry = mon.shared_telemetry(
        mon.TelemetryConfig(run_dir=Path("runs/r1"), job="jobs-demo", model="roles")
    )
    telemetry.count(mon.EVENTS_LEARNED, len(batch))
    telemetry.observe(mon.MICRO_BATCH_LATENCY, elapsed_s)
    telemetry.set(mon.PREQUENTIAL_TOP5, 0.61, event_time_ms=batch_end_ms)
    telemetry.record_event(mon.EventKind.PROMOTION, version="v3", top5=0.63)

Every metric is listed in ``streaming.monitoring.catalogue``; docs/metrics.md
describes them and the records of ``RUN_DIR/metrics.jsonl``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from streaming.monitoring.catalogue import (
    ALL_METRICS,
    DRIFT_ALARMS,
    EVENTS_DEAD_LETTERED,
    EVENTS_DUPLICATE,
    EVENTS_HELD_OUT,
    EVENTS_LEARNED,
    EVENTS_READ,
    EXAMPLES_PER_SECOND,
    EXPORT_ERRORS,
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    GPU_UTILIZATION,
    HOLDOUT_LOSS,
    HOLDOUT_TOP1,
    HOLDOUT_TOP5,
    METRIC_PREFIX,
    METRICS_BY_NAME,
    MICRO_BATCH_LATENCY,
    MICRO_BATCH_SIZE,
    NETWORK_RECEIVED,
    NETWORK_SENT,
    PREDICTIONS_ANSWERED,
    PREQUENTIAL_TOP1,
    PREQUENTIAL_TOP5,
    PROCESS_CPU_UTILIZATION,
    PROCESS_MEMORY_RSS,
    PROCESS_MEMORY_UTILIZATION,
    PROMOTIONS,
    REJECTIONS,
    ROLE_CANDIDATE,
    ROLE_SERVING,
    ROLLBACKS,
    SERVING_VERSION,
    TRAINING_LOSS,
    TRIGGER_AUTOMATIC,
    TRIGGER_MANUAL,
    EventKind,
    MetricKind,
    MetricSpec,
    ValueType,
)
from streaming.monitoring.resources import ResourceSampler, ResourceSamplerConfig
from streaming.monitoring.sinks.jsonl import METRICS_FILE_NAME, JsonLinesSink
from streaming.monitoring.telemetry import (
    Clock,
    ConfusionCounts,
    MetricError,
    Point,
    RecordedEvent,
    Sink,
    Telemetry,
)

if TYPE_CHECKING:
    from streaming.monitoring.sinks.cloud_monitoring import CloudMonitoringSink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TelemetryConfig:
    """Choice of sinks and intervals for one process's telemetry.

    ``run_dir`` set: points go to ``run_dir/metrics.jsonl``. ``beam``: counters
    and distributions also become Beam metrics. ``cloud_project`` set: points
    are exported to Cloud Monitoring in that project every
    ``export_interval_s``. It must be at least 5 s, because the service
    rejects points of one series written more often. ``resource_interval_s``
    is the period of the resource sampler; 0 turns it off.
    ``file_point_interval_s`` is the least time between two lines of one
    series in ``metrics.jsonl``; 0 writes every point.
    """

    job: str
    model: str
    run_dir: Path | None = None
    beam: bool = False
    cloud_project: str | None = None
    cloud_location: str = "global"
    export_interval_s: float = 10.0
    resource_interval_s: float = 10.0
    file_point_interval_s: float = 1.0

    def __post_init__(self) -> None:
        # Written so that NaN fails each test too.
        if not 5.0 <= self.export_interval_s < math.inf:
            raise ValueError(
                "export_interval_s must be a finite number >= 5 s, because Cloud "
                f"Monitoring rejects faster writes; got {self.export_interval_s}"
            )
        for name in ("file_point_interval_s", "resource_interval_s"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


class TelemetrySession:
    """A ``Telemetry`` with the resource sampler and exporter it started.

    ``close()`` stops the sampler, then flushes and closes every sink.
    """

    def __init__(self, telemetry: Telemetry, sampler: ResourceSampler | None) -> None:
        self.telemetry = telemetry
        self.sampler = sampler

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            try:
                self.sampler.sample_once()
            except (psutil.Error, OSError) as error:
                logger.warning("last resource sample failed: %s", error)
        self.telemetry.close()


def open_telemetry(
    config: TelemetryConfig, clock: Clock = time.time
) -> TelemetrySession:
    """Build the sinks that ``config`` names and start their threads."""
    sinks: list[Sink] = []
    if config.run_dir is not None:
        sinks.append(
            JsonLinesSink(
                config.run_dir,
                job=config.job,
                model=config.model,
                clock=clock,
                point_interval_s=config.file_point_interval_s,
            )
        )
    if config.beam:
        from streaming.monitoring.sinks.beam import BeamMetricsSink

        sinks.append(BeamMetricsSink())
    exporter = None
    if config.cloud_project is not None:
        exporter = _cloud_exporter(config, config.cloud_project, clock)
        sinks.append(exporter)

    telemetry = Telemetry(sinks, clock=clock)
    # Counters start at zero, so "nothing happened" is a series with value 0
    # rather than no series: the no-promotion and stall alerts need that.
    for spec in ALL_METRICS:
        if spec.is_counter and not spec.labels:
            telemetry.count(spec, 0)
    if exporter is not None:
        exporter.on_export_error = lambda code: telemetry.count(
            EXPORT_ERRORS, 1, code=code
        )
        exporter.start()
    sampler = None
    if config.resource_interval_s > 0:
        sampler = ResourceSampler(
            telemetry, ResourceSamplerConfig(interval_s=config.resource_interval_s)
        )
        sampler.start()
    return TelemetrySession(telemetry, sampler)


def _cloud_exporter(
    config: TelemetryConfig, project_id: str, clock: Clock
) -> CloudMonitoringSink:
    from google.cloud import monitoring_v3

    from streaming.monitoring.sinks.cloud_monitoring import (
        CloudMonitoringConfig,
        CloudMonitoringSink,
    )

    cloud_config = CloudMonitoringConfig(
        project_id=project_id,
        job=config.job,
        model=config.model,
        location=config.cloud_location,
        export_interval_s=config.export_interval_s,
    )
    # The client finds Application Default Credentials itself.
    client = monitoring_v3.MetricServiceClient()
    return CloudMonitoringSink(cloud_config, client, clock=clock)


# Guards _SESSIONS.
_SESSIONS_LOCK = threading.Lock()
_SESSIONS: dict[TelemetryConfig, TelemetrySession] = {}


def shared_telemetry(config: TelemetryConfig) -> Telemetry:
    """Return this process's telemetry for ``config``, opening it on first use.

    Beam may create a new DoFn instance (and call ``setup``) for each bundle.
    Calling this from ``setup`` gives all of them one file, one exporter and
    one set of counter totals.
    """
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(config)
        if session is None:
            session = open_telemetry(config)
            _SESSIONS[config] = session
        return session.telemetry


def close_shared_telemetry() -> None:
    """Close every session opened by ``shared_telemetry`` (at job end)."""
    with _SESSIONS_LOCK:
        sessions = list(_SESSIONS.values())
        _SESSIONS.clear()
    for session in sessions:
        session.close()


__all__ = [
    "ALL_METRICS",
    "DRIFT_ALARMS",
    "EVENTS_DEAD_LETTERED",
    "EVENTS_DUPLICATE",
    "EVENTS_HELD_OUT",
    "EVENTS_LEARNED",
    "EVENTS_READ",
    "EXAMPLES_PER_SECOND",
    "EXPORT_ERRORS",
    "GPU_MEMORY_ALLOCATED",
    "GPU_MEMORY_RESERVED",
    "GPU_UTILIZATION",
    "HOLDOUT_LOSS",
    "HOLDOUT_TOP1",
    "HOLDOUT_TOP5",
    "METRICS_BY_NAME",
    "METRICS_FILE_NAME",
    "METRIC_PREFIX",
    "MICRO_BATCH_LATENCY",
    "MICRO_BATCH_SIZE",
    "NETWORK_RECEIVED",
    "NETWORK_SENT",
    "PREDICTIONS_ANSWERED",
    "PREQUENTIAL_TOP1",
    "PREQUENTIAL_TOP5",
    "PROCESS_CPU_UTILIZATION",
    "PROCESS_MEMORY_RSS",
    "PROCESS_MEMORY_UTILIZATION",
    "PROMOTIONS",
    "REJECTIONS",
    "ROLE_CANDIDATE",
    "ROLE_SERVING",
    "ROLLBACKS",
    "SERVING_VERSION",
    "TRAINING_LOSS",
    "TRIGGER_AUTOMATIC",
    "TRIGGER_MANUAL",
    "ConfusionCounts",
    "EventKind",
    "JsonLinesSink",
    "MetricError",
    "MetricKind",
    "MetricSpec",
    "Point",
    "RecordedEvent",
    "ResourceSampler",
    "ResourceSamplerConfig",
    "Sink",
    "Telemetry",
    "TelemetryConfig",
    "TelemetrySession",
    "ValueType",
    "close_shared_telemetry",
    "open_telemetry",
    "shared_telemetry",
]
