"""Telemetry, the JSON-lines sink, the Beam bridge and the resource sampler."""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import sys
import threading
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from monitoring_fake_clock import FakeClock

from streaming import monitoring as mon
from streaming.monitoring.catalogue import DISTRIBUTION_BOUNDS, EVENT_COUNTERS
from streaming.monitoring.sinks.beam import BeamMetricsSink


class ListSink(mon.Sink):
    def __init__(self) -> None:
        self.points: list[mon.Point] = []
        self.events: list[mon.RecordedEvent] = []

    def write_point(self, point: mon.Point) -> None:
        self.points.append(point)

    def write_event(self, event: mon.RecordedEvent) -> None:
        self.events.append(event)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_counter_totals_per_label(clock: FakeClock) -> None:
    sink = ListSink()
    telemetry = mon.Telemetry([sink], clock=clock)

    telemetry.count(mon.EVENTS_DEAD_LETTERED, 2, reason="truncated")
    clock.advance(5)
    telemetry.count(mon.EVENTS_DEAD_LETTERED, 3, reason="truncated")
    telemetry.count(mon.EVENTS_DEAD_LETTERED, 1, reason="trailing_bytes")

    assert telemetry.counter_total(mon.EVENTS_DEAD_LETTERED, reason="truncated") == 5
    assert telemetry.counter_total(mon.EVENTS_DEAD_LETTERED, reason="other") == 0
    assert [point.value for point in sink.points] == [2, 5, 1]
    assert [point.increment for point in sink.points] == [2, 3, 1]
    assert sink.points[1].start_time_s == sink.points[0].start_time_s
    assert sink.points[1].time_s == sink.points[0].time_s + 5
    assert sink.points[2].label_dict() == {"reason": "trailing_bytes"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.set(mon.EVENTS_LEARNED, 1), "is a counter, not a gauge"),
        (lambda t: t.count(mon.TRAINING_LOSS), "is a gauge, not a counter"),
        (
            lambda t: t.count(mon.MICRO_BATCH_LATENCY),
            "is a distribution, not a counter",
        ),
        (lambda t: t.count(mon.EVENTS_LEARNED, -1), "must be >= 0"),
        (lambda t: t.count(mon.EVENTS_DEAD_LETTERED), "expected labels"),
        (
            lambda t: t.count(mon.EVENTS_DEAD_LETTERED, 1, detector="adwin"),
            "expected labels",
        ),
        (lambda t: t.set(mon.TRAINING_LOSS, 1.0, version="v1"), "expected labels"),
        (lambda t: t.count(mon.EVENTS_LEARNED, 2.5), "takes whole numbers"),
    ],
)
def test_calls_checked_against_catalogue(call: Any, message: str) -> None:
    sink = ListSink()
    telemetry = mon.Telemetry([sink])

    with pytest.raises(mon.MetricError, match=message):
        call(telemetry)

    assert sink.points == []


def test_event_counts_and_records(clock: FakeClock) -> None:
    sink = ListSink()
    telemetry = mon.Telemetry([sink], clock=clock)

    telemetry.record_event(
        mon.EventKind.ROLLBACK,
        event_time_ms=1_700_000_000_000,
        labels={"trigger": mon.TRIGGER_MANUAL},
        from_version="v5",
        to_version="v3",
    )

    assert telemetry.counter_total(mon.ROLLBACKS, trigger="manual") == 1
    [event] = sink.events
    assert event.kind is mon.EventKind.ROLLBACK
    assert event.details == {"from_version": "v5", "to_version": "v3"}
    assert event.event_time_ms == 1_700_000_000_000
    with pytest.raises(mon.MetricError, match="expected labels"):
        telemetry.record_event(mon.EventKind.DRIFT_ALARM)


def test_jsonl_records_every_kind(tmp_path: Path, clock: FakeClock) -> None:
    sink = mon.JsonLinesSink(
        tmp_path, job="jobs-demo", model="roles", clock=clock, point_interval_s=0
    )
    telemetry = mon.Telemetry([sink], clock=clock)

    telemetry.count(mon.EVENTS_LEARNED, 256)
    clock.advance(2)
    telemetry.count(mon.EVENTS_LEARNED, 128)
    telemetry.set(mon.PREQUENTIAL_TOP5, 0.5, event_time_ms=1234)
    telemetry.observe(mon.MICRO_BATCH_LATENCY, 0.02)
    telemetry.record_event(
        mon.EventKind.DRIFT_ALARM, labels={"detector": "adwin"}, event_time_ms=99
    )
    telemetry.record_confusion(
        {("analyst", "engineer"): 3, ("analyst", "analyst"): 9}, version="v2"
    )
    telemetry.close()

    records = read_records(tmp_path)
    assert records[0] == {
        "type": "run",
        "time": 1_800_000_000.0,
        "job": "jobs-demo",
        "model": "roles",
    }
    assert records[1] == {
        "type": "point",
        "time": 1_800_000_000.0,
        "name": "events/learned",
        "kind": "counter",
        "labels": {},
        "value": 256,
        "start_time": 1_800_000_000.0,
    }
    assert records[2]["value"] == 384
    assert records[2]["start_time"] == 1_800_000_000.0
    assert records[3]["event_time_ms"] == 1234
    assert records[3]["kind"] == "gauge"
    assert records[4]["kind"] == "distribution"
    assert records[4]["count"] == 1
    assert records[4]["sum"] == 0.02
    assert records[4]["max"] == 0.02
    assert records[5]["name"] == "drift/alarms"
    assert records[6] == {
        "type": "event",
        "time": 1_800_000_002.0,
        "event": "drift_alarm",
        "labels": {"detector": "adwin"},
        "details": {},
        "event_time_ms": 99,
    }
    assert records[7]["type"] == "confusion"
    assert records[7]["counts"] == [
        ["analyst", "analyst", 9],
        ["analyst", "engineer", 3],
    ]
    assert len(records) == 8


class _FullDisk(io.StringIO):
    """A file whose writes and flushes fail as on a full disk."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_jsonl_full_disk_drops_records(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sink = mon.JsonLinesSink(
        tmp_path, job="jobs-demo", model="roles", clock=clock, point_interval_s=0
    )
    sink._file = _FullDisk()
    telemetry = mon.Telemetry([sink], clock=clock)

    with caplog.at_level(logging.ERROR):
        telemetry.count(mon.EVENTS_LEARNED, 256)
        clock.advance(2)
        telemetry.count(mon.EVENTS_LEARNED, 128)
        telemetry.record_event(mon.EventKind.DRIFT_ALARM, labels={"detector": "a"})
        telemetry.close()

    assert sink.failed_writes >= 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "No space left on device" in errors[0]


def test_jsonl_writes_numpy_and_nan(tmp_path: Path, clock: FakeClock) -> None:
    import numpy

    sink = mon.JsonLinesSink(
        tmp_path, job="j", model="m", clock=clock, point_interval_s=0
    )
    telemetry = mon.Telemetry([sink], clock=clock)

    telemetry.set(mon.TRAINING_LOSS, numpy.float32(0.5))
    telemetry.set(mon.TRAINING_LOSS, float("nan"))
    telemetry.count(mon.EVENTS_LEARNED, numpy.int64(3))
    telemetry.set(mon.SERVING_VERSION, 4.0)
    telemetry.record_event(
        mon.EventKind.PROMOTION,
        top5=numpy.float32(0.25),  # type: ignore[arg-type]
        path=Path("v4"),  # type: ignore[arg-type]
    )
    telemetry.close()

    values = [r["value"] for r in read_records(tmp_path)[1:5]]
    assert values[0] == 0.5
    assert values[1] != values[1]  # NaN survives the round trip
    assert values[2] == 3
    assert isinstance(values[2], int)
    assert values[3] == 4
    assert isinstance(values[3], int)
    event = read_records(tmp_path)[-1]
    assert event["details"] == {"top5": 0.25, "path": "v4"}


def test_confusion_from_matrix_table(tmp_path: Path, clock: FakeClock) -> None:
    from online_model.evaluation import ConfusionMatrix

    sink = mon.JsonLinesSink(tmp_path, job="j", model="m", clock=clock)
    telemetry = mon.Telemetry([sink], clock=clock)
    table = ConfusionMatrix(("analyst", "engineer"), ((7, 2), (0, 5)))

    telemetry.record_confusion(table, version="v3", source="prequential")
    telemetry.close()

    [record] = read_records(tmp_path)[1:]
    assert record["counts"] == [
        ["analyst", "analyst", 7],
        ["analyst", "engineer", 2],
        ["engineer", "engineer", 5],
    ]
    assert record["source"] == "prequential"


def test_jsonl_thins_points_per_series(tmp_path: Path, clock: FakeClock) -> None:
    sink = mon.JsonLinesSink(tmp_path, job="j", model="m", clock=clock)
    telemetry = mon.Telemetry([sink], clock=clock)

    for step in range(10):  # 2.25 s in steps of 0.25 s
        telemetry.count(mon.EVENTS_LEARNED, 10)
        telemetry.set(mon.TRAINING_LOSS, float(step), event_time_ms=step)
        telemetry.observe(mon.MICRO_BATCH_LATENCY, 0.01 * (step + 1))
        clock.advance(0.25)
    telemetry.close()

    records = read_records(tmp_path)[1:]
    learned = [r["value"] for r in records if r["name"] == "events/learned"]
    loss = [
        (r["value"], r["event_time_ms"])
        for r in records
        if r["name"] == "training/loss"
    ]
    latency = [r for r in records if r["name"] == "training/micro_batch_latency"]
    # The counter is written first at 0 s, 1 s and 2 s. Each of those
    # writes starts the once-a-second flush, which writes the loss and
    # latency held back since their last line (steps 1-3 and 5-7). So the
    # values of steps 4 and 8 wait, and close writes the last ones.
    assert learned == [10, 50, 90, 100]
    assert loss == [(0.0, 0), (3.0, 3), (7.0, 7), (9.0, 9)]
    assert [r["count"] for r in latency] == [1, 3, 4, 2]
    assert sum(r["sum"] for r in latency) == pytest.approx(0.55)
    assert latency[1]["min"] == pytest.approx(0.02)
    assert latency[1]["max"] == pytest.approx(0.04)
    assert len(records) == 12


def test_jsonl_flushes_on_interval(tmp_path: Path, clock: FakeClock) -> None:
    sink = mon.JsonLinesSink(
        tmp_path, job="j", model="m", clock=clock, flush_interval_s=5.0
    )
    telemetry = mon.Telemetry([sink], clock=clock)
    telemetry.count(mon.EVENTS_READ, 1)
    assert len(read_records(tmp_path)) == 0

    clock.advance(5)
    telemetry.count(mon.EVENTS_READ, 1)

    assert len(read_records(tmp_path)) == 3
    sink.close()


class CountingDoFn(beam.DoFn):
    def setup(self) -> None:
        self.telemetry = mon.Telemetry([BeamMetricsSink()])

    def process(self, element: int) -> Any:
        self.telemetry.count(mon.EVENTS_LEARNED, element)
        self.telemetry.count(mon.EVENTS_DEAD_LETTERED, 1, reason="truncated")
        self.telemetry.observe(mon.MICRO_BATCH_LATENCY, element / 1000)
        self.telemetry.set(mon.SERVING_VERSION, 4)
        self.telemetry.set(mon.TRAINING_LOSS, 0.5)
        yield element


def test_beam_bridge_counts_in_dofn() -> None:
    pipeline = beam.Pipeline(runner="DirectRunner")
    _ = pipeline | beam.Create([10, 20, 30]) | beam.ParDo(CountingDoFn())
    result = pipeline.run()
    result.wait_until_finish()

    metrics = result.metrics().query(MetricsFilter().with_namespace("streamlearn"))
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    distributions = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    gauges = {g.key.metric.name: g.committed for g in metrics["gauges"]}
    assert counters == {
        "events/learned": 60,
        "events/dead_lettered[reason=truncated]": 3,
    }
    latency = distributions["training/micro_batch_latency_ms"]
    assert latency.count == 3
    assert latency.sum == 60
    assert latency.min == 10
    assert gauges["registry/serving_version"].value == 4
    assert "training/loss" not in gauges


def test_resource_sampler_writes_gauges(clock: FakeClock) -> None:
    sink = ListSink()
    telemetry = mon.Telemetry([sink], clock=clock)
    sampler = mon.ResourceSampler(telemetry, mon.ResourceSamplerConfig(interval_s=1))

    sampler.sample_once()
    clock.advance(10)
    sampler.sample_once()

    names = [point.spec.name for point in sink.points]
    assert names.count("resource/cpu_utilization") == 1
    assert names.count("resource/memory_rss") == 2
    assert names.count("resource/network_sent_bytes") == 2
    rss = next(p for p in sink.points if p.spec.name == "resource/memory_rss")
    assert rss.value > 10_000_000
    ratio = next(p for p in sink.points if p.spec.name == "resource/memory_utilization")
    assert 0 < ratio.value < 1
    cpu = next(p for p in sink.points if p.spec.name == "resource/cpu_utilization")
    assert cpu.value >= 0
    torch = sys.modules.get("torch")
    has_gpu = torch is not None and torch.cuda.is_available()
    assert any(name.startswith("resource/gpu") for name in names) == has_gpu


def test_open_telemetry_session(tmp_path: Path) -> None:
    config = mon.TelemetryConfig(
        job="jobs-demo", model="roles", run_dir=tmp_path, resource_interval_s=60
    )

    telemetry = mon.shared_telemetry(config)
    again = mon.shared_telemetry(config)
    telemetry.count(mon.EVENTS_READ, 5)
    running = {thread.name for thread in threading.enumerate()}
    mon.close_shared_telemetry()
    stopped = {thread.name for thread in threading.enumerate()}

    assert "streamlearn-resource-sampler" in running
    assert "streamlearn-resource-sampler" not in stopped

    assert again is telemetry
    records = read_records(tmp_path)
    assert [r["type"] for r in records].count("run") == 1
    read = [r for r in records if r.get("name") == "events/read"]
    assert [r["value"] for r in read] == [0, 5]
    promotions = [r for r in records if r.get("name") == "registry/promotions"]
    assert [r["value"] for r in promotions] == [0]
    # close() takes one last resource sample.
    assert any(r.get("name") == "resource/memory_rss" for r in records)


def test_telemetry_config_rejects_fast_export() -> None:
    with pytest.raises(ValueError, match=r"export_interval_s must be .* >= 5 s"):
        mon.TelemetryConfig(job="j", model="m", export_interval_s=1.0)


@pytest.mark.parametrize(
    "field", ["export_interval_s", "resource_interval_s", "file_point_interval_s"]
)
def test_telemetry_config_rejects_nan(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        mon.TelemetryConfig(job="j", model="m", **{field: math.nan})


def test_catalogue_is_consistent() -> None:
    names = [spec.name for spec in mon.ALL_METRICS]
    assert len(names) == len(set(names))
    for spec in mon.ALL_METRICS:
        assert spec.metric_type.startswith("custom.googleapis.com/streamlearn/")
        assert spec.unit, spec.name
        assert spec.description.endswith("."), spec.name
        if spec.is_distribution:
            bounds = DISTRIBUTION_BOUNDS[spec.name]
            assert list(bounds) == sorted(set(bounds)), spec.name
    for kind, counter in EVENT_COUNTERS.items():
        assert counter.is_counter, kind


def test_docs_list_every_metric() -> None:
    docs = Path(__file__).parents[3] / "docs" / "metrics.md"
    text = docs.read_text()
    for spec in mon.ALL_METRICS:
        if spec.is_distribution:
            kind = "distribution"
        else:
            kind = "counter" if spec.is_counter else "gauge"
        row = (
            f"| `{spec.name}` | {kind} | {spec.value_type.value} | `{spec.unit}` | "
            f"{', '.join(spec.labels)} | {spec.description} |"
        )
        assert row in text, spec.name


class FakeCuda:
    """The parts of torch.cuda the sampler reads, for two devices; NVML
    (utilisation) fails on the second."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 2

    @staticmethod
    def memory_allocated(index: int) -> int:
        return (index + 1) * 2**30

    @staticmethod
    def memory_reserved(index: int) -> int:
        return (index + 2) * 2**30

    @staticmethod
    def utilization(index: int) -> int:
        if index == 1:
            raise ModuleNotFoundError("nvidia-ml-py is not installed")
        return 37


def test_resource_sampler_reads_gpus(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    fake_torch = types.SimpleNamespace(cuda=FakeCuda)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    sink = ListSink()
    telemetry = mon.Telemetry([sink], clock=clock)

    mon.ResourceSampler(telemetry).sample_once()

    gpu = {
        (p.spec.name, p.labels): p.value
        for p in sink.points
        if p.spec.name.startswith("resource/gpu")
    }
    assert gpu == {
        ("resource/gpu_memory_allocated", ("0",)): 2**30,
        ("resource/gpu_memory_reserved", ("0",)): 2 * 2**30,
        ("resource/gpu_utilization", ("0",)): 0.37,
        ("resource/gpu_memory_allocated", ("1",)): 2 * 2**30,
        ("resource/gpu_memory_reserved", ("1",)): 3 * 2**30,
    }


def test_docstring_examples_run() -> None:
    import doctest

    import streaming.monitoring.telemetry as telemetry_module

    result = doctest.testmod(telemetry_module)

    assert result.attempted == 5
    assert result.failed == 0
