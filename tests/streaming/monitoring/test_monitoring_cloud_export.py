"""The Cloud Monitoring exporter against a local MetricService server."""

from __future__ import annotations

import itertools
import logging
import random
import threading
from pathlib import Path

import grpc
import pytest
from fake_cloud_monitoring import FakeMonitoringServer
from google.api import metric_pb2
from monitoring_fake_clock import FakeClock

from streaming import monitoring as mon
from streaming.monitoring.sinks.cloud_monitoring import (
    CloudMonitoringConfig,
    CloudMonitoringSink,
)

PREFIX = "custom.googleapis.com/streamlearn/"


def make_exporter(
    server: FakeMonitoringServer,
    clock: FakeClock,
    **config: object,
) -> tuple[mon.Telemetry, CloudMonitoringSink]:
    settings: dict[str, object] = {
        "project_id": "demo-project",
        "job": "jobs-demo",
        "model": "roles",
        "task_id": "worker-1",
        "request_timeout_s": 5.0,
    }
    settings.update(config)
    exporter = CloudMonitoringSink(
        CloudMonitoringConfig(**settings),  # type: ignore[arg-type]
        server.metric_client(),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )
    return mon.Telemetry([exporter], clock=clock), exporter


def test_descriptors_match_catalogue(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    _, exporter = make_exporter(monitoring_server, clock)

    exporter.export_once()

    exported = [spec for spec in mon.ALL_METRICS if spec is not mon.EXPORT_ERRORS]
    assert sorted(monitoring_server.descriptors) == sorted(
        spec.metric_type for spec in exported
    )
    kinds = metric_pb2.MetricDescriptor.MetricKind
    value_types = metric_pb2.MetricDescriptor.ValueType
    for spec in exported:
        descriptor = monitoring_server.descriptors[spec.metric_type]
        assert kinds.Name(descriptor.metric_kind) == spec.kind.value, spec.name
        assert value_types.Name(descriptor.value_type) == spec.value_type.value
        assert descriptor.unit == spec.unit, spec.name
        label_keys = [label.key for label in descriptor.labels]
        assert label_keys == ["job", "model", *spec.labels], spec.name
    learned = monitoring_server.descriptors[PREFIX + "events/learned"]
    assert kinds.Name(learned.metric_kind) == "CUMULATIVE"
    top5 = monitoring_server.descriptors[PREFIX + "prequential/top5_accuracy"]
    assert kinds.Name(top5.metric_kind) == "GAUGE"
    assert value_types.Name(top5.value_type) == "DOUBLE"


def test_points_carry_values_and_labels(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    telemetry, exporter = make_exporter(monitoring_server, clock)
    start_s = clock()
    telemetry.count(mon.EVENTS_LEARNED, 256)
    telemetry.count(mon.EVENTS_LEARNED, 256)
    telemetry.count(mon.EVENTS_LEARNED, 100)
    telemetry.count(mon.EVENTS_DEAD_LETTERED, 3, reason="truncated")
    telemetry.count(mon.EVENTS_DEAD_LETTERED, 1, reason="schema_unknown")
    telemetry.set(mon.PREQUENTIAL_TOP5, 0.25)
    telemetry.set(mon.PREQUENTIAL_TOP5, 0.625)
    telemetry.set(mon.SERVING_VERSION, 12)
    for latency_s in (0.004, 0.006, 0.2):
        telemetry.observe(mon.MICRO_BATCH_LATENCY, latency_s)
    clock.advance(1.5)

    written = exporter.export_once()

    assert written == 6
    assert monitoring_server.violations == []
    [learned] = monitoring_server.series_points(PREFIX + "events/learned")
    assert learned.value == 612
    assert learned.metric_kind == "CUMULATIVE"
    assert learned.start_s == pytest.approx(start_s)
    assert learned.end_s == pytest.approx(start_s + 1.5)
    assert learned.metric_labels == {"job": "jobs-demo", "model": "roles"}
    assert learned.resource_type == "generic_task"
    assert learned.resource_labels == {
        "project_id": "demo-project",
        "location": "global",
        "namespace": "streamlearn",
        "job": "jobs-demo",
        "task_id": "worker-1",
    }
    [truncated] = monitoring_server.series_points(
        PREFIX + "events/dead_lettered", reason="truncated"
    )
    assert truncated.value == 3
    [unknown] = monitoring_server.series_points(
        PREFIX + "events/dead_lettered", reason="schema_unknown"
    )
    assert unknown.value == 1
    [top5] = monitoring_server.series_points(PREFIX + "prequential/top5_accuracy")
    assert top5.value == 0.625
    assert top5.metric_kind == "GAUGE"
    [serving] = monitoring_server.series_points(PREFIX + "registry/serving_version")
    assert serving.value == 12
    assert serving.value_type == "INT64"
    [latency] = monitoring_server.series_points(PREFIX + "training/micro_batch_latency")
    distribution = latency.value
    assert distribution.count == 3
    assert distribution.mean == pytest.approx(0.07)
    expected_deviation = (0.004 - 0.07) ** 2 + (0.006 - 0.07) ** 2 + (0.2 - 0.07) ** 2
    assert distribution.sum_of_squared_deviation == pytest.approx(expected_deviation)
    bounds = list(distribution.bucket_options.explicit_buckets.bounds)
    assert bounds[:3] == [0.001, 0.002, 0.005]
    counts = list(distribution.bucket_counts)
    assert len(counts) == len(bounds) + 1
    assert counts[2] == 1  # 0.004 in [0.002, 0.005)
    assert counts[3] == 1  # 0.006 in [0.005, 0.01)
    assert counts[bounds.index(0.2) + 1] == 1  # 0.2 in [0.2, 0.5)


def test_export_respects_interval_and_order(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    telemetry, exporter = make_exporter(
        monitoring_server, clock, export_interval_s=10.0
    )
    telemetry.count(mon.EVENTS_LEARNED, 10)
    telemetry.set(mon.TRAINING_LOSS, 2.5)
    clock.advance(1)
    assert exporter.export_once() == 2

    clock.advance(3)
    telemetry.count(mon.EVENTS_LEARNED, 5)
    telemetry.set(mon.TRAINING_LOSS, 2.0)
    assert exporter.export_once() == 0

    clock.advance(7)
    assert exporter.export_once() == 2

    clock.advance(10)
    # The loss did not change, so only the cumulative counter is re-sent.
    assert exporter.export_once() == 1

    assert monitoring_server.violations == []
    learned = monitoring_server.series_points(PREFIX + "events/learned")
    assert [point.value for point in learned] == [10, 15, 15]
    ends = [point.end_s for point in learned]
    assert ends == sorted(ends)
    assert ends[1] - ends[0] == pytest.approx(10.0)
    assert ends[2] - ends[1] == pytest.approx(10.0)
    assert len({point.start_s for point in learned}) == 1
    loss = monitoring_server.series_points(PREFIX + "training/loss")
    assert [point.value for point in loss] == [2.5, 2.0]


def test_requests_hold_at_most_200_series(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    telemetry, exporter = make_exporter(monitoring_server, clock)
    for index in range(450):
        telemetry.count(mon.EVENTS_DEAD_LETTERED, index + 1, reason=f"reason-{index}")
    clock.advance(1)

    assert exporter.export_once() == 450

    assert monitoring_server.time_series_requests == [200, 200, 50]
    assert monitoring_server.violations == []
    [last] = monitoring_server.series_points(
        PREFIX + "events/dead_lettered", reason="reason-449"
    )
    assert last.value == 450


def test_unavailable_server_backs_off_then_recovers(
    monitoring_server: FakeMonitoringServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry, exporter = make_exporter(monitoring_server, clock)
    errors: list[str] = []
    exporter.on_export_error = errors.append
    exporter.export_once()  # descriptors created while the server is healthy
    monitoring_server.fail_with = grpc.StatusCode.UNAVAILABLE
    caplog.set_level(logging.WARNING)

    for round_number in range(4):
        telemetry.count(mon.EVENTS_LEARNED, 100)
        clock.advance(1000)
        assert exporter.export_once() == 0, round_number

    assert errors == ["UNAVAILABLE"] * 4
    assert exporter.stats.errors_by_code == {"UNAVAILABLE": 4}
    warnings = [r for r in caplog.records if "UNAVAILABLE" in r.getMessage()]
    assert len(warnings) == 1
    # Retried only after the backoff: nothing is sent one interval later.
    monitoring_server.fail_with = None
    clock.advance(10)
    assert exporter.export_once() == 0
    clock.advance(1000)
    assert exporter.export_once() == 1
    [learned] = monitoring_server.series_points(PREFIX + "events/learned")
    assert learned.value == 400
    assert monitoring_server.violations == []


def test_failed_descriptors_retried_before_points(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    telemetry, exporter = make_exporter(monitoring_server, clock)
    monitoring_server.fail_with = grpc.StatusCode.DEADLINE_EXCEEDED
    telemetry.count(mon.EVENTS_READ, 7)
    clock.advance(1)

    assert exporter.export_once() == 0
    assert monitoring_server.points == []

    monitoring_server.fail_with = None
    clock.advance(1000)
    assert exporter.export_once() == 1
    assert len(monitoring_server.descriptors) == len(mon.ALL_METRICS) - 1
    [read] = monitoring_server.series_points(PREFIX + "events/read")
    assert read.value == 7


def test_terminal_error_drops_points(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    telemetry, exporter = make_exporter(monitoring_server, clock)
    exporter.export_once()
    monitoring_server.fail_with = grpc.StatusCode.PERMISSION_DENIED
    telemetry.set(mon.TRAINING_LOSS, 1.5)
    clock.advance(1)
    exporter.export_once()

    monitoring_server.fail_with = None
    clock.advance(1000)

    assert exporter.export_once() == 0
    assert exporter.pending_series() == 0
    assert exporter.stats.errors_by_code == {"PERMISSION_DENIED": 1}


def test_stuck_server_does_not_block_caller(
    monitoring_server: FakeMonitoringServer,
) -> None:
    monitoring_server.hold_requests = True
    monitoring_server.min_interval_s = 0.05
    exporter = CloudMonitoringSink(
        CloudMonitoringConfig(
            project_id="demo-project",
            job="jobs-demo",
            model="roles",
            export_interval_s=0.05,
            close_timeout_s=10.0,
        ),
        monitoring_server.metric_client(),
    )
    telemetry = mon.Telemetry([exporter])
    telemetry.count(mon.EVENTS_LEARNED, 1)
    exporter.start()
    assert monitoring_server.request_arrived.wait(30)

    # The export thread now waits inside CreateTimeSeries. Recording must
    # still complete, because the caller only updates memory.
    for _ in range(5000):
        telemetry.count(mon.EVENTS_LEARNED, 1)
        telemetry.set(mon.TRAINING_LOSS, 0.5)
    assert telemetry.counter_total(mon.EVENTS_LEARNED) == 5001
    assert not monitoring_server.release.is_set()
    assert monitoring_server.time_series_requests == []

    monitoring_server.release.set()
    monitoring_server.hold_requests = False
    exporter.close()
    assert monitoring_server.violations == []
    learned = monitoring_server.series_points(PREFIX + "events/learned")
    assert learned[-1].value == 5001


def test_export_thread_names_itself_and_exports(
    monitoring_server: FakeMonitoringServer,
) -> None:
    monitoring_server.min_interval_s = 0.05
    exporter = CloudMonitoringSink(
        CloudMonitoringConfig(
            project_id="demo-project",
            job="jobs-demo",
            model="roles",
            export_interval_s=0.05,
        ),
        monitoring_server.metric_client(),
    )
    telemetry = mon.Telemetry([exporter])
    telemetry.count(mon.EVENTS_LEARNED, 3)
    exporter.start()
    names = {thread.name for thread in threading.enumerate()}
    assert "streamlearn-metrics-export" in names

    assert monitoring_server.request_arrived.wait(30)
    telemetry.count(mon.EVENTS_LEARNED, 4)
    exporter.close()

    assert monitoring_server.violations == []
    learned = monitoring_server.series_points(PREFIX + "events/learned")
    assert learned[0].value == 3
    assert learned[-1].value == 7
    ends = [point.end_s for point in learned]
    assert all(
        later - earlier >= 0.05 - 1e-6 for earlier, later in itertools.pairwise(ends)
    )


def test_export_errors_reach_local_sinks(
    monitoring_server: FakeMonitoringServer, clock: FakeClock, tmp_path: Path
) -> None:
    run_dir = tmp_path
    jsonl = mon.JsonLinesSink(run_dir, job="jobs-demo", model="roles", clock=clock)
    exporter = CloudMonitoringSink(
        CloudMonitoringConfig(project_id="demo-project", job="jobs-demo", model="r"),
        monitoring_server.metric_client(),
        clock=clock,
    )
    telemetry = mon.Telemetry([jsonl, exporter], clock=clock)
    exporter.on_export_error = lambda code: telemetry.count(
        mon.EXPORT_ERRORS, 1, code=code
    )
    monitoring_server.fail_with = grpc.StatusCode.UNAVAILABLE

    exporter.export_once()
    telemetry.close()

    text = (run_dir / "metrics.jsonl").read_text()
    assert '"name":"monitoring/export_errors"' in text
    assert '"code":"UNAVAILABLE"' in text
    assert exporter.pending_series() == 0


def test_close_sends_final_values(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    telemetry, exporter = make_exporter(
        monitoring_server, clock, export_interval_s=10.0
    )
    telemetry.count(mon.EVENTS_LEARNED, 100)
    clock.advance(1)
    exporter.export_once()
    clock.advance(3)
    telemetry.count(mon.EVENTS_LEARNED, 28)
    closing_s = clock()

    telemetry.close()

    learned = monitoring_server.series_points(PREFIX + "events/learned")
    assert [point.value for point in learned] == [100, 128]
    # close() waited out the rest of the interval (7 s), not a whole one more.
    assert clock() - closing_s == pytest.approx(7.0)
    assert exporter.pending_series() == 0
    assert monitoring_server.violations == []


def test_points_sent_when_descriptors_denied(
    monitoring_server: FakeMonitoringServer, clock: FakeClock
) -> None:
    from streaming.monitoring.sinks.cloud_series import metric_descriptor

    # Someone with more rights created the descriptor; this job may not.
    existing = metric_descriptor(mon.EVENTS_LEARNED)
    monitoring_server.descriptors[existing.type] = existing
    monitoring_server.fail_descriptors_with = grpc.StatusCode.PERMISSION_DENIED
    telemetry, exporter = make_exporter(monitoring_server, clock)
    telemetry.count(mon.EVENTS_LEARNED, 42)
    clock.advance(1)

    assert exporter.export_once() == 1

    [learned] = monitoring_server.series_points(PREFIX + "events/learned")
    assert learned.value == 42
    expected_failures = len(mon.ALL_METRICS) - 1
    assert exporter.stats.errors_by_code == {"PERMISSION_DENIED": expected_failures}
