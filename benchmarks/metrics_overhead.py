"""Measure what metrics and their export cost a learner loop.

Usage: .venv/bin/python benchmarks/metrics_overhead.py [--events 600000]
       [--micro-batch 256] [--learner auto|online_model|stand-in]
       [--device cpu|cuda] [--output benchmarks/results/metrics_overhead.md]

One process learns one event stream, alternating micro-batches between
"bare" (learn only) and "instrumented" (learn, then the telemetry calls the
streaming job makes per micro-batch, written to RUN_DIR/metrics.jsonl, Beam
metrics and a Cloud Monitoring exporter). The exporter sends to a local
gRPC server in a child process, every 5 s (the lowest interval allowed),
and the resource sampler runs every 1 s, both more often than the 10 s
defaults.

The exporter and sampler threads run during both modes, so the alternation
measures the cost on the caller's thread. Their own CPU time is read per
thread from psutil and reported as a share of the run's wall time.

Both modes are timed in wall-clock time and in CPU time of the process. On
a machine shared with other work, the wall clock also counts the time the
process waited for a core. That moves the wall-clock comparison by several
percent from run to run, so the CPU-time comparison is the steadier one.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from online_model.arguments import positive_int
from streaming import monitoring as mon

LearnStep = Callable[[Sequence[Any]], Any]
EXAMPLES = """\
examples, from the repository root:
  # the run recorded in benchmarks/results/metrics_overhead.md
  .venv/bin/python benchmarks/metrics_overhead.py \\
      --output benchmarks/results/metrics_overhead.md
  # a shorter run that only prints its report
  .venv/bin/python benchmarks/metrics_overhead.py --events 100000
"""


@dataclass
class BlockTiming:
    mode: str
    events: int
    seconds: float
    # Of ``seconds``, the time spent in telemetry calls (0 for bare blocks),
    # and the CPU time this thread spent in them.
    telemetry_seconds: float = 0.0
    telemetry_cpu_seconds: float = 0.0
    # CPU time of the whole process over the block, all threads included.
    process_cpu_seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


# --- learners ------------------------------------------------------------------


def online_model_learner(events: int, device: str) -> tuple[str, list[Any], LearnStep]:
    from online_model.datasets import iter_events
    from online_model.learner import OnlineLearner
    from online_model.spec import load_spec

    postings = list(iter_events("job_postings"))
    # The data set has about 33,000 labelled postings. Longer runs replay it
    # under new event ids, because the learner drops repeated ids.
    stream = []
    for index in range(events):
        replay, position = divmod(index, len(postings))
        event = dict(postings[position])
        event["event_id"] = f"{event['event_id']}#{replay}"
        stream.append(event)
    learner = OnlineLearner(load_spec("job_postings"), seed=0, device=device)
    name = "online_model.learner.OnlineLearner on the job_postings stream"
    return name, stream, learner.learn


def stand_in_learner(events: int, device: str) -> tuple[str, list[Any], LearnStep]:
    """Build a hashed-feature softmax regression in torch, used when the real
    learner is not importable."""
    import torch

    generator = torch.Generator().manual_seed(0)
    features = torch.randint(0, 2**16, (events, 24), generator=generator)
    labels = torch.randint(0, 40, (events,), generator=generator)
    embedding = torch.nn.EmbeddingBag(2**16, 64, mode="sum").to(device)
    head = torch.nn.Linear(64, 40).to(device)
    parameters = list(embedding.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(parameters, lr=0.01)
    stream = list(zip(features, labels, strict=True))

    def learn(batch: Sequence[Any]) -> float:
        batch_features = torch.stack([f for f, _ in batch]).to(device)
        batch_labels = torch.stack([label for _, label in batch]).to(device)
        loss = torch.nn.functional.cross_entropy(
            head(embedding(batch_features)), batch_labels
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return "stand-in torch softmax regression (random data)", stream, learn


# --- what the job records per micro-batch -------------------------------------------


@dataclass(frozen=True)
class BatchNumbers:
    """Numbers the job has after a micro-batch, before recording them."""

    size: int
    seconds: float
    event_ms: int
    loss: float | None
    top1: float | None
    top5: float | None


def evaluate_micro_batch(
    result: Any, size: int, seconds: float, event_ms: int
) -> BatchNumbers:
    """Compute prequential top-1 and top-5 of the scored events.

    The job does this in both modes (its gate and drift detectors need the
    numbers), so it is timed apart from the telemetry calls.
    """
    scored = getattr(result, "scored", None) or []
    loss = getattr(result, "loss", result)
    top1 = top5 = None
    if scored:
        hits1 = hits5 = 0
        for record in scored:
            ranked = record.ranked_labels
            if ranked and ranked[0] == record.true_label:
                hits1 += 1
            if record.true_label in ranked[:5]:
                hits5 += 1
        top1, top5 = hits1 / len(scored), hits5 / len(scored)
    loss_value = float(loss) if isinstance(loss, float) else None
    return BatchNumbers(size, seconds, event_ms, loss_value, top1, top5)


def record_micro_batch(telemetry: mon.Telemetry, numbers: BatchNumbers) -> None:
    """Make the telemetry calls the streaming job makes per micro-batch."""
    size, event_ms = numbers.size, numbers.event_ms
    held_out = size // 10
    telemetry.count(mon.EVENTS_READ, size + held_out)
    telemetry.count(mon.EVENTS_LEARNED, size)
    telemetry.count(mon.EVENTS_HELD_OUT, held_out)
    telemetry.count(mon.PREDICTIONS_ANSWERED, 0)
    telemetry.observe(mon.MICRO_BATCH_SIZE, size)
    telemetry.observe(mon.MICRO_BATCH_LATENCY, numbers.seconds)
    telemetry.set(mon.EXAMPLES_PER_SECOND, size / max(numbers.seconds, 1e-9))
    if numbers.loss is not None:
        telemetry.set(mon.TRAINING_LOSS, numbers.loss, event_time_ms=event_ms)
    if numbers.top1 is not None and numbers.top5 is not None:
        telemetry.set(mon.PREQUENTIAL_TOP1, numbers.top1, event_time_ms=event_ms)
        telemetry.set(mon.PREQUENTIAL_TOP5, numbers.top5, event_time_ms=event_ms)


# --- a local endpoint for the exporter ------------------------------------------------


def serve_monitoring(port_queue: Any, stop_event: Any) -> None:
    """Serve CreateMetricDescriptor and CreateTimeSeries on 127.0.0.1,
    returning success for each request. Runs in a child process."""
    import grpc
    from google.api import metric_pb2
    from google.protobuf import empty_pb2

    def descriptor(request: bytes, context: Any) -> bytes:
        return metric_pb2.MetricDescriptor().SerializeToString()

    def time_series(request: bytes, context: Any) -> bytes:
        return empty_pb2.Empty().SerializeToString()

    handlers = {
        "CreateMetricDescriptor": grpc.unary_unary_rpc_method_handler(descriptor),
        "CreateTimeSeries": grpc.unary_unary_rpc_method_handler(time_series),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "google.monitoring.v3.MetricService", handlers
            ),
        )
    )
    port_queue.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    stop_event.wait()
    server.stop(grace=None)


def open_instrumented(run_dir: Path, port: int) -> tuple[mon.TelemetrySession, Any]:
    import grpc
    from google.cloud import monitoring_v3
    from google.cloud.monitoring_v3.services.metric_service.transports import (
        MetricServiceGrpcTransport,
    )

    from streaming.monitoring.sinks.beam import BeamMetricsSink
    from streaming.monitoring.sinks.cloud_monitoring import (
        CloudMonitoringConfig,
        CloudMonitoringSink,
    )

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = monitoring_v3.MetricServiceClient(
        transport=MetricServiceGrpcTransport(channel=channel)
    )
    exporter = CloudMonitoringSink(
        CloudMonitoringConfig(
            project_id="benchmark",
            job="metrics-overhead",
            model="roles",
            export_interval_s=5.0,
        ),
        client,
    )
    jsonl = mon.JsonLinesSink(
        run_dir, job="metrics-overhead", model="roles", clock=time.time
    )
    telemetry = mon.Telemetry([jsonl, BeamMetricsSink(), exporter])
    exporter.start()
    sampler = mon.ResourceSampler(telemetry, mon.ResourceSamplerConfig(interval_s=1.0))
    sampler.start()
    return mon.TelemetrySession(telemetry, sampler), exporter


def background_cpu_seconds() -> float:
    """Return the CPU time of this process's telemetry threads so far."""
    import threading

    telemetry_thread_ids = {
        thread.native_id
        for thread in threading.enumerate()
        if thread.name in ("streamlearn-metrics-export", "streamlearn-resource-sampler")
    }
    return sum(
        thread.user_time + thread.system_time
        for thread in psutil.Process().threads()
        if thread.id in telemetry_thread_ids
    )


# --- the run ------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    learner_name, stream, learn = choose_learner(args)
    load_before = os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")
    port_queue, stop_event = context.Queue(), context.Event()
    server = context.Process(target=serve_monitoring, args=(port_queue, stop_event))
    server.start()
    port = port_queue.get(timeout=60)

    run_dir = Path(tempfile.mkdtemp(prefix="metrics-overhead-"))
    session, exporter = open_instrumented(run_dir, port)
    batches = [
        stream[start : start + args.micro_batch]
        for start in range(0, len(stream) - args.micro_batch + 1, args.micro_batch)
    ]
    warm_up = min(args.warm_up_batches, len(batches) // 4)
    # The first result stands for a typical one when the calls are timed alone.
    sample_result = learn(batches[0])
    for batch in batches[1:warm_up]:
        learn(batch)

    # The stream contains up to hundreds of thousands of event dicts. Full
    # collections that traverse them took about 0.5 s each and landed in
    # random micro-batches, so they are moved out of the collector's view.
    gc.collect()
    gc.freeze()

    timings: list[BlockTiming] = []
    started = time.perf_counter()
    cpu_before = background_cpu_seconds()
    for index, batch in enumerate(batches[warm_up:]):
        # Micro-batches alternate between the modes in the pattern ABBA, so a
        # trend in speed (the model grows as labels arrive) favours neither.
        pair, second = divmod(index, 2)
        instrumented = (second == 0) == (pair % 2 == 0)
        telemetry = session.telemetry if instrumented else None
        timings.append(time_block(learn, [batch], telemetry, index))
    wall_s = time.perf_counter() - started
    thread_cpu_s = background_cpu_seconds() - cpu_before
    direct_s = direct_cost_seconds(session.telemetry, sample_result, args.micro_batch)

    session.close()
    stop_event.set()
    server.join(30)
    result = summarize(
        args, learner_name, timings, wall_s, thread_cpu_s, exporter, run_dir
    )
    result["load_before"] = load_before
    result["load_after"] = os.getloadavg()[0]
    result["direct_ms"] = direct_s * 1000
    bare_batch_s = args.micro_batch / result["bare"]
    result["direct_share"] = direct_s / bare_batch_s
    return result


def choose_learner(args: argparse.Namespace) -> tuple[str, list[Any], LearnStep]:
    if args.learner in ("auto", "online_model"):
        try:
            return online_model_learner(args.events, args.device)
        except ImportError as error:
            if args.learner == "online_model":
                raise
            print(f"online_model not importable ({error}); using the stand-in")
    return stand_in_learner(args.events, args.device)


def time_block(
    learn: LearnStep,
    batches: Sequence[Sequence[Any]],
    telemetry: mon.Telemetry | None,
    first_index: int,
) -> BlockTiming:
    events = 0
    telemetry_seconds = telemetry_cpu_seconds = 0.0
    started = time.perf_counter()
    started_cpu = time.process_time()
    for index, batch in enumerate(batches, start=first_index):
        batch_started = time.perf_counter()
        result = learn(batch)
        seconds = time.perf_counter() - batch_started
        numbers = evaluate_micro_batch(result, len(batch), seconds, index * 1000)
        if telemetry is not None:
            recording = time.perf_counter()
            recording_cpu = time.thread_time()
            record_micro_batch(telemetry, numbers)
            telemetry_seconds += time.perf_counter() - recording
            telemetry_cpu_seconds += time.thread_time() - recording_cpu
        events += len(batch)
    mode = "bare" if telemetry is None else "instrumented"
    elapsed = time.perf_counter() - started
    process_cpu = time.process_time() - started_cpu
    return BlockTiming(
        mode, events, elapsed, telemetry_seconds, telemetry_cpu_seconds, process_cpu
    )


def direct_cost_seconds(
    telemetry: mon.Telemetry, sample_result: Any, size: int, repeats: int = 2000
) -> float:
    """Return the mean time of one micro-batch's telemetry calls, timed alone."""
    numbers = evaluate_micro_batch(sample_result, size, 0.03, 0)
    started = time.perf_counter()
    for _ in range(repeats):
        record_micro_batch(telemetry, numbers)
    return (time.perf_counter() - started) / repeats


def rate(timings: Sequence[BlockTiming], mode: str) -> float:
    """Return events per wall-clock second of the blocks of one mode."""
    chosen = [t for t in timings if t.mode == mode]
    return sum(t.events for t in chosen) / sum(t.seconds for t in chosen)


def cpu_rate(timings: Sequence[BlockTiming], mode: str) -> float:
    """Return events per CPU second of the process in the blocks of one mode.

    Other processes on the machine delay the wall clock but not this
    process's CPU time, so this is the steadier measure on a shared machine.
    """
    chosen = [t for t in timings if t.mode == mode]
    return sum(t.events for t in chosen) / sum(t.process_cpu_seconds for t in chosen)


def summarize(
    args: argparse.Namespace,
    learner_name: str,
    timings: list[BlockTiming],
    wall_s: float,
    thread_cpu_s: float,
    exporter: Any,
    run_dir: Path,
) -> dict[str, Any]:
    bare, instrumented = rate(timings, "bare"), rate(timings, "instrumented")
    # The same comparison within consecutive chunks of the run shows how much
    # the result moves with noise from other processes.
    chunk = max(4, len(timings) // args.chunks // 4 * 4)
    chunk_slowdowns = [
        1 - rate(part, "instrumented") / rate(part, "bare")
        for part in (
            timings[start : start + chunk]
            for start in range(0, len(timings) - chunk + 1, chunk)
        )
    ]
    instrumented_timings = [t for t in timings if t.mode == "instrumented"]
    in_place_s = sum(t.telemetry_seconds for t in instrumented_timings)
    learn_only_s = sum(t.seconds - t.telemetry_seconds for t in instrumented_timings)
    lines = (run_dir / "metrics.jsonl").read_text().count("\n")
    return {
        "learner": learner_name,
        "bare": bare,
        "instrumented": instrumented,
        "slowdown": 1 - instrumented / bare,
        "bare_cpu": cpu_rate(timings, "bare"),
        "instrumented_cpu": cpu_rate(timings, "instrumented"),
        "cpu_slowdown": 1
        - cpu_rate(timings, "instrumented") / cpu_rate(timings, "bare"),
        "cpu_chunk_slowdowns": [
            1 - cpu_rate(part, "instrumented") / cpu_rate(part, "bare")
            for part in (
                timings[start : start + chunk]
                for start in range(0, len(timings) - chunk + 1, chunk)
            )
        ],
        "in_place_ms": 1000 * in_place_s / len(instrumented_timings),
        "in_place_median_ms": 1000
        * statistics.median(t.telemetry_seconds for t in instrumented_timings),
        "in_place_max_ms": 1000
        * max(t.telemetry_seconds for t in instrumented_timings),
        "in_place_share": in_place_s / learn_only_s,
        "in_place_cpu_ms": 1000
        * sum(t.telemetry_cpu_seconds for t in instrumented_timings)
        / len(instrumented_timings),
        "instrumented_learn": sum(t.events for t in instrumented_timings)
        / learn_only_s,
        "chunk_median": statistics.median(chunk_slowdowns),
        "chunk_min": min(chunk_slowdowns),
        "chunk_max": max(chunk_slowdowns),
        "chunks": len(chunk_slowdowns),
        "batches": len(timings),
        "thread_cpu_share": thread_cpu_s / wall_s,
        "wall_s": wall_s,
        "jsonl_records": lines,
        "series_exported": exporter.stats.series_written,
        "export_requests": exporter.stats.requests_sent,
        "export_errors": dict(exporter.stats.errors_by_code),
        "micro_batch": args.micro_batch,
        "events": args.events,
        "device": args.device,
        "torch": sys.modules["torch"].__version__ if "torch" in sys.modules else "-",
    }


def render_markdown(result: dict[str, Any], command: str) -> str:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python "
        f"{platform.python_version()}, torch {result['torch']}"
    )
    paragraphs = [
        "# Cost of metrics and export on the learner loop",
        f"Command: `{command}`",
        f"Machine: {machine}, device `{result['device']}`. Load average "
        f"{result['load_before']:.1f} before the run and {result['load_after']:.1f} "
        "after it (other processes shared the cores).",
        f"Learner: {result['learner']}; {result['batches']} micro-batches of "
        f"{result['micro_batch']} events, alternating between the two modes in the "
        f"pattern ABBA, in one process, over {result['wall_s']:.0f} s.",
        "| mode | events per wall-clock second | events per CPU second |\n"
        "|---|---|---|\n"
        f"| learn only | {result['bare']:,.0f} | {result['bare_cpu']:,.0f} |\n"
        f"| learn + metrics + export | {result['instrumented']:,.0f} | "
        f"{result['instrumented_cpu']:,.0f} |",
        f"**Slowdown in CPU time: {result['cpu_slowdown']:+.2%}** (target: under "
        "3%). This counts the CPU time of the whole process, background threads "
        "included, so other processes on the machine barely move it; over the "
        f"{result['chunks']} chunks of the run it ranged from "
        f"{min(result['cpu_chunk_slowdowns']):+.2%} to "
        f"{max(result['cpu_chunk_slowdowns']):+.2%}.",
        f"Slowdown in wall-clock time: {result['slowdown']:+.2%}. "
        f"Over {result['chunks']} consecutive chunks of the run the same "
        f"comparison gave a median of {result['chunk_median']:+.2%}, from "
        f"{result['chunk_min']:+.2%} to {result['chunk_max']:+.2%}; a negative "
        "value means the instrumented micro-batches happened to run faster, "
        "which is noise.",
        "Where the time went: in the instrumented micro-batches the telemetry "
        f"calls took {result['in_place_ms']:.3f} ms on average (median "
        f"{result['in_place_median_ms']:.3f} ms, max "
        f"{result['in_place_max_ms']:.1f} ms, {result['in_place_cpu_ms']:.3f} ms "
        "of CPU time on average), "
        f"{result['in_place_share']:.2%} of their learning time; their learning "
        f"step alone ran at {result['instrumented_learn']:,.0f} events/s against "
        f"{result['bare']:,.0f} in the bare ones. Timed alone in a loop, one "
        f"micro-batch's calls took {result['direct_ms']:.3f} ms. The export and "
        f"resource-sampler threads used {result['thread_cpu_share']:.2%} of one "
        "core.",
        "After every micro-batch the loop computed prequential top-1 and top-5 "
        "from the scored events, as the job must for its gate and drift "
        "detectors. After each instrumented one it then made 11 telemetry calls "
        "(4 counters, 2 distributions, 5 gauges). The calls went to a JSON-lines "
        "file, "
        "Beam metrics (no-ops outside a pipeline) and a Cloud Monitoring "
        f"exporter, which sent {result['series_exported']} series in "
        f"{result['export_requests']} requests to a local gRPC server every 5 s "
        f"(errors: {result['export_errors'] or 'none'}). The resource sampler "
        f"ran every 1 s. {result['jsonl_records']} records went to metrics.jsonl.",
    ]
    return "\n\n".join(paragraphs) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=positive_int,
        default=600_000,
        help="events to learn, warm-up included (default: 600000). The "
        "online_model learner replays the job_postings stream under new event "
        "ids to reach this count.",
    )
    parser.add_argument(
        "--micro-batch",
        type=positive_int,
        default=256,
        help="events per micro-batch (default: 256). A last partial "
        "micro-batch is dropped.",
    )
    parser.add_argument(
        "--warm-up-batches",
        type=positive_int,
        default=20,
        help="micro-batches learned before timing starts, at least 1 (the "
        "first one is also timed alone) and at most a quarter of all "
        "micro-batches (default: 20)",
    )
    parser.add_argument(
        "--chunks",
        type=positive_int,
        default=12,
        help="split the timed micro-batches into about this many consecutive "
        "chunks and report the range of the slowdown over them (default: 12)",
    )
    parser.add_argument(
        "--learner",
        choices=("auto", "online_model", "stand-in"),
        default="auto",
        help="learner to time (default: auto). online_model is streamlearn's "
        "OnlineLearner on the job_postings stream, stand-in is a torch softmax "
        "regression on random data, and auto falls back to stand-in when "
        "online_model cannot be imported.",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device for the learner, such as cpu or cuda (default: cpu)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="also write the Markdown report to this file (default: print only)",
    )
    args = parser.parse_args(argv)
    result = run(args)
    command = ".venv/bin/python benchmarks/metrics_overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = render_markdown(result, command.strip())
    print(text)
    if args.output is not None:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
