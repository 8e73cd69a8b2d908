"""The README's main job: the whole service on the real job-postings stream.

``scripts/demo`` runs this after it installed everything and started the
Pub/Sub emulator. It creates fresh topics and a fresh registry under
``runs/`` and converts the real job postings to events. It publishes them
in event-time order, 5% without a label (prediction requests) and with a
few broken messages. Then it runs the streaming job on the DirectRunner with
live progress, and ends with the account and the run report once every
published event is accounted for. At the end it deletes its topics and
subscriptions from the emulator and prints the registry's path with the
commands that inspect it. Each run folder takes several hundred MB (mostly
the registry's versions), so only the newest ``--keep-runs`` demo run
folders are kept.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from online_model.arguments import (
    device_argument,
    fraction,
    non_negative_int,
    positive_int,
)
from rollback.registry import Registry, open_registry
from streaming.topics import (
    DEFAULT_PROJECT,
    JobTopics,
    delete_topics,
    ensure_topics,
    require_emulator,
)

logger = logging.getLogger(__name__)

EXAMPLE = """examples:
  scripts/demo                      # the whole stream, under a minute once set up
  scripts/demo --limit 8000         # a prefix
  scripts/demo --demo-bad-labels    # a burst of wrong labels mid-stream
"""
BURST_START_SHARE = 0.4
BURST_SHARE = 0.06
# The name of a demo's run folder and of its topics; only folders with such
# names are ever removed by the demo.
DEMO_RUN_NAME = re.compile(r"demo-\d{8}-\d{6}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run the streaming job on the real job-postings stream, "
        "locally, and print what it did.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # scripts/demo spots -h and --help before it starts the emulator, so
        # abbreviations such as --he must not mean --help here.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--limit", type=positive_int, help="publish only the first N events"
    )
    parser.add_argument(
        "--demo-bad-labels",
        action="store_true",
        # argparse %-formats help text, so the percent signs are doubled.
        help=f"give a wrong label to one run of consecutive events, "
        f"{BURST_SHARE:.0%}% of the stream, starting {BURST_START_SHARE:.0%}% "
        "of the way in",
    )
    parser.add_argument(
        "--unlabelled-fraction",
        type=fraction,
        default=0.05,
        help="share of events sent without a label (default 0.05)",
    )
    parser.add_argument(
        "--runs-dir", default="runs", help="folder for the run (default runs/)"
    )
    parser.add_argument(
        "--keep-runs",
        type=non_negative_int,
        default=3,
        help="demo run folders (RUNS_DIR/demo-*) to keep, this one included: "
        "older ones and their emulator topics are removed first; 0 keeps all "
        "(default 3)",
    )
    parser.add_argument(
        "--device",
        type=device_argument,
        default="cpu",
        help="torch device of the learner: cpu, cuda or cuda:N (default: cpu)",
    )
    args = parser.parse_args(argv)
    if args.keep_runs < 0:
        parser.error(f"--keep-runs must be 0 or more, got {args.keep_runs}")
    return args


def main(argv: list[str]) -> int:
    """Run the demo; return the exit code (the job exits the process itself)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    require_emulator()
    from online_model.datasets import iter_events

    started = time.monotonic()
    events = list(iter_events("job_postings"))
    if args.limit is not None:
        events = events[: args.limit]
    print(
        f"converted {len(events)} real job postings in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )

    name = time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir = Path(args.runs_dir) / name
    if args.keep_runs:
        for old in remove_old_runs(Path(args.runs_dir), args.keep_runs - 1):
            print(f"removed the older demo run folder {old}", flush=True)
    topics = JobTopics(DEFAULT_PROJECT, name)
    ensure_topics(topics)
    bad_messages = broken_messages(events)
    publisher = threading.Thread(
        target=publish_stream,
        args=(topics, events, bad_messages, args),
        name="demo-publisher",
        daemon=True,
    )
    publisher.start()

    from streaming import job

    stop_after = len(events) + len(bad_messages)
    job_argv = [
        "--job-name",
        name,
        "--registry",
        str(run_dir / "registry"),
        "--run-dir",
        str(run_dir),
        "--stop-after",
        str(stop_after),
        "--idle-timeout-s",
        "120",
        # A gate every 3 micro-batches (1,536 events), however fast they fill,
        # shows several decisions on this stream of 32,672 events.
        "--gate-every-micro-batches",
        "3",
        "--gate-min-interval-s",
        "0",
        "--device",
        args.device,
    ]
    print(f"run folder: {run_dir}", flush=True)
    burst_from = None
    if args.demo_bad_labels:
        burst_from = events[int(len(events) * BURST_START_SHARE)]["event_time"]
    return job.main(job_argv, epilogue=lambda: finish_demo(topics, run_dir, burst_from))


def remove_old_runs(runs_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` demo run folders and their topics;
    return the removed folders. Folders with other names are left alone."""
    if not runs_dir.is_dir():
        return []
    runs = sorted(
        path
        for path in runs_dir.iterdir()
        if path.is_dir() and DEMO_RUN_NAME.fullmatch(path.name)
    )
    removed = runs[: max(0, len(runs) - keep)]
    for path in removed:
        delete_topics(JobTopics(DEFAULT_PROJECT, path.name))
        shutil.rmtree(path)
    return removed


def finish_demo(
    topics: JobTopics, run_dir: Path, burst_from: datetime | None = None
) -> None:
    """Delete the demo's topics and print where its files are and what next.

    ``burst_from`` is the event time of the first event in the burst of wrong
    labels, if the demo injected one.
    """
    delete_topics(topics)
    print(
        f"deleted the topics and subscriptions {topics.job_name}-* from the emulator",
        flush=True,
    )
    registry = (run_dir / "registry").resolve()
    if burst_from is not None:
        print(burst_account(open_registry(str(registry)), burst_from), flush=True)
    size_mb = folder_size_bytes(run_dir) / 1e6
    print(
        f"registry: {registry}\n"
        "inspect it, from this folder:\n"
        f"  export STREAMLEARN_REGISTRY={registry}\n"
        "  .venv/bin/streamlearn versions list\n"
        "  .venv/bin/rollback --status\n"
        f"run folder: {run_dir} ({size_mb:.0f} MB); remove it with: "
        f"rm -r {run_dir}",
        flush=True,
    )


def burst_account(registry: Registry, burst_from: datetime) -> str:
    """Return which versions learned events from the burst's time on.

    A version whose latest learned event is older than ``burst_from`` never
    learned a wrong label. The job learns events in about the order the
    demo publishes them, event-time order.
    """
    before: list[int] = []
    after: list[int] = []
    for version in registry.versions():
        latest = registry.describe(version).fields.event_time_max
        (before if latest is not None and latest < burst_from else after).append(
            version
        )
    lines = [
        f"wrong labels: the burst starts at event time {burst_from:%Y-%m-%d %H:%M}"
    ]
    if after:
        lines.append(
            f"  {_versions(after)} learned events from that time on, some with "
            "wrong labels"
        )
    if before:
        lines.append(
            f"  v{before[-1]} is the last version published before the burst; "
            "to serve it again: .venv/bin/rollback --registry "
            f"{registry.url} --to v{before[-1]} --reason "
            f"'wrong labels from {burst_from:%Y-%m-%d %H:%M}'"
        )
    return "\n".join(lines)


def _versions(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"v{numbers[0]}"
    return f"v{numbers[0]} to v{numbers[-1]}"


def folder_size_bytes(folder: Path) -> int:
    """Return the total size of the files under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def broken_messages(events: list[dict[str, Any]]) -> list[bytes]:
    """Return three messages the job must dead-letter, one per reason."""
    from online_model.spec import load_schema
    from streaming.wire import encode_container

    container = encode_container(events[:3], load_schema("job_postings"))
    return [b"this is not Avro", container[:-20], container + b"\x01junk"]


def publish_stream(
    topics: JobTopics,
    events: list[dict[str, Any]],
    bad_messages: list[bytes],
    args: argparse.Namespace,
) -> None:
    """Publish the events in order, with requests, a burst and bad messages."""
    from google.cloud.pubsub_v1 import PublisherClient

    from online_model.spec import load_schema
    from streaming.publish import PublishStats, alter_labels, publish_events
    from streaming.wire import Encoding

    burst = ""
    if args.demo_bad_labels:
        start = int(len(events) * BURST_START_SHARE)
        burst = f"{start}:{int(len(events) * BURST_SHARE)}"
    options = argparse.Namespace(
        unlabelled_fraction=args.unlabelled_fraction, wrong_labels=burst, seed=0
    )
    stats = PublishStats()
    altered = alter_labels(events, "job_role", options, stats)
    publish_events(
        altered,
        load_schema("job_postings"),
        topics.events_topic,
        Encoding.CONTAINER,
        500,
        stats,
    )
    publisher = PublisherClient()
    for data in bad_messages:
        publisher.publish(topics.events_topic, data, origin="demo").result(timeout=30)
    print(
        f"published {stats.events} events in {stats.messages} messages "
        f"({stats.unlabelled} without a label, {stats.wrong_labels} with a wrong "
        f"label) and {len(bad_messages)} broken messages in {stats.elapsed_s:.1f} s",
        flush=True,
    )
    if burst:
        start, count = (int(part) for part in burst.split(":"))
        print(
            f"the wrong labels are on labelled events among events {start} to "
            f"{start + count - 1} of {len(events)}, in event-time order "
            "(the holdout share of them too)",
            flush=True,
        )
