"""Fixtures for the registry tests: a local folder or a bucket on the GCS
server that tests/conftest.py starts, a fixed clock, and a Pub/Sub topic."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_helpers import FixedClock

_topic_numbers = itertools.count(1)


@pytest.fixture(params=["local", "gcs"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry URL for each backend; the contract must hold on both."""
    if request.param == "local":
        return str(tmp_path / "registry")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/models"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def topic_and_subscription(pubsub_emulator: str) -> Iterator[tuple[str, str]]:
    """Create a topic and a subscription to it on the Pub/Sub emulator."""
    from google.cloud import pubsub_v1

    project = os.environ.get("PUBSUB_PROJECT_ID", "streamlearn-local")
    suffix = f"{os.getpid()}-{next(_topic_numbers)}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"serving-changes-{suffix}")
    subscription = subscriber.subscription_path(project, f"follower-{suffix}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    yield topic, subscription
    subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=topic)
