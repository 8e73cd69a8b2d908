"""A stopping run: events that reach the learner after finish() go back to the topic."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest
from streaming_jobs import pull_events

from online_model.datasets import iter_events
from online_model.spec import load_spec
from streaming.pipeline import JobSettings, build_runtime, return_to_topic
from streaming.runtime import EventBatch
from streaming.topics import delete_topics, ensure_topics

SPEC = load_spec("job_postings")
EVENTS = list(itertools.islice(iter_events("job_postings"), 300))


@pytest.fixture
def settings(tmp_path: Path, pubsub_emulator: str) -> Any:
    settings = JobSettings(
        job_name=f"shutdown-{os.getpid()}-{time.time_ns()}",
        project="streamlearn-local",
        spec_name="job_postings",
        registry_url=str(tmp_path / "registry"),
        run_dir=str(tmp_path / "run"),
        announce=False,
        metrics_file=False,
    )
    ensure_topics(settings.topics)
    yield settings
    delete_topics(settings.topics)


def test_finish_marks_runtime_finished(settings: JobSettings) -> None:
    runtime = build_runtime(settings)
    runtime.handle_batch(EventBatch(EVENTS[:100]))
    assert not runtime.finished

    runtime.finish()

    assert runtime.finished
    assert runtime.pending == []


def test_events_after_finish_return_to_topic(settings: JobSettings) -> None:
    return_to_topic(settings, SPEC.schema, EventBatch(EVENTS))

    events = pull_events(settings.topics.events_subscription, len(EVENTS))
    assert [e["event_id"] for e in events] == [e["event_id"] for e in EVENTS]
    assert events == EVENTS
