"""Every metric streamlearn writes: name, kind, value type, unit and labels.

This module is the single list of metrics. The job, the sinks, the alert
policies and the report all refer to the ``MetricSpec`` constants below, so
a metric cannot be written under a name the exporter has no descriptor for.

Names are relative to ``METRIC_PREFIX``. In Cloud Monitoring the full metric
type is ``custom.googleapis.com/streamlearn/<name>``; in Beam the namespace is
``streamlearn`` and the name is ``<name>``. Units follow the UCUM subset that
Cloud Monitoring accepts: ``1`` for a dimensionless number, ``By`` for bytes,
``s`` for seconds and ``{event}`` style annotations for counted things.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

METRIC_PREFIX = "custom.googleapis.com/streamlearn/"
BEAM_NAMESPACE = "streamlearn"

# Every series carries these two labels; the exporter fills them in from its
# configuration, so callers never pass them.
COMMON_LABELS = ("job", "model")


class MetricKind(enum.Enum):
    """Relation between successive points of one series (Cloud Monitoring's names)."""

    GAUGE = "GAUGE"
    CUMULATIVE = "CUMULATIVE"


class ValueType(enum.Enum):
    """The type of one point's value (Cloud Monitoring's names)."""

    INT64 = "INT64"
    DOUBLE = "DOUBLE"
    DISTRIBUTION = "DISTRIBUTION"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name under ``METRIC_PREFIX`` and its descriptor fields.

    ``labels`` lists the label keys a caller must pass on every point, in
    addition to ``COMMON_LABELS``. A counter is a ``CUMULATIVE`` metric with
    an ``INT64`` or ``DOUBLE`` value; a distribution is ``CUMULATIVE`` with a
    ``DISTRIBUTION`` value.
    """

    name: str
    kind: MetricKind
    value_type: ValueType
    unit: str
    description: str
    labels: tuple[str, ...] = ()

    @property
    def metric_type(self) -> str:
        """The full Cloud Monitoring metric type."""
        return METRIC_PREFIX + self.name

    @property
    def is_counter(self) -> bool:
        return self.kind is MetricKind.CUMULATIVE and (
            self.value_type is not ValueType.DISTRIBUTION
        )

    @property
    def is_distribution(self) -> bool:
        return self.value_type is ValueType.DISTRIBUTION

    @property
    def is_gauge(self) -> bool:
        return self.kind is MetricKind.GAUGE


def _counter(
    name: str, unit: str, description: str, labels: tuple[str, ...] = ()
) -> MetricSpec:
    kind, value_type = MetricKind.CUMULATIVE, ValueType.INT64
    return MetricSpec(name, kind, value_type, unit, description, labels)


def _gauge(
    name: str,
    unit: str,
    description: str,
    labels: tuple[str, ...] = (),
    value_type: ValueType = ValueType.DOUBLE,
) -> MetricSpec:
    return MetricSpec(name, MetricKind.GAUGE, value_type, unit, description, labels)


def _distribution(
    name: str, unit: str, description: str, labels: tuple[str, ...] = ()
) -> MetricSpec:
    kind, value_type = MetricKind.CUMULATIVE, ValueType.DISTRIBUTION
    return MetricSpec(name, kind, value_type, unit, description, labels)


# --- The event stream -------------------------------------------------------

EVENTS_READ = _counter(
    "events/read", "{event}", "Events decoded from Pub/Sub messages."
)
EVENTS_LEARNED = _counter(
    "events/learned", "{event}", "Labelled events the model trained on."
)
EVENTS_HELD_OUT = _counter(
    "events/held_out",
    "{event}",
    "Labelled events routed to the holdout set, never trained on.",
)
EVENTS_DEAD_LETTERED = _counter(
    "events/dead_lettered",
    "{message}",
    "Messages sent to the dead-letter topic, by reason. A label-limit letter "
    "is one event, which events/read counts too.",
    labels=("reason",),
)
EVENTS_DUPLICATE = _counter(
    "events/duplicate", "{event}", "Events dropped because their id was seen."
)
PREDICTIONS_ANSWERED = _counter(
    "predictions/answered",
    "{event}",
    "Unlabelled events answered with the serving version's top five roles.",
)

# --- Training ---------------------------------------------------------------

MICRO_BATCH_SIZE = _distribution(
    "training/micro_batch_size", "{event}", "Events in each learned micro-batch."
)
MICRO_BATCH_LATENCY = _distribution(
    "training/micro_batch_latency",
    "s",
    "Wall-clock time of one learning step on a micro-batch.",
)
EXAMPLES_PER_SECOND = _gauge(
    "training/examples_per_second",
    "{event}/s",
    "Events learned per second of wall-clock time over the last micro-batches.",
)
TRAINING_LOSS = _gauge(
    "training/loss",
    "1",
    "Mean cross-entropy loss (nats) of the last micro-batch before learning.",
)
PREQUENTIAL_TOP1 = _gauge(
    "prequential/top1_accuracy",
    "1",
    "Share of recent labelled events whose label was the model's first guess, "
    "scored before learning from them (test-then-train).",
)
PREQUENTIAL_TOP5 = _gauge(
    "prequential/top5_accuracy",
    "1",
    "Share of recent labelled events whose label was among the model's top "
    "five, scored before learning from them (test-then-train).",
)

# --- Validation, versions and rollbacks ---------------------------------------

HOLDOUT_TOP1 = _gauge(
    "holdout/top1_accuracy",
    "1",
    "Top-1 accuracy on the holdout window, of a candidate or the serving version.",
    labels=("version", "role"),
)
HOLDOUT_TOP5 = _gauge(
    "holdout/top5_accuracy",
    "1",
    "Top-5 accuracy on the holdout window, of a candidate or the serving version.",
    labels=("version", "role"),
)
HOLDOUT_LOSS = _gauge(
    "holdout/loss",
    "1",
    "Mean cross-entropy loss (nats) on the holdout window.",
    labels=("version", "role"),
)
SERVING_VERSION = _gauge(
    "registry/serving_version",
    "1",
    "Number of the version that answers predictions (12 for v12).",
    value_type=ValueType.INT64,
)
PROMOTIONS = _counter(
    "registry/promotions", "{version}", "Candidates promoted to serving."
)
REJECTIONS = _counter(
    "registry/rejections",
    "{version}",
    "Candidates rejected by the validation gate.",
)
ROLLBACKS = _counter(
    "registry/rollbacks",
    "{rollback}",
    "Rollbacks to an earlier version, automatic (by the job) or manual "
    "(by an operator).",
    labels=("trigger",),
)
DRIFT_ALARMS = _counter(
    "drift/alarms",
    "{alarm}",
    "Drift alarms raised, by detector.",
    labels=("detector",),
)

# --- Resource use -------------------------------------------------------------

PROCESS_CPU_UTILIZATION = _gauge(
    "resource/cpu_utilization",
    "1",
    "CPU time of this process per wall-clock second over the last sample; "
    "1.0 is one core busy, so it exceeds 1 with several busy threads.",
)
PROCESS_MEMORY_RSS = _gauge(
    "resource/memory_rss",
    "By",
    "Resident set size of this process.",
    value_type=ValueType.INT64,
)
PROCESS_MEMORY_UTILIZATION = _gauge(
    "resource/memory_utilization",
    "1",
    "Resident set size over the memory limit (the cgroup limit when one is "
    "set, else the machine's physical memory).",
)
NETWORK_SENT = _counter(
    "resource/network_sent_bytes",
    "By",
    "Bytes sent by all network interfaces of the host, loopback included, "
    "since the resource sampler started (psutil has no per-process network "
    "counters).",
)
NETWORK_RECEIVED = _counter(
    "resource/network_received_bytes",
    "By",
    "Bytes received by all network interfaces of the host, loopback included, "
    "since the resource sampler started.",
)
GPU_UTILIZATION = _gauge(
    "resource/gpu_utilization",
    "1",
    "Share of the last sample period in which a kernel ran on the GPU, "
    "from NVML; written only when a CUDA GPU is present.",
    labels=("device",),
)
GPU_MEMORY_ALLOCATED = _gauge(
    "resource/gpu_memory_allocated",
    "By",
    "GPU memory held by tensors of this process (torch's allocator).",
    labels=("device",),
    value_type=ValueType.INT64,
)
GPU_MEMORY_RESERVED = _gauge(
    "resource/gpu_memory_reserved",
    "By",
    "GPU memory reserved by torch's caching allocator in this process.",
    labels=("device",),
    value_type=ValueType.INT64,
)

# --- Telemetry about telemetry --------------------------------------------------

EXPORT_ERRORS = _counter(
    "monitoring/export_errors",
    "{request}",
    "Requests to Cloud Monitoring (CreateMetricDescriptor, CreateTimeSeries) "
    "that failed, by gRPC status code. Written only to local sinks, because "
    "these are the requests that could not reach Cloud Monitoring.",
    labels=("code",),
)

ALL_METRICS: tuple[MetricSpec, ...] = (
    EVENTS_READ,
    EVENTS_LEARNED,
    EVENTS_HELD_OUT,
    EVENTS_DEAD_LETTERED,
    EVENTS_DUPLICATE,
    PREDICTIONS_ANSWERED,
    MICRO_BATCH_SIZE,
    MICRO_BATCH_LATENCY,
    EXAMPLES_PER_SECOND,
    TRAINING_LOSS,
    PREQUENTIAL_TOP1,
    PREQUENTIAL_TOP5,
    HOLDOUT_TOP1,
    HOLDOUT_TOP5,
    HOLDOUT_LOSS,
    SERVING_VERSION,
    PROMOTIONS,
    REJECTIONS,
    ROLLBACKS,
    DRIFT_ALARMS,
    PROCESS_CPU_UTILIZATION,
    PROCESS_MEMORY_RSS,
    PROCESS_MEMORY_UTILIZATION,
    NETWORK_SENT,
    NETWORK_RECEIVED,
    GPU_UTILIZATION,
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    EXPORT_ERRORS,
)

METRICS_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in ALL_METRICS}

# Values of the ``role`` label of holdout metrics.
ROLE_CANDIDATE = "candidate"
ROLE_SERVING = "serving"

# Values of the ``trigger`` label of ROLLBACKS.
TRIGGER_AUTOMATIC = "automatic"
TRIGGER_MANUAL = "manual"

# Upper bounds of the distribution buckets, in each metric's unit. Cloud
# Monitoring stores them as explicit bucket bounds; the last bucket is open.
DISTRIBUTION_BOUNDS: dict[str, tuple[float, ...]] = {
    MICRO_BATCH_SIZE.name: (1, 8, 32, 64, 128, 256, 512, 1024, 4096, 16384),
    MICRO_BATCH_LATENCY.name: (
        0.001,
        0.002,
        0.005,
        0.01,
        0.02,
        0.05,
        0.1,
        0.2,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        30.0,
    ),
}


class EventKind(enum.Enum):
    """Decisions and alarms that the report marks on its time axes.

    Recording one of these through ``Telemetry.record_event`` also adds one
    to its counter below.
    """

    PROMOTION = "promotion"
    REJECTION = "rejection"
    ROLLBACK = "rollback"
    DRIFT_ALARM = "drift_alarm"


EVENT_COUNTERS: dict[EventKind, MetricSpec] = {
    EventKind.PROMOTION: PROMOTIONS,
    EventKind.REJECTION: REJECTIONS,
    EventKind.ROLLBACK: ROLLBACKS,
    EventKind.DRIFT_ALARM: DRIFT_ALARMS,
}
