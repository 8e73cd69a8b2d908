"""The system sections of the report: events per second and resource use
over wall-clock time since the run started."""

from __future__ import annotations

from collections.abc import Sequence

from streaming.report.charts import PALETTE, Line, line_chart
from streaming.report.formats import elapsed_format, number_text
from streaming.report.records import CounterSample, RunRecords, Sample, counter_rates

# Bins of the events-per-second chart. Runners process input in bundles, so
# finer bins show the bundles rather than the rate.
THROUGHPUT_BINS = 40
MIB = 2**20


def throughput_section(records: RunRecords) -> str:
    start_s = records.first_time_s or 0.0
    lines = []
    for index, (label, name) in enumerate(
        (("learned", "events/learned"), ("read", "events/read"))
    ):
        samples = _merged_counter(records, name)
        rates = [
            (t - start_s, rate)
            for t, rate in counter_rates(samples, max_points=THROUGHPUT_BINS)
        ]
        lines.append(Line(f"{label} per second", rates, PALETTE[index]))
    charts = line_chart(
        "Events per second over time since start",
        [line for line in lines if line.points],
        x_format=elapsed_format(records),
        y_format=number_text,
    )
    reported = records.gauge("training/examples_per_second")
    if reported:
        step_speed = Line(
            "events/s of each learning step",
            [(s.time_s - start_s, s.value) for s in reported],
            PALETTE[2],
        )
        charts += line_chart(
            "Speed of the learning step alone (the job's own measure)",
            [step_speed],
            x_format=elapsed_format(records),
            y_format=number_text,
        )
    return "<h2>Throughput</h2>" + charts


def _merged_counter(records: RunRecords, name: str) -> list[CounterSample]:
    series = records.counters.get(name, {})
    if len(series) == 1:
        return next(iter(series.values()))
    return records.counter(name)


def resource_section(records: RunRecords) -> str:
    charts = (
        _utilization_chart(records) + _memory_chart(records) + _network_chart(records)
    )
    return "<h2>Resource use</h2>" + charts


def _over_time(
    records: RunRecords, samples: Sequence[Sample], scale: float = 1.0
) -> list[tuple[float, float]]:
    start_s = records.first_time_s or 0.0
    return [(s.time_s - start_s, s.value * scale) for s in samples]


def _per_device(
    records: RunRecords, name: str, label: str, scale: float = 1.0
) -> list[Line]:
    lines = []
    for key, samples in sorted(records.gauges.get(name, {}).items()):
        device = dict(key).get("device", "0")
        points = _over_time(records, samples, scale)
        lines.append(Line(label.format(device=device), points, PALETTE[3]))
    return lines


def _utilization_chart(records: RunRecords) -> str:
    cpu = records.gauge("resource/cpu_utilization")
    memory = records.gauge("resource/memory_utilization")
    lines = [
        Line("CPU (cores busy)", _over_time(records, cpu), PALETTE[0]),
        Line("memory / limit", _over_time(records, memory), PALETTE[1]),
        *_per_device(records, "resource/gpu_utilization", "GPU {device}"),
    ]
    return line_chart(
        "CPU, memory and GPU utilisation",
        [line for line in lines if line.points],
        x_format=elapsed_format(records),
        y_format=number_text,
    )


def _memory_chart(records: RunRecords) -> str:
    rss = records.gauge("resource/memory_rss")
    lines = [
        Line("resident memory (MiB)", _over_time(records, rss, 1 / MIB), PALETTE[1]),
        *_per_device(
            records,
            "resource/gpu_memory_allocated",
            "GPU {device} allocated (MiB)",
            1 / MIB,
        ),
    ]
    return line_chart(
        "Memory",
        [line for line in lines if line.points],
        x_format=elapsed_format(records),
        y_format=number_text,
    )


def _network_chart(records: RunRecords) -> str:
    start_s = records.first_time_s or 0.0
    lines = []
    directions = (
        ("sent", "resource/network_sent_bytes"),
        ("received", "resource/network_received_bytes"),
    )
    for index, (label, name) in enumerate(directions):
        rates = counter_rates(_merged_counter(records, name))
        points = [(t - start_s, rate / 1024) for t, rate in rates]
        lines.append(Line(f"{label} (KiB/s)", points, PALETTE[index]))
    return line_chart(
        "Network, host-wide",
        [line for line in lines if line.points],
        x_format=elapsed_format(records),
        y_format=number_text,
    )
