"""Measure the streaming job end to end on the DirectRunner and the emulator.

Prints and saves (benchmarks/results/streaming.md):

- events per second end to end, many events per message (the median of
  three runs, over the events and over copies of them with fresh ids) and
  one per message, with the rate of each stage alone
  (decoding, the learner stage, the learner's learn step; the best of three
  runs) so that the bottleneck can be named;
- freshness: time from publishing an event to the promotion of a version
  that learned from it, median and p95 over all such events;
- time from ``rollback --to vN`` returning to the job learning from vN.

Needs the Pub/Sub emulator: ``eval "$(scripts/emulator)"`` first.

    .venv/bin/python benchmarks/streaming_throughput.py [--events 32672]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from online_model.datasets import iter_events  # noqa: E402
from online_model.learner import OnlineLearner  # noqa: E402
from online_model.spec import load_schema, load_spec  # noqa: E402
from rollback.registry import open_registry  # noqa: E402
from streaming.job_config import JobConfig  # noqa: E402
from streaming.pipeline import JobSettings, build_decoder  # noqa: E402
from streaming.publish import PublishStats, publish_events  # noqa: E402
from streaming.runtime import EventBatch, JobRuntime  # noqa: E402
from streaming.topics import (  # noqa: E402
    DEFAULT_PROJECT,
    JobTopics,
    ensure_topics,
    require_emulator,
)
from streaming.wire import Encoding, encode_container  # noqa: E402

RESULTS = REPOSITORY / "benchmarks" / "results" / "streaming.md"
DEFAULTS = JobConfig()
DECODE = "decode alone (the job's decoder, with its checks)"
LEARN_STEP = f"learn step alone (micro-batch {DEFAULTS.micro_batch_size})"
STAGE = "learner stage alone (default gates, no checkpoints)"
STAGE_UNSPACED = (
    f"learner stage alone (a gate every {DEFAULTS.gate_every_micro_batches} "
    "micro-batches, no spacing)"
)
STAGE_ONE_GATE = "learner stage alone (one gate at the end, no checkpoints)"
# The steady stream for freshness and rollback adoption, with the default
# gates: at 1,000 events/s a gate comes about every 5 s (10 micro-batches).
ALONE_RUNS = 3
END_TO_END_RUNS = 3
STEADY_EVENTS = 20_000
STEADY_RATE = 1000.0
SPEC = load_spec("job_postings")
SCHEMA = load_schema("job_postings")
EXAMPLES = """\
examples, from the repository root, after scripts/emulator has started the
Pub/Sub emulator on its default address 127.0.0.1:8085:
  # the run recorded in benchmarks/results/streaming.md, which it overwrites
  PUBSUB_EMULATOR_HOST=127.0.0.1:8085 .venv/bin/python \\
      benchmarks/streaming_throughput.py --events 32672 --device cpu
  # the same run without writing the results file
  PUBSUB_EMULATOR_HOST=127.0.0.1:8085 .venv/bin/python \\
      benchmarks/streaming_throughput.py --events 32672 --device cpu --no-save
"""


# ---------------------------------------------------------------- stages alone


def rate_decode(events: list[dict[str, Any]]) -> float:
    settings = JobSettings("decode", DEFAULT_PROJECT, "job_postings", "", "")
    decoder = build_decoder(settings)
    payloads = [
        encode_container(events[i : i + 500], SCHEMA)
        for i in range(0, len(events), 500)
    ]
    started = time.perf_counter()
    decoded = sum(len(decoder.decode(p).events) for p in payloads)
    return decoded / (time.perf_counter() - started)


def rate_learn_step(events: list[dict[str, Any]], device: str) -> float:
    learner = OnlineLearner(SPEC, seed=0, device=device)
    size = DEFAULTS.micro_batch_size
    batches = [events[i : i + size] for i in range(0, len(events), size)]
    learner.learn(batches[0])
    started = time.perf_counter()
    for batch in batches[1:]:
        learner.learn(batch)
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - started)


def rate_learner_stage(
    events: list[dict[str, Any]], device: str, config: JobConfig
) -> float:
    with tempfile.TemporaryDirectory() as folder:
        runtime = JobRuntime(
            SPEC,
            config,
            open_registry(Path(folder) / "registry", create=True),
            new_learner=lambda: OnlineLearner(SPEC, seed=0, device=device),
            load_learner=lambda files: OnlineLearner.from_files(files, device=device),
        )
        started = time.perf_counter()
        for i in range(0, len(events), 500):
            runtime.handle_batch(EventBatch(events[i : i + 500]))
        runtime.finish()
        return len(events) / (time.perf_counter() - started)


# ---------------------------------------------------------------- the real job


def run_job(
    name: str,
    events: list[dict[str, Any]],
    encoding: Encoding,
    events_per_message: int,
    rate_events_per_s: float,
    folder: Path,
    extra: list[str],
    during: Any = None,
) -> dict[str, Any]:
    """Publish ``events`` while the job runs; return timings and records."""
    topics = JobTopics(DEFAULT_PROJECT, f"{name}-{time.time_ns()}")
    ensure_topics(topics)
    run_dir = folder / name
    command = [
        sys.executable, "-m", "streaming.cli", "run",
        "--job-name", topics.job_name,
        "--registry", str(folder / f"{name}-registry"),
        "--run-dir", str(run_dir),
        "--stop-after", str(len(events)),
        "--idle-timeout-s", "120",
        "--progress-interval-s", "0.1",
        "--format", "json",
        *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    stats = PublishStats()
    publisher = threading.Thread(
        target=publish_events,
        args=(events, SCHEMA, topics.events_topic, encoding, events_per_message, stats),
        kwargs={"rate_events_per_s": rate_events_per_s},
    )
    progress: list[tuple[float, int]] = []
    summary: dict[str, Any] = {}
    started = False
    assert process.stdout is not None
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record["event"] == "started" and not started:
            started = True
            publisher.start()
            if during is not None:
                threading.Thread(target=during, args=(topics, folder, name)).start()
        elif record["event"] == "progress":
            progress.append((time.monotonic(), record["events_read"]))
        elif record["event"] == "finished":
            summary = record
    process.wait()
    publisher.join()
    first = next(t for t, n in progress if n > 0)
    done = next((t for t, n in progress if n >= len(events)), progress[-1][0])
    reading_s = max(done - first, 1e-9)
    return {
        "summary": summary,
        "messages": stats.messages,
        "events_per_s": (len(events) - _read_at(progress, first)) / reading_s,
        "decisions": _decisions(run_dir),
    }


def _read_at(progress: list[tuple[float, int]], moment: float) -> int:
    return next(n for t, n in progress if t == moment)


def _decisions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def freshness(records: list[dict[str, Any]]) -> tuple[float, float, int]:
    """Return the median and p95 of freshness over every served event.

    Each promotion carries an even sample of its events' freshness; samples
    are weighted by the number of events behind them.
    """
    weighted: list[tuple[float, float]] = []
    for record in records:
        if record["kind"] != "promotion" or not record["freshness_sample_s"]:
            continue
        weight = record["freshness_events"] / len(record["freshness_sample_s"])
        weighted.extend((value, weight) for value in record["freshness_sample_s"])
    weighted.sort()
    total = sum(w for _, w in weighted)
    return (
        _weighted_quantile(weighted, total, 0.5),
        _weighted_quantile(weighted, total, 0.95),
        round(total),
    )


def _weighted_quantile(
    values: list[tuple[float, float]], total: float, q: float
) -> float:
    seen = 0.0
    for value, weight in values:
        seen += weight
        if seen >= q * total:
            return value
    return values[-1][0] if values else float("nan")


def rollback_during_run(topics: JobTopics, folder: Path, name: str) -> None:
    """Wait for v2, run ``rollback --to v1`` and record when it returned."""
    registry_path = folder / f"{name}-registry"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(open_registry(registry_path).versions()) >= 2:
                break
        except Exception:  # the job has not created the registry yet
            pass
        time.sleep(0.2)
    command = [
        str(REPOSITORY / ".venv" / "bin" / "rollback"),
        "--to", "v1",
        "--registry", str(registry_path),
        "--announce-topic", topics.model_versions_topic,
        "--reason", "benchmark",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    (folder / f"{name}-rollback-returned").write_text(str(time.time()))


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=int,
        default=32_672,
        help="events read from the start of the job_postings stream "
        "(default: 32672). The stages alone and the runs with 500 events per "
        "message use all of them, the freshness and rollback run at most the "
        f"first {STEADY_EVENTS:,}.",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=3,
        help="copies of the --events events, each with fresh event ids, that "
        "the longer end-to-end runs publish, so that their rate is measured "
        "over more seconds (default: 3)",
    )
    parser.add_argument(
        "--single-events",
        type=int,
        default=3_000,
        help="events for the end-to-end run with one event per message, the "
        "first of those --events reads (default: 3000)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device for the learner in the stages alone and in the job, "
        "such as cpu or cuda (default: cpu)",
    )
    parser.add_argument(
        "--no-save",
        action="store_true",
        help="print the report without writing it to "
        f"{RESULTS.relative_to(REPOSITORY)}",
    )
    args = parser.parse_args()
    if args.copies < 1:
        parser.error(f"argument --copies: expected 1 or more, got {args.copies}")
    require_emulator()

    events = list(itertools.islice(iter_events("job_postings"), args.events))
    # Each stage alone runs ALONE_RUNS times, in turns, and the best rate
    # counts: other work on this machine only ever slows a run down.
    unspaced = JobConfig(gate_min_interval_s=0.0)
    # The stage with its only gate in finish(): the difference is the time
    # the gates cost.
    one_gate = JobConfig(gate_every_micro_batches=1_000_000, gate_every_s=1e9)
    alone: dict[str, Any] = {
        DECODE: lambda: rate_decode(events),
        LEARN_STEP: lambda: rate_learn_step(events, args.device),
        STAGE: lambda: rate_learner_stage(events, args.device, JobConfig()),
        STAGE_UNSPACED: lambda: rate_learner_stage(events, args.device, unspaced),
        STAGE_ONE_GATE: lambda: rate_learner_stage(events, args.device, one_gate),
    }
    rows: dict[str, Any] = dict.fromkeys(alone, 0.0)
    for _ in range(ALONE_RUNS):
        for name, measure in alone.items():
            rows[name] = max(rows[name], measure())
    device = ["--device", args.device]
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        many_runs = [
            run_job(f"many{n}", events, Encoding.CONTAINER, 500, 0.0, folder, device)
            for n in range(END_TO_END_RUNS)
        ]
        many = _median_run(many_runs)
        copies = _copies(events, args.copies)
        long_runs = [
            run_job(f"long{n}", copies, Encoding.CONTAINER, 500, 0.0, folder, device)
            for n in range(END_TO_END_RUNS)
        ]
        long = _median_run(long_runs)
        single = run_job(
            "single", events[: args.single_events], Encoding.SINGLE_OBJECT, 1, 0.0,
            folder, device,
        )  # fmt: skip
        steady = run_job(
            "steady", events[:STEADY_EVENTS], Encoding.CONTAINER, 100,
            STEADY_RATE, folder, device, during=rollback_during_run,
        )  # fmt: skip
        returned_at = float((folder / "steady-rollback-returned").read_text())
        history = open_registry(folder / "steady-registry").history()
        changed_at = next(
            c.time.timestamp()
            for c in history
            if c.kind == "rollback" and c.to_version == 1
        )
    rows[f"end to end, 500 events per message, {len(events):,} events (median)"] = many[
        "events_per_s"
    ]
    rows[f"end to end, 500 events per message, {len(copies):,} events (median)"] = long[
        "events_per_s"
    ]
    rows["end to end, 1 event per message"] = single["events_per_s"]

    median_s, p95_s, served = freshness(steady["decisions"])
    learned = [
        d
        for d in steady["decisions"]
        if d["kind"] == "learned_from_adopted" and d["version"] == 1
    ]
    learned_at = learned[0]["time"] if learned else float("nan")
    adoption = (learned_at - returned_at, learned_at - changed_at)
    many["all_events_per_s"] = [run["events_per_s"] for run in many_runs]
    long["all_events_per_s"] = [run["events_per_s"] for run in long_runs]
    text = render(args, rows, many, long, single, (median_s, p95_s, served), adoption)
    print(text)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
    return 0


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda run: run["events_per_s"])[len(runs) // 2]


def _copies(events: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Return ``count`` copies of ``events``, each copy with fresh event ids."""
    return [
        {**event, "event_id": f"{event['event_id']}-copy{copy}"}
        for copy in range(count)
        for event in events
    ]


def bottleneck(rows: dict[str, float]) -> str:
    """Name the bottleneck and split the learner stage's time, from the rows."""
    stage = rows[STAGE]
    # Shares of the stage's time per event. 90% of the events are learned
    # (the rest are held out), so the learn step's share is an estimate.
    learned = 1.0 - JobConfig().holdout_fraction
    learn_share = learned * stage / rows[LEARN_STEP]
    gate_share = 1.0 - stage / rows[STAGE_ONE_GATE]
    unspaced_share = 1.0 - rows[STAGE_UNSPACED] / rows[STAGE_ONE_GATE]
    # The DirectRunner decodes in the same process, one stage after the other.
    combined = 1.0 / (1.0 / rows[DECODE] + 1.0 / stage)
    return (
        "Bottleneck with many events per message: the learner stage, which runs "
        f"on one key ({stage:,.0f} events/s alone). The learn step takes about "
        f"{learn_share:.0%} of its time and the gates {gate_share:.0%}: they "
        "score the holdout window with the candidate, the serving version and "
        "the kept earlier versions, and publish. Gates every "
        f"{DEFAULTS.gate_every_micro_batches} micro-batches without the 2 s "
        f"spacing would take {unspaced_share:.0%}. The rest is "
        "routing, drift detection and the last gate. The DirectRunner decodes "
        "in the same process, and decoding plus the stage allow about "
        f"{combined:,.0f} events/s. The end-to-end rate is measured while "
        "events are read, so it leaves out the last gate and can exceed that. "
        "One event per message is bound by the DirectRunner's Pub/Sub read "
        "(10 messages per pull)."
    )


def render(
    args: argparse.Namespace,
    rows: dict[str, float],
    many: dict[str, Any],
    long: dict[str, Any],
    single: dict[str, Any],
    fresh: tuple[float, float, int],
    adoption: tuple[float, float],
) -> str:
    lines = [
        "# Streaming job: throughput, freshness, rollback adoption",
        "",
        f"Command: `PUBSUB_EMULATOR_HOST={os.environ['PUBSUB_EMULATOR_HOST']} "
        ".venv/bin/python "
        f"benchmarks/streaming_throughput.py --events {args.events} "
        f"--copies {args.copies} --device {args.device}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        "DirectRunner (apache-beam) and the Pub/Sub emulator on 127.0.0.1; "
        f"real job postings, learner on {args.device}.",
        "",
        "| what | events/s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {rate:,.0f} |" for name, rate in rows.items()]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines += [
        "",
        f"Each stage alone: the best of {ALONE_RUNS} runs. End to end with "
        f"500 events per message, {END_TO_END_RUNS} runs each: "
        + ", ".join(f"{rate:,.0f}" for rate in many["all_events_per_s"])
        + f" events/s over the {args.events:,} events, and "
        + ", ".join(f"{rate:,.0f}" for rate in long["all_events_per_s"])
        + f" events/s over {args.copies} copies of them, each copy with fresh "
        "event ids. The rate counts from the first progress poll that saw an "
        "event read to the poll that saw the last, so the longer runs measure "
        "over about three times as many seconds.",
        "",
        f"Many per message: {many['messages']} and {long['messages']} "
        "messages; one per message: "
        f"{single['messages']} messages. Load average at the end (1, 5, 15 "
        f"min): {load}. Rates have varied by up to 2x between runs on this "
        "machine when other work shared its cores.",
        "",
        bottleneck(rows),
        "",
        f"Freshness (publish to serving a version that learned the event), "
        f"steady stream of {STEADY_RATE:,.0f} events/s for {STEADY_EVENTS:,} "
        "events, default gates: "
        f"median {fresh[0]:.2f} s, p95 {fresh[1]:.2f} s over {fresh[2]} served "
        "events (events whose candidate was rejected are never served and are "
        "not counted).",
        "",
        "Operator rollback, during the steady stream: the job learned its "
        f"first micro-batch from v1 {adoption[1]:.2f} s after the registry "
        f"pointer changed and {adoption[0]:.2f} s after the `rollback --to v1` "
        "process returned (negative: the job was there before the command's "
        "process had exited). One run, not a distribution.",
        "",
        "Summary of the many-per-message run: "
        + json.dumps({k: v for k, v in many["summary"].items() if k != "decisions"}),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
