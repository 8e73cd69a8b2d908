"""The Cloud Monitoring sink: metric descriptors and time series, written by
a background thread so that export never slows the caller.

How points are sent:

* Descriptors for every catalogue metric are created explicitly (kind, value
  type, unit, labels) before the first time series is written.
  ``CreateMetricDescriptor`` updates a descriptor that already exists.
* ``write_point`` only updates the latest value of the series in memory.
  Every ``export_interval_s`` the thread sends one point per series that is
  due, at most ``max_series_per_request`` (200, the service's maximum) series
  per ``CreateTimeSeries`` request.
* A series gets at most one point per ``export_interval_s``. The default is
  10 s, because the service rejects points of one series written more often
  than about every 5 s. Each point of a series ends later than the one
  before it. Counters and distributions are re-sent every interval, as cumulative
  metrics usually are; gauges only when they changed.
* A failed request is counted by gRPC status code, logged once per code, and
  the thread backs off exponentially (with jitter) before the next attempt.
  Errors in ``RETRYABLE_ERRORS`` keep the points for the next attempt; errors
  in ``TERMINAL_ERRORS`` drop them. Other exceptions are treated as
  retryable and logged with their traceback once. google-cloud-monitoring
  2.32 configures no retry for CreateTimeSeries and CreateMetricDescriptor,
  so this backoff is the only retry layer.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from google.api_core import exceptions as api_exceptions
from google.cloud import monitoring_v3

from streaming.monitoring.catalogue import (
    ALL_METRICS,
    DISTRIBUTION_BOUNDS,
    EXPORT_ERRORS,
    MetricKind,
    MetricSpec,
)
from streaming.monitoring.sinks.cloud_series import (
    DistributionState,
    SeriesSnapshot,
    SeriesState,
    build_time_series,
    metric_descriptor,
)
from streaming.monitoring.telemetry import Clock, LabelValues, Point, Sink

logger = logging.getLogger(__name__)

# The service's maximum number of time series in one CreateTimeSeries request.
MAX_SERIES_PER_REQUEST = 200

RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.TooManyRequests,
    api_exceptions.ResourceExhausted,
    api_exceptions.InternalServerError,
    api_exceptions.Aborted,
    api_exceptions.Unknown,
)
TERMINAL_ERRORS: tuple[type[Exception], ...] = (
    api_exceptions.InvalidArgument,
    api_exceptions.PermissionDenied,
    api_exceptions.Unauthenticated,
    api_exceptions.NotFound,
    api_exceptions.FailedPrecondition,
)

ExportErrorCallback = Callable[[str], None]


@dataclass(frozen=True)
class CloudMonitoringConfig:
    """Destination and pace of the export.

    ``job`` and ``model`` become the ``job`` and ``model`` labels of every
    series. Points go to the monitored resource ``generic_task`` with
    ``location``, namespace ``streamlearn``, ``job`` and ``task_id``, so that
    two workers of one job write different series.
    """

    project_id: str
    job: str
    model: str
    location: str = "global"
    task_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    export_interval_s: float = 10.0
    max_series_per_request: int = MAX_SERIES_PER_REQUEST
    request_timeout_s: float = 30.0
    backoff_max_s: float = 300.0
    close_timeout_s: float = 40.0

    def __post_init__(self) -> None:
        if not self.project_id:
            raise ValueError("project_id is empty: pass a Google Cloud project id")
        if not 0 < self.export_interval_s < math.inf:
            raise ValueError(
                "export_interval_s must be a finite number > 0, got "
                f"{self.export_interval_s}"
            )
        if not 1 <= self.max_series_per_request <= MAX_SERIES_PER_REQUEST:
            raise ValueError(
                "max_series_per_request must be in 1..200, got "
                f"{self.max_series_per_request}"
            )

    @property
    def project_name(self) -> str:
        return f"projects/{self.project_id}"


@dataclass
class ExportStats:
    """Counts of the exporter's work so far, for tests and logs."""

    requests_sent: int = 0
    series_written: int = 0
    descriptors_created: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)


class CloudMonitoringSink(Sink):
    """Buffer points and export them to Cloud Monitoring from a thread.

    ``client`` is a ``monitoring_v3.MetricServiceClient``; tests pass one
    whose transport points at a local server. Call ``start()`` to run the
    export thread, or ``export_once()`` to export on the caller's thread.
    """

    def __init__(
        self,
        config: CloudMonitoringConfig,
        client: monitoring_v3.MetricServiceClient,
        *,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        specs: Sequence[MetricSpec] = ALL_METRICS,
    ) -> None:
        self.config = config
        self.client = client
        self.on_export_error: ExportErrorCallback | None = None
        self.stats = ExportStats()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._specs = tuple(spec for spec in specs if spec is not EXPORT_ERRORS)
        # Guards _series (values and send state of every series).
        self._lock = threading.Lock()
        self._series: dict[tuple[str, LabelValues], SeriesState] = {}
        # Touched only by the exporting thread (or the caller of
        # export_once, never both at once).
        # Metrics whose descriptor was created, or rejected for good.
        self._descriptors_settled: set[str] = set()
        self._retry_at_s = 0.0
        self._backoff_s = 0.0
        self._codes_logged: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resource = {
            "type": "generic_task",
            "labels": {
                "project_id": config.project_id,
                "location": config.location,
                "namespace": "streamlearn",
                "job": config.job,
                "task_id": config.task_id,
            },
        }

    # --- caller side ------------------------------------------------------

    def write_point(self, point: Point) -> None:
        spec = point.spec
        if spec is EXPORT_ERRORS:
            return
        key = (spec.name, point.labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = SeriesState(spec, point.labels, point.start_time_s)
                if spec.is_distribution:
                    bounds = DISTRIBUTION_BOUNDS.get(spec.name, ())
                    series.distribution = DistributionState(bounds)
                self._series[key] = series
            if series.distribution is not None:
                series.distribution.add(point.value)
            else:
                series.value = point.value
            series.changed = True

    def start(self) -> None:
        """Start the export thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="streamlearn-metrics-export", daemon=True
        )
        self._thread.start()
        logger.info(
            "exporting metrics to Cloud Monitoring project %s every %.1f s",
            self.config.project_id,
            self.config.export_interval_s,
        )

    def close(self) -> None:
        """Stop the thread and send the last values of every series.

        Waits until each series may take its next point, so the final totals
        reach Cloud Monitoring: at most ``export_interval_s`` plus two
        requests. If the thread is stuck in a request, returns after
        ``close_timeout_s`` without the final export.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.close_timeout_s)
            if self._thread.is_alive():
                logger.warning(
                    "metrics export thread still busy after %.1f s; final "
                    "points not sent",
                    self.config.close_timeout_s,
                )
                return
        self._drain()

    # --- export side ------------------------------------------------------

    def export_once(self) -> int:
        """Send every due series once; return how many series were written."""
        now = self._clock()
        if now < self._retry_at_s:
            return 0
        if not self._create_descriptors():
            return 0
        due = self._take_due_series(now)
        written = 0
        size = self.config.max_series_per_request
        for offset in range(0, len(due), size):
            chunk = due[offset : offset + size]
            if not self._send([self._time_series(snapshot) for snapshot in chunk]):
                # Put back this chunk and every later one: they are retried
                # after the backoff, with their newest values.
                self._mark_changed(due[offset:])
                break
            written += len(chunk)
        return written

    def pending_series(self) -> int:
        """Return how many series have values not yet exported."""
        with self._lock:
            return sum(1 for series in self._series.values() if series.changed)

    def _run(self) -> None:
        while True:
            try:
                self.export_once()
            except Exception:  # the thread must survive any bug in a request
                logger.exception("metrics export failed unexpectedly")
            wait_s = self._seconds_until_next_export()
            if self._stop.wait(wait_s):
                return

    def _seconds_until_next_export(self) -> float:
        now = self._clock()
        next_s = max(self._retry_at_s, now + self.config.export_interval_s)
        with self._lock:
            for series in self._series.values():
                if series.last_end_s is not None and series.changed:
                    due = series.last_end_s + self.config.export_interval_s
                    next_s = min(next_s, max(due, self._retry_at_s))
        return max(0.01, next_s - now)

    def _drain(self) -> None:
        # The first round sends what is due. Series written less than an
        # interval before their last point must wait for the second round.
        self._retry_at_s = 0.0
        self.export_once()
        if self.pending_series():
            self._sleep(min(self.config.export_interval_s, self._seconds_until_due()))
            self._retry_at_s = 0.0
            self.export_once()
        if self.pending_series():
            logger.warning(
                "%d metric series not exported at close", self.pending_series()
            )

    def _seconds_until_due(self) -> float:
        now = self._clock()
        with self._lock:
            due = [
                series.last_end_s + self.config.export_interval_s
                for series in self._series.values()
                if series.changed and series.last_end_s is not None
            ]
        return max(0.0, max(due, default=now) - now)

    def _take_due_series(self, now: float) -> list[SeriesSnapshot]:
        """Copy the values of due series and mark them sent.

        Only the copy runs under the lock. The caller builds the protos
        afterwards, so writers never wait for that.
        """
        interval = self.config.export_interval_s
        due: list[SeriesSnapshot] = []
        with self._lock:
            for key, series in self._series.items():
                if series.spec.name not in self._descriptors_settled:
                    continue
                cumulative = series.spec.kind is MetricKind.CUMULATIVE
                if not (series.changed or cumulative):
                    continue
                last_end_s = series.last_end_s
                if last_end_s is not None and now - last_end_s < interval:
                    continue
                # Each point ends after the series' previous point, and a
                # cumulative point ends after its start time.
                end_s = now
                if last_end_s is not None:
                    end_s = max(end_s, last_end_s + 0.001)
                if cumulative:
                    end_s = max(end_s, series.start_time_s + 0.001)
                due.append(SeriesSnapshot.of(key, series, end_s))
                series.changed = False
                series.last_end_s = end_s
        return due

    def _mark_changed(self, due: Sequence[SeriesSnapshot]) -> None:
        with self._lock:
            for snapshot in due:
                series = self._series.get(snapshot.key)
                if series is not None:
                    series.changed = True

    def _time_series(self, snapshot: SeriesSnapshot) -> monitoring_v3.TimeSeries:
        common_labels = {"job": self.config.job, "model": self.config.model}
        return build_time_series(snapshot, common_labels, self._resource)

    def _create_descriptors(self) -> bool:
        """Create missing descriptors; return True once each is created or
        rejected for good.

        Points of a metric whose descriptor was rejected (say, for lack of
        permission) are still sent: the descriptor may exist already, and if
        not, the service creates one from the first point.
        """
        for spec in self._specs:
            if spec.name in self._descriptors_settled:
                continue
            try:
                self.client.create_metric_descriptor(
                    name=self.config.project_name,
                    metric_descriptor=metric_descriptor(spec),
                    timeout=self.config.request_timeout_s,
                )
            except TERMINAL_ERRORS as error:
                self._descriptors_settled.add(spec.name)
                self._record_error("CreateMetricDescriptor", error)
                continue
            except Exception as error:
                self._record_error("CreateMetricDescriptor", error)
                self._back_off()
                return False
            self._descriptors_settled.add(spec.name)
            self.stats.descriptors_created += 1
        return True

    def _send(self, batch: Sequence[monitoring_v3.TimeSeries]) -> bool:
        """Send one request; return False if its points should be retried."""
        try:
            self.client.create_time_series(
                name=self.config.project_name,
                time_series=list(batch),
                timeout=self.config.request_timeout_s,
            )
        except TERMINAL_ERRORS as error:
            self._record_error("CreateTimeSeries", error)
            self._back_off()
            return True
        except Exception as error:
            self._record_error("CreateTimeSeries", error)
            self._back_off()
            return False
        if self._backoff_s:
            logger.info("metrics export recovered; sent %d series", len(batch))
        self._backoff_s = 0.0
        self.stats.requests_sent += 1
        self.stats.series_written += len(batch)
        return True

    def _back_off(self) -> None:
        interval = self.config.export_interval_s
        self._backoff_s = min(
            self.config.backoff_max_s, max(interval, self._backoff_s * 2)
        )
        jitter = 1.0 + 0.1 * self._rng.random()
        self._retry_at_s = self._clock() + self._backoff_s * jitter

    def _record_error(self, operation: str, error: Exception) -> None:
        code = _error_code(error)
        self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        log_key = f"{operation}:{code}"
        if log_key not in self._codes_logged:
            self._codes_logged.add(log_key)
            if not isinstance(error, TERMINAL_ERRORS):
                consequence = "retrying with backoff"
            elif operation == "CreateMetricDescriptor":
                consequence = "sending the metric's points without it"
            else:
                consequence = "dropping these points"
            logger.warning(
                "%s to Cloud Monitoring failed with %s (%s); %s. Later "
                "failures with this code are only counted.",
                operation,
                code,
                error,
                consequence,
                exc_info=not isinstance(error, api_exceptions.GoogleAPICallError),
            )
        callback = self.on_export_error
        if callback is not None:
            callback(code)


def _error_code(error: Exception) -> str:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        grpc_code = error.grpc_status_code
        if grpc_code is not None:
            return str(grpc_code.name)
        return type(error).__name__
    return type(error).__name__
