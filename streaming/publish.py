"""``streamlearn publish``: send events from Avro or CSV files to a topic.

Events go out in file order, many per message as Avro object container
files or one per message in single-object or schemaless encoding. A real
data set's CSV file is converted on the fly with the converter of
``online_model.datasets``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import fastavro

from streaming.topics import DEFAULT_PROJECT, JobTopics, ensure_topics, require_emulator
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
"""


@dataclass
class PublishStats:
    """Counts of one publish run."""

    events: int = 0
    messages: int = 0
    bytes_sent: int = 0
    unlabelled: int = 0
    wrong_labels: int = 0
    elapsed_s: float = 0.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="streamlearn publish",
        description="Publish events from Avro files, CSV files or a shipped data "
        "set to a Pub/Sub topic.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="*", help="Avro (.avro) or CSV (.csv[.gz]) files"
    )
    parser.add_argument("--dataset", help="a shipped data set, e.g. job_postings")
    parser.add_argument("--spec", default=None, help="schema name (default: dataset)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--topic", help="full topic path projects/P/topics/T")
    target.add_argument("--job-name", help="publish to the events topic of this job")
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument(
        "--encoding",
        choices=[e.value for e in Encoding],
        default=Encoding.CONTAINER.value,
        help="container: many events per message; the others: one per message",
    )
    parser.add_argument(
        "--events-per-message",
        type=int,
        default=500,
        help="events in each container message (default 500)",
    )
    parser.add_argument("--limit", type=int, help="publish only the first N events")
    parser.add_argument(
        "--unlabelled-fraction",
        type=float,
        default=0.0,
        help="share of events sent without a label, as prediction requests",
    )
    parser.add_argument(
        "--wrong-labels",
        metavar="START:COUNT",
        help="replace the labels of COUNT events from event START with a wrong "
        "label drawn at random (a demo of bad labels)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the above")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="max events per second (0: no limit)"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Publish the events; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.files and not args.dataset:
        print(
            "streamlearn publish: missing input: pass files or --dataset",
            file=sys.stderr,
        )
        return 2
    if args.events_per_message < 1:
        print(
            f"streamlearn publish: invalid --events-per-message "
            f"{args.events_per_message}: expected 1 or more",
            file=sys.stderr,
        )
        return 2
    try:
        require_emulator()
    except RuntimeError as error:
        print(f"streamlearn publish: {error}", file=sys.stderr)
        return 2

    from online_model.spec import load_schema

    spec_name = args.spec or args.dataset
    if spec_name is None:
        print(
            "streamlearn publish: missing --spec: files need a schema name",
            file=sys.stderr,
        )
        return 2
    schema = load_schema(spec_name)
    topic = args.topic
    if topic is None:
        topics = JobTopics(args.project, args.job_name or "streamlearn")
        ensure_topics(topics)
        topic = topics.events_topic

    events = read_sources(args.files, args.dataset)
    if args.limit is not None:
        events = itertools.islice(events, args.limit)
    label_field = _label_field(spec_name)
    stats = PublishStats()
    events = alter_labels(events, label_field, args, stats)
    publish_events(
        events,
        schema,
        topic,
        Encoding(args.encoding),
        args.events_per_message,
        stats,
        rate_events_per_s=args.rate,
        progress=args.format == "text",
    )
    if args.format == "json":
        print(json.dumps(stats.__dict__))
    else:
        print(
            f"published {stats.events} events in {stats.messages} messages "
            f"({stats.bytes_sent / 1e6:.1f} MB) to {topic} in {stats.elapsed_s:.1f} s"
        )
    return 0


def _label_field(spec_name: str) -> str:
    from online_model.spec import load_spec

    return load_spec(spec_name).label_field


def read_sources(files: list[str], dataset: str | None) -> Iterator[Event]:
    """Yield events from a data set and from Avro or CSV files, in order."""
    from online_model.datasets import iter_events

    if dataset is not None:
        yield from iter_events(dataset)
    for name in files:
        path = Path(name)
        if path.suffix == ".avro":
            with open(path, "rb") as stream:
                for record in fastavro.reader(stream):
                    yield cast(Event, record)
        elif path.name.endswith((".csv", ".csv.gz")):
            if dataset is None:
                raise ValueError(f"CSV file {name!r} needs --dataset to convert it")
            yield from iter_events(dataset, path)
        else:
            raise ValueError(
                f"unsupported file {name!r}: expected .avro, .csv or .csv.gz"
            )


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
    if not text:
        return 0, 0
    try:
        start_text, count_text = text.split(":")
        return int(start_text), int(count_text)
    except ValueError:
        raise SystemExit(
            f"streamlearn publish: invalid --wrong-labels {text!r}: "
            "expected START:COUNT"
        ) from None


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
    for payload, attributes, count in encode_messages(
        events, schema, encoding, events_per_message
    ):
        futures.append(publisher.publish(topic, payload, **attributes))
        stats.events += count
        stats.messages += 1
        stats.bytes_sent += len(payload)
        if rate_events_per_s > 0:
            ahead_s = stats.events / rate_events_per_s - (time.monotonic() - started)
            if ahead_s > 0:
                time.sleep(ahead_s)
        if progress and stats.messages % 200 == 0:
            print(f"  {stats.events} events in {stats.messages} messages", flush=True)
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
