"""The Pub/Sub topics and subscriptions of one streaming job, and their set-up.

Every name starts with the job name, so several jobs (and test runs) share
one emulator without seeing each other's messages.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import urllib.request
from dataclasses import dataclass
from typing import Any

from google.api_core.exceptions import AlreadyExists, NotFound
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

logger = logging.getLogger(__name__)

EMULATOR_VARIABLE = "PUBSUB_EMULATOR_HOST"
DEFAULT_PROJECT = "streamlearn-local"


# Pub/Sub topic and subscription ids start with a letter and contain only
# these characters. The job's ids are the job name with a suffix.
_ID = r"[A-Za-z][A-Za-z0-9._~+%-]*"
_JOB_NAME = re.compile(_ID)
_TOPIC_PATH = re.compile(rf"projects/[a-z][a-z0-9-]*/topics/{_ID}")


def check_job_name(name: str) -> None:
    """Raise ValueError unless ``name`` can prefix the job's Pub/Sub ids."""
    if not _JOB_NAME.fullmatch(name) or name.startswith("goog"):
        raise ValueError(
            f"job name {name!r} cannot prefix Pub/Sub ids: use a letter "
            "first, then letters, digits and . _ ~ + % -, and not 'goog'"
        )


def check_topic_path(path: str) -> None:
    """Raise ValueError unless ``path`` is a full topic path."""
    if not _TOPIC_PATH.fullmatch(path):
        raise ValueError(
            f"invalid topic {path!r}: expected projects/PROJECT/topics/TOPIC, "
            "such as projects/streamlearn-local/topics/j1-events"
        )


# Pub/Sub accepts messages of up to 10 MB; gRPC receives 4 MiB by default.
_UNLIMITED_RECEIVE = ("grpc.max_receive_message_length", -1)


def allow_large_emulator_messages() -> None:
    """Let this process's Pub/Sub clients receive messages over 4 MiB from the
    emulator.

    With PUBSUB_EMULATOR_HOST set, google-cloud-pubsub connects through a
    plain ``grpc.insecure_channel(target=...)`` without the unlimited receive
    size it sets for Google's servers (google-cloud-pubsub 2.x). A pull that
    returns a larger message then fails, and the DirectRunner of apache-beam
    2.x retries it every ack deadline, so the message is neither read nor
    dead-lettered. This wraps ``grpc.insecure_channel`` to
    add the option wherever the caller did not set it. Calling it again does
    nothing.
    """
    import grpc

    original = grpc.insecure_channel
    if getattr(original, "allows_large_messages", False):
        return

    def insecure_channel(
        target: str, options: Any = None, compression: Any = None
    ) -> Any:
        channel_options = list(options or [])
        if not any(name == _UNLIMITED_RECEIVE[0] for name, _ in channel_options):
            channel_options.append(_UNLIMITED_RECEIVE)
        return original(target, channel_options, compression)

    insecure_channel.allows_large_messages = True  # type: ignore[attr-defined]
    grpc.insecure_channel = insecure_channel


class TopicSetupError(RuntimeError):
    """The topics could not be created or reached."""


@dataclass(frozen=True)
class JobTopics:
    """Fully qualified topic and subscription paths of one job."""

    project: str
    job_name: str

    def _topic(self, suffix: str) -> str:
        return f"projects/{self.project}/topics/{self.job_name}-{suffix}"

    def _subscription(self, suffix: str) -> str:
        return f"projects/{self.project}/subscriptions/{self.job_name}-{suffix}"

    @property
    def events_topic(self) -> str:
        return self._topic("events")

    @property
    def events_subscription(self) -> str:
        return self._subscription("events")

    @property
    def dead_letter_topic(self) -> str:
        return self._topic("dead-letter")

    @property
    def dead_letter_subscription(self) -> str:
        return self._subscription("dead-letter")

    @property
    def predictions_topic(self) -> str:
        return self._topic("predictions")

    @property
    def predictions_subscription(self) -> str:
        return self._subscription("predictions")

    @property
    def model_versions_topic(self) -> str:
        return self._topic("model-versions")

    @property
    def model_versions_subscription(self) -> str:
        return self._subscription("model-versions")

    def pairs(self) -> list[tuple[str, str]]:
        """Return every (topic, subscription) pair the job uses."""
        return [
            (self.events_topic, self.events_subscription),
            (self.dead_letter_topic, self.dead_letter_subscription),
            (self.predictions_topic, self.predictions_subscription),
            (self.model_versions_topic, self.model_versions_subscription),
        ]


def require_emulator() -> str:
    """Return the emulator address, or raise when none is configured.

    Local commands call this first so that they never reach Google Cloud.
    """
    host = os.environ.get(EMULATOR_VARIABLE, "")
    if not host:
        raise TopicSetupError(
            f"{EMULATOR_VARIABLE} is not set; start the emulator with "
            "'eval \"$(scripts/emulator)\"' or pass the address of one"
        )
    if ":" not in host:
        raise TopicSetupError(
            f"invalid {EMULATOR_VARIABLE}={host!r}: expected HOST:PORT, such as "
            "127.0.0.1:8085"
        )
    # The client libraries retry an unreachable host for minutes, so one REST
    # request with a deadline checks first that an emulator responds.
    url = f"http://{host}/v1/projects/{DEFAULT_PROJECT}/topics"
    # No proxy: the request must go to the emulator's address itself.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5):
            pass
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise TopicSetupError(
            f"no Pub/Sub emulator responds at {EMULATOR_VARIABLE}={host} ({error}); "
            "start one with 'eval \"$(scripts/emulator)\"'"
        ) from error
    return host


def ensure_topics(topics: JobTopics, ack_deadline_s: int = 60) -> None:
    """Create the job's topics and subscriptions on the emulator where they
    do not exist."""
    _require_emulator_variable("create topics")
    publisher = PublisherClient()
    subscriber = SubscriberClient()
    try:
        for topic, subscription in topics.pairs():
            try:
                publisher.create_topic(name=topic)
                logger.info("created topic %s", topic)
            except AlreadyExists:
                pass
            try:
                subscriber.create_subscription(
                    name=subscription, topic=topic, ack_deadline_seconds=ack_deadline_s
                )
                logger.info("created subscription %s", subscription)
            except AlreadyExists:
                pass
    finally:
        subscriber.close()


def delete_topics(topics: JobTopics) -> None:
    """Delete the job's subscriptions and topics on the emulator; missing ones
    are skipped."""
    _require_emulator_variable("delete topics")
    publisher = PublisherClient()
    subscriber = SubscriberClient()
    try:
        for topic, subscription in topics.pairs():
            with contextlib.suppress(NotFound):
                subscriber.delete_subscription(subscription=subscription)
            with contextlib.suppress(NotFound):
                publisher.delete_topic(topic=topic)
    finally:
        subscriber.close()


def _require_emulator_variable(action: str) -> None:
    """Raise unless the Pub/Sub clients point at an emulator.

    Without the variable the clients would reach Google Cloud's Pub/Sub, which
    the local commands and tests must never do.
    """
    if not os.environ.get(EMULATOR_VARIABLE):
        raise TopicSetupError(
            f"{EMULATOR_VARIABLE} is not set, so streamlearn will not {action}: "
            "they are made on the Pub/Sub emulator only. Start it with "
            "'eval \"$(scripts/emulator)\"'"
        )
