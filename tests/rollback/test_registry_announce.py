"""Pointer changes announced on Pub/Sub, against the local emulator."""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

import pytest
from registry_helpers import FixedClock, make_fields, make_files, pull

from rollback.announce import (
    Announcement,
    PubSubAnnouncer,
    ServingFollower,
    decode_announcement,
    encode_announcement,
    follow,
)
from rollback.errors import AnnounceError
from rollback.registry import Registry, open_registry


def announcing_registry(tmp_path: Path, topic: str) -> Registry:
    return open_registry(
        tmp_path / "registry",
        create=True,
        clock=FixedClock(),
        announcer=PubSubAnnouncer(topic, timeout_s=10),
    )


def test_rollback_announced(
    tmp_path: Path, topic_and_subscription: tuple[str, str]
) -> None:
    topic, subscription = topic_and_subscription
    registry = announcing_registry(tmp_path, topic)
    for seed in range(2):
        registry.publish(make_files(seed), make_fields(), "job", "validated")
    registry.rollback("v1", "ops:ana", "v2 mislabels")

    messages = sorted(pull(subscription, 3), key=lambda m: int(m.attributes["seq"]))

    assert len(messages) == 3
    rollback = messages[-1]
    assert dict(rollback.attributes) == {
        "event": "serving_changed",
        "registry": registry.url,
        "serving_version": "v1",
        "previous_version": "v2",
        "kind": "rollback",
        "actor": "ops:ana",
        "seq": "3",
    }
    announcement = decode_announcement(rollback.data, rollback.attributes)
    assert announcement.change == registry.history()[-1]
    assert announcement.serving == 1
    assert announcement.registry_url == registry.url
    assert json.loads(rollback.data)["change"]["reason"] == "v2 mislabels"
    assert registry.last_announce_error is None


def test_follow_delivers_changes(
    tmp_path: Path, topic_and_subscription: tuple[str, str]
) -> None:
    topic, subscription = topic_and_subscription
    registry = announcing_registry(tmp_path, topic)
    delivered: queue.Queue[Announcement] = queue.Queue()
    future = follow(subscription, delivered.put, registry_url=registry.url)
    try:
        registry.publish(make_files(1), make_fields(), "job", "validated")
        registry.pause("ops:ana", "incident 7")
        first = delivered.get(timeout=30)
        second = delivered.get(timeout=30)
    finally:
        future.cancel()

    by_seq = sorted([first, second], key=lambda a: a.change.seq)
    assert [a.event for a in by_seq] == ["serving_changed", "promotion_paused"]
    assert [a.serving for a in by_seq] == [1, 1]


def test_failed_announce_keeps_change(
    tmp_path: Path, topic_and_subscription: tuple[str, str]
) -> None:
    topic, _ = topic_and_subscription
    registry = announcing_registry(tmp_path, topic + "-missing")

    version = registry.publish(make_files(1), make_fields(), "job", "validated")

    assert registry.serving() == version
    assert isinstance(registry.last_announce_error, AnnounceError)
    assert "could not publish change 1" in str(registry.last_announce_error)


def test_follower_drops_stale_and_duplicate() -> None:
    registry_url = "/srv/registry"
    applied: list[int] = []
    follower = ServingFollower(
        lambda a: applied.append(a.change.seq), last_seq=1, registry_url=registry_url
    )
    changes = _changes(4)

    results = [
        follower.handle(*encode_announcement(changes[2], 3, registry_url)),
        follower.handle(*encode_announcement(changes[1], 2, registry_url)),
        follower.handle(*encode_announcement(changes[2], 3, registry_url)),
        follower.handle(*encode_announcement(changes[3], 4, "/elsewhere")),
        follower.handle(*encode_announcement(changes[3], 4, registry_url)),
    ]

    assert results == [True, False, False, False, True]
    assert applied == [3, 4]
    assert follower.last_seq == 4


def test_invalid_message_rejected() -> None:
    with pytest.raises(AnnounceError):
        decode_announcement(b"not json", {"event": "serving_changed"})


def test_invalid_topic_rejected() -> None:
    with pytest.raises(AnnounceError):
        PubSubAnnouncer("serving-changes")


def _changes(count: int) -> list[Any]:
    from datetime import UTC, datetime

    from rollback.state import PointerChange

    return [
        PointerChange(
            seq=seq,
            change_id=f"id{seq}",
            time=datetime(2026, 3, 1, tzinfo=UTC),
            actor="job",
            kind="publish",
            from_version=seq - 1 or None,
            to_version=seq,
            reason="validated",
        )
        for seq in range(1, count + 1)
    ]
