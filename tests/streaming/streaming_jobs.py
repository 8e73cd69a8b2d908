"""Helpers for the integration tests: run the real job as a subprocess against
the Pub/Sub emulator and read what it wrote."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fastavro
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from online_model.datasets import iter_events
from online_model.spec import load_schema
from streaming.publish import PublishStats, publish_events
from streaming.topics import (
    DEFAULT_PROJECT,
    JobTopics,
    delete_topics,
    ensure_topics,
    require_emulator,
)
from streaming.wire import Encoding

REPOSITORY = Path(__file__).resolve().parents[2]
MAX_WAIT_S = 240.0


def job_postings(count: int, skip: int = 0) -> list[dict[str, Any]]:
    """Return a slice of the real job-postings stream."""
    return list(itertools.islice(iter_events("job_postings"), skip, skip + count))


def fresh_topics(name: str) -> JobTopics:
    """Return new, empty topics for one test (fails without the emulator)."""
    require_emulator()
    topics = JobTopics(DEFAULT_PROJECT, f"{name}-{os.getpid()}-{time.time_ns()}")
    delete_topics(topics)
    ensure_topics(topics)
    return topics


def publish(
    topics: JobTopics,
    events: Iterable[dict[str, Any]],
    events_per_message: int = 250,
) -> PublishStats:
    stats = PublishStats()
    return publish_events(
        events,
        load_schema("job_postings"),
        topics.events_topic,
        Encoding.CONTAINER,
        events_per_message,
        stats,
    )


def publish_raw(topics: JobTopics, data: bytes, **attributes: str) -> None:
    PublisherClient().publish(topics.events_topic, data, **attributes).result(
        timeout=30
    )


def start_job(
    topics: JobTopics, run_dir: Path, stop_after: int, *extra: str
) -> subprocess.Popen[str]:
    """Start ``streamlearn run`` in a subprocess; its output goes to run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "streaming.cli",
        "run",
        "--job-name",
        topics.job_name,
        "--registry",
        str(run_dir.parent / "registry"),
        "--run-dir",
        str(run_dir),
        "--stop-after",
        str(stop_after),
        "--idle-timeout-s",
        "90",
        "--progress-interval-s",
        "0.5",
        "--micro-batch-size",
        "128",
        "--gate-every-micro-batches",
        "4",
        "--gate-min-interval-s",
        "0",
        "--checkpoint-every-s",
        "1",
        "--holdout-min-events",
        "100",
        *extra,
    ]
    log = open(run_dir / "job.log", "a", encoding="utf-8")  # noqa: SIM115
    return subprocess.Popen(
        command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, text=True
    )


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = MAX_WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def finish(process: subprocess.Popen[str], run_dir: Path) -> dict[str, Any]:
    """Wait for the job to stop by itself; return its summary."""
    code = process.wait(timeout=MAX_WAIT_S)
    log = (run_dir / "job.log").read_text(encoding="utf-8")
    assert code == 0, log[-3000:]
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


def decisions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "decisions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def pull_all(subscription: str, expected: int) -> list[Any]:
    """Pull until ``expected`` messages arrived, then once more to catch extra
    ones; return them all, acknowledged."""
    subscriber = SubscriberClient()
    received: list[Any] = []
    deadline = time.monotonic() + MAX_WAIT_S
    while time.monotonic() < deadline:
        response = subscriber.pull(
            subscription=subscription, max_messages=1000, timeout=5
        )
        messages = list(response.received_messages)
        if messages:
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in messages]
            )
            received.extend(m.message for m in messages)
        elif len(received) >= expected:
            break
    return received


def pull_events(subscription: str, expected: int) -> list[dict[str, Any]]:
    """Pull Avro container messages until ``expected`` events arrived (30 s at
    most); return their events, acknowledged."""
    subscriber = SubscriberClient()
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(events) < expected and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 100}, timeout=10
        )
        for received in response.received_messages:
            reader = fastavro.reader(io.BytesIO(received.message.data))
            events.extend(dict(record) for record in reader)  # type: ignore[arg-type]
        if response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )
    return events
