"""Helpers shared by the registry tests: fields, files, a clock, commands, a pull."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from rollback.manifest import ManifestFields

BIN = Path(sys.executable).parent
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
        "weights.safetensors": safetensors_bytes(bytes([seed % 256]) * (1000 + seed)),
        "learner.json": f'{{"seed": {seed}}}'.encode(),
    }


def safetensors_bytes(data: bytes) -> bytes:
    """Return a safetensors file with one uint8 tensor holding ``data``.

    The format: the header's length as 8 bytes little-endian, the JSON
    header (padded with spaces to a multiple of 8), then the tensor bytes.
    """
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data


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


def run(
    command: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: IO[bytes] | int | None = None,
    as_user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command of the virtual environment without STREAMLEARN_ settings.

    ``stdout`` replaces the captured output (stdout is then ""), and
    ``as_user`` runs the command as that user through setpriv (root only).
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("STREAMLEARN_")
    }
    environment.update(env or {})
    prefix = []
    if as_user is not None:
        import pwd

        user = pwd.getpwnam(as_user)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}"]
        prefix.append("--clear-groups")
    result = subprocess.run(
        [*prefix, str(BIN / command), *args],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=60,
    )
    if result.stdout is None:
        result.stdout = ""
    return result
