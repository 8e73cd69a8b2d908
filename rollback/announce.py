"""Announce pointer changes on a Pub/Sub topic, and follow them.

Each committed pointer change or pause becomes one message. Its body is the
JSON of the history entry plus the registry URL and the serving version.
Its attributes repeat the fields a subscriber filters on (``event``,
``serving_version``, ``seq``), so that a subscription filter such as
``attributes.event = "serving_changed"`` works.

Pub/Sub may deliver a message twice or out of order. ``ServingFollower``
applies an announcement only if its ``seq`` (the position in the pointer
history) is newer than the last one applied, so a follower ends at the
newest state whatever the order.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rollback.errors import AnnounceError
from rollback.names import format_version, parse_version
from rollback.state import PointerChange

logger = logging.getLogger(__name__)

EVENT_BY_KIND = {"pause": "promotion_paused", "resume": "promotion_resumed"}
SERVING_CHANGED = "serving_changed"
_TOPIC_PATH = re.compile(r"projects/[^/]+/topics/[^/]+")


@dataclass(frozen=True)
class Announcement:
    """A pointer change as a follower receives it."""

    registry_url: str
    serving: int | None
    change: PointerChange

    @property
    def event(self) -> str:
        return EVENT_BY_KIND.get(self.change.kind, SERVING_CHANGED)


def encode_announcement(
    change: PointerChange, serving: int | None, registry_url: str
) -> tuple[bytes, dict[str, str]]:
    """Return the message body and attributes announcing ``change``."""
    body = {
        "registry": registry_url,
        "serving_version": serving,
        "change": change.to_dict(),
    }
    attributes = {
        "event": EVENT_BY_KIND.get(change.kind, SERVING_CHANGED),
        "registry": registry_url,
        "serving_version": "" if serving is None else format_version(serving),
        "previous_version": _attribute_version(change.from_version),
        "kind": change.kind,
        "actor": change.actor,
        "seq": str(change.seq),
    }
    return json.dumps(body).encode(), attributes


def decode_announcement(data: bytes, attributes: Mapping[str, str]) -> Announcement:
    """Parse a message made by ``encode_announcement``.

    Raises AnnounceError if the message is not an announcement.
    """
    try:
        body = json.loads(data)
        change = PointerChange.from_dict(body["change"])
        serving = body["serving_version"]
        registry_url = str(body["registry"])
    except (ValueError, KeyError, TypeError) as error:
        event = attributes.get("event", "")
        raise AnnounceError(
            f"invalid announcement (event {event!r}, {len(data)} bytes): {error}"
        ) from error
    return Announcement(
        registry_url=registry_url,
        serving=None if serving is None else parse_version(serving),
        change=change,
    )


class PubSubAnnouncer:
    """Publishes every change to one topic, ``projects/P/topics/T``.

    The publisher client is created on first use, so that a registry with an
    announcer opens without loading the Pub/Sub library.
    """

    def __init__(
        self, topic: str, *, publisher: Any | None = None, timeout_s: float = 30.0
    ) -> None:
        if not is_topic_path(topic):
            raise AnnounceError(
                f"invalid topic {topic!r}: expected projects/PROJECT/topics/TOPIC"
            )
        self.topic = topic
        self.timeout_s = timeout_s
        self._publisher = publisher

    def announce(self, change: PointerChange, serving: int | None, url: str) -> None:
        """Publish ``change`` and wait until Pub/Sub accepted it."""
        from google.api_core import exceptions

        data, attributes = encode_announcement(change, serving, url)
        try:
            future = self._client().publish(self.topic, data, **attributes)
            message_id = future.result(timeout=self.timeout_s)
        except (exceptions.GoogleAPIError, TimeoutError) as error:
            raise AnnounceError(
                f"could not publish change {change.seq} to {self.topic}: {error}"
            ) from error
        logger.debug("announced change %d as message %s", change.seq, message_id)

    def _client(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher


class ServingFollower:
    """Calls ``on_change`` for each announcement newer than the last applied.

    ``last_seq`` is the history position the caller already reflects (for
    instance ``len(registry.history())`` read at start). If ``registry_url``
    is given, announcements of other registries are ignored.
    """

    def __init__(
        self,
        on_change: Callable[[Announcement], None],
        *,
        last_seq: int = 0,
        registry_url: str | None = None,
    ) -> None:
        self.on_change = on_change
        self.registry_url = registry_url
        self._last_seq = last_seq
        self._lock = threading.Lock()  # guards _last_seq across callback threads

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def handle(self, data: bytes, attributes: Mapping[str, str]) -> bool:
        """Apply one message; return False if it was stale or for elsewhere."""
        announcement = decode_announcement(data, attributes)
        if self.registry_url is not None and (
            announcement.registry_url != self.registry_url
        ):
            return False
        with self._lock:
            if announcement.change.seq <= self._last_seq:
                return False
            self.on_change(announcement)
            self._last_seq = announcement.change.seq
        return True


def follow(
    subscription: str,
    on_change: Callable[[Announcement], None],
    *,
    last_seq: int = 0,
    registry_url: str | None = None,
    subscriber: Any | None = None,
) -> Any:
    """Stream announcements from ``subscription`` into ``on_change``.

    Returns the subscriber's StreamingPullFuture; call ``cancel()`` on it to
    stop. A message is acknowledged once ``on_change`` returned; if it
    raises, the message is redelivered. Invalid messages are logged and
    acknowledged, so they do not come back.
    """
    if subscriber is None:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
    follower = ServingFollower(on_change, last_seq=last_seq, registry_url=registry_url)

    def callback(message: Any) -> None:
        try:
            follower.handle(message.data, message.attributes)
        except AnnounceError as error:
            logger.warning("dropped message %s: %s", message.message_id, error)
            message.ack()
            return
        except Exception:
            logger.exception("on_change failed for message %s", message.message_id)
            message.nack()
            return
        message.ack()

    return subscriber.subscribe(subscription, callback)


def is_topic_path(topic: str) -> bool:
    """Return whether ``topic`` has the form ``projects/P/topics/T``."""
    return _TOPIC_PATH.fullmatch(topic) is not None


def _attribute_version(version: int | None) -> str:
    return "" if version is None else format_version(version)
