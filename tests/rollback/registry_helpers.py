"""Helpers shared by the registry tests: fields, files, a clock, a Pub/Sub pull."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rollback.manifest import ManifestFields

FINGERPRINT = "sha256:feature-spec-and-config-a"
OTHER_FINGERPRINT = "sha256:feature-spec-and-config-b"


class FixedClock:
    """A clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def make_fields(
    accuracy: float = 0.9, fingerprint: str = FINGERPRINT, **overrides: object
) -> ManifestFields:
    """Manifest fields as a job would state them."""
    values: dict[str, object] = {
        "fingerprint": fingerprint,
        "events_count": 4096,
        "event_time_min": datetime(2026, 2, 28, 23, 0, tzinfo=UTC),
        "event_time_max": datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        "holdout_metrics": {"accuracy": accuracy, "log_loss": 0.31},
        "champion_metrics": {"accuracy": 0.88, "log_loss": 0.35},
        "label_vocabulary": ("buy", "browse", "leave"),
        "code_version": "abc1234",
    }
    values.update(overrides)
    return ManifestFields(**values)  # type: ignore[arg-type]


def make_files(seed: int) -> dict[str, bytes]:
    """Two files whose content differs per seed."""
    return {
        "weights.safetensors": bytes([seed % 256]) * (1000 + seed),
        "learner.json": f'{{"seed": {seed}}}'.encode(),
    }


def pull(subscription: str, count: int) -> list[Any]:
    """Pull until ``count`` messages arrived; fail after 20 empty pulls."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    received: list[Any] = []
    for _ in range(20):
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10}, timeout=10
        )
        if response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
        received.extend(m.message for m in response.received_messages)
        if len(received) >= count:
            return received
    raise AssertionError(f"received {len(received)} of {count} messages")
