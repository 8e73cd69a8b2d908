"""``streamlearn publish``: send events from Avro or CSV files to a topic.

Events go out in file order, many per message as Avro object container
files or one per message in single-object or schemaless encoding. A real
data set's CSV file is converted on the fly with the converter of
``online_model.datasets``. Rows it cannot convert are skipped and counted by
reason. Input files and options are checked before the first message goes
out; an error prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.api_core.exceptions import GoogleAPICallError

from online_model.arguments import (
    fraction,
    non_negative_int,
    non_negative_number,
    positive_int,
)
from online_model.event_files import InputFileError, check_input_files, read_sources
from streaming.topics import (
    DEFAULT_PROJECT,
    JobTopics,
    check_job_name,
    check_topic_path,
    ensure_topics,
    require_emulator,
)
from streaming.wire import (
    ENCODING_ATTRIBUTE,
    Encoding,
    encode_container,
    encode_schemaless,
    encode_single_object,
)

logger = logging.getLogger(__name__)

Event = dict[str, Any]

EXAMPLE = """examples:
  eval "$(scripts/emulator)"
  # the real job postings, 500 events per message, to the job 'demo'
  streamlearn publish --job-name demo --dataset job_postings
  # an Avro file, one event per message in single-object encoding
  streamlearn publish --topic projects/streamlearn-local/topics/demo-events \\
      --spec job_postings --encoding single-object events.avro
  # only the rows of a CSV file, converted as job postings
  streamlearn publish --job-name demo --dataset job_postings postings.csv
"""

__all__ = ["PublishStats", "alter_labels", "publish_events", "read_sources"]


@dataclass
class PublishStats:
    """Counts of one publish run."""

    events: int = 0
    messages: int = 0
    bytes_sent: int = 0
    unlabelled: int = 0
    wrong_labels: int = 0
    elapsed_s: float = 0.0
    # Source rows the converters skipped, by reason.
    skipped_rows: dict[str, int] = field(default_factory=dict)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="streamlearn publish",
        description="Publish events from Avro files, CSV files or a shipped data "
        "set to a Pub/Sub topic. Rows without a label are sent as prediction "
        "requests.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from online_model.datasets import DATASETS

    parser.add_argument(
        "files", nargs="*", help="Avro (.avro) or CSV (.csv[.gz]) files"
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="without files: publish this shipped data set; with files: "
        "convert the CSV files with its converter",
    )
    parser.add_argument("--spec", default=None, help="schema name (default: dataset)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--topic", help="full topic path projects/P/topics/T")
    target.add_argument("--job-name", help="publish to the events topic of this job")
    parser.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"project of --job-name's topic (default {DEFAULT_PROJECT})",
    )
    parser.add_argument(
        "--encoding",
        choices=[e.value for e in Encoding],
        default=Encoding.CONTAINER.value,
        help="container: many events per message; the others: one per message",
    )
    parser.add_argument(
        "--events-per-message",
        type=positive_int,
        default=500,
        help="events in each container message (default 500)",
    )
    parser.add_argument(
        "--limit", type=non_negative_int, help="publish only the first N events"
    )
    parser.add_argument(
        "--unlabelled-fraction",
        type=fraction,
        default=0.0,
        help="share of events sent without a label, as prediction requests "
        "(default: 0, every event labelled)",
    )
    parser.add_argument(
        "--wrong-labels",
        type=_burst_argument,
        metavar="START:COUNT",
        help="replace the labels of COUNT events from event START with a wrong "
        "label drawn at random (a demo of bad labels)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the above")
    parser.add_argument(
        "--rate",
        type=non_negative_number,
        default=0.0,
        help="max events per second (default: 0, no limit)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="progress and report as text lines or as JSON lines (default text)",
    )
    return parser.parse_args(argv)


def _burst_argument(text: str) -> str:
    try:
        _parse_burst(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def main(argv: list[str]) -> int:
    """Publish the events; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.files and not args.dataset:
        return _fail("missing input: pass files or --dataset", 2)
    spec_name = args.spec or args.dataset
    if spec_name is None:
        return _fail("missing --spec: files need a schema name", 2)

    from online_model.spec import SpecError, load_spec

    try:
        if args.topic is not None:
            check_topic_path(args.topic)
        if args.job_name is not None:
            check_job_name(args.job_name)
        spec = load_spec(spec_name)
        check_input_files(args.files, args.dataset, spec.schema)
        require_emulator()
    except (SpecError, InputFileError, RuntimeError, ValueError) as error:
        return _fail(str(error), 2)
    topic = args.topic
    if topic is None:
        topics = JobTopics(args.project, args.job_name or "streamlearn")
        ensure_topics(topics)
        topic = topics.events_topic

    from online_model.datasets import ConversionReport

    reports: list[ConversionReport] = []
    events = read_sources(
        args.files, args.dataset, reports, keep_unlabelled=True, schema=spec.schema
    )
    if args.limit is not None:
        events = itertools.islice(events, args.limit)
    stats = PublishStats()
    events = alter_labels(events, spec.label_field, args, stats)
    try:
        publish_events(
            events,
            dict(spec.schema),
            topic,
            Encoding(args.encoding),
            args.events_per_message,
            stats,
            rate_events_per_s=args.rate,
            progress=args.format == "text",
        )
    except InputFileError as error:
        return _fail(f"{error} (stopped after {stats.events} events)", 1)
    except (ValueError, TypeError) as error:
        # fastavro's message for an event that the schema cannot encode.
        return _fail(
            f"an event does not match the {spec_name} schema: {error} (stopped "
            f"after reading {stats.events} events, of which the topic may have "
            "fewer); check the file's field types",
            1,
        )
    except (GoogleAPICallError, TimeoutError) as error:
        reason = getattr(error, "message", None) or "no answer in 60 s"
        return _fail(
            f"publishing to {topic} failed: {reason} (stopped after reading "
            f"{stats.events} events, of which the topic may have fewer)",
            1,
        )
    except KeyboardInterrupt:
        return _fail(
            f"interrupted after {stats.events} events in {stats.messages} "
            f"messages to {topic}",
            130,
        )
    stats.skipped_rows = dict(sum((report.skipped for report in reports), Counter()))
    _print_stats(stats, topic, args.format)
    return 0


def _fail(message: str, exit_code: int) -> int:
    print(f"streamlearn publish: {message}", file=sys.stderr)
    return exit_code


def _print_stats(stats: PublishStats, topic: str, output_format: str) -> None:
    if output_format == "json":
        print(json.dumps(stats.__dict__))
        return
    print(
        f"published {stats.events} events in {stats.messages} "
        f"message{'' if stats.messages == 1 else 's'} "
        f"({stats.bytes_sent / 1e6:.1f} MB) to {topic} in {stats.elapsed_s:.1f} s"
    )
    if stats.skipped_rows:
        counts = ", ".join(
            f"{reason} {count}"
            for reason, count in sorted(
                stats.skipped_rows.items(), key=lambda item: -item[1]
            )
        )
        print(f"rows skipped: {sum(stats.skipped_rows.values())} ({counts})")


def alter_labels(
    events: Iterable[Event],
    label_field: str,
    args: argparse.Namespace,
    stats: PublishStats,
) -> Iterator[Event]:
    """Strip labels (prediction requests) and inject wrong labels, seeded."""
    rng = random.Random(args.seed)
    start, count = _parse_burst(args.wrong_labels)
    labels: list[str] = []
    for index, event in enumerate(events):
        label = event.get(label_field)
        if label is not None and label not in labels:
            labels.append(label)
        if args.unlabelled_fraction and rng.random() < args.unlabelled_fraction:
            event = {**event, label_field: None}
            stats.unlabelled += 1
        elif start <= index < start + count and label is not None and len(labels) > 1:
            wrong = rng.choice([other for other in labels if other != label])
            event = {**event, label_field: wrong}
            stats.wrong_labels += 1
        yield event


def _parse_burst(text: str | None) -> tuple[int, int]:
    """Parse START:COUNT of --wrong-labels; raise ValueError if invalid."""
    if not text:
        return 0, 0
    try:
        start_text, count_text = text.split(":")
        start, count = int(start_text), int(count_text)
    except ValueError:
        raise ValueError(
            f"invalid --wrong-labels {text!r}: expected START:COUNT"
        ) from None
    if start < 0 or count < 0:
        raise ValueError(
            f"invalid --wrong-labels {text!r}: START and COUNT must be 0 or more"
        )
    return start, count


def publish_events(
    events: Iterable[Event],
    schema: dict[str, Any],
    topic: str,
    encoding: Encoding,
    events_per_message: int,
    stats: PublishStats,
    rate_events_per_s: float = 0.0,
    progress: bool = False,
) -> PublishStats:
    """Encode and publish ``events``; wait until Pub/Sub accepted every message."""
    from google.cloud.pubsub_v1 import PublisherClient

    publisher = PublisherClient()
    started = time.monotonic()
    futures = []
    try:
        for payload, attributes, count in encode_messages(
            events, schema, encoding, events_per_message
        ):
            futures.append(publisher.publish(topic, payload, **attributes))
            stats.events += count
            stats.messages += 1
            stats.bytes_sent += len(payload)
            if rate_events_per_s > 0:
                elapsed_s = time.monotonic() - started
                ahead_s = stats.events / rate_events_per_s - elapsed_s
                if ahead_s > 0:
                    time.sleep(ahead_s)
            if progress and stats.messages % 200 == 0:
                print(
                    f"  {stats.events} events in {stats.messages} messages",
                    flush=True,
                )
    finally:
        # Messages handed to the client are sent even when reading fails later,
        # so that stats.events counts what the topic received.
        for future in futures:
            future.result(timeout=60)
    stats.elapsed_s = time.monotonic() - started
    return stats


def encode_messages(
    events: Iterable[Event],
    schema: dict[str, Any],
    encoding: Encoding,
    events_per_message: int,
) -> Iterator[tuple[bytes, dict[str, str], int]]:
    """Yield (payload, attributes, event count) for each message."""
    if encoding is Encoding.CONTAINER:
        iterator = iter(events)
        while chunk := list(itertools.islice(iterator, events_per_message)):
            attributes = {ENCODING_ATTRIBUTE: encoding.value}
            yield encode_container(chunk, schema), attributes, len(chunk)
    elif encoding is Encoding.SINGLE_OBJECT:
        for event in events:
            attributes = {ENCODING_ATTRIBUTE: encoding.value}
            yield encode_single_object(event, schema), attributes, 1
    else:
        for event in events:
            payload, attributes = encode_schemaless(event, schema)
            yield payload, attributes, 1
