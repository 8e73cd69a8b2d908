"""Crash safety with SIGKILL, and several processes racing, on both backends."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from registry_helpers import make_fields

from rollback.registry import COUNTER_KEY, Registry, open_registry

WORKER = Path(__file__).with_name("registry_worker.py")


def start_worker(*args: str) -> subprocess.Popen[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(WORKER.parent), environment.get("PYTHONPATH", "")]
    )
    process = subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    assert ready == {"op": "ready"}
    return process


def check_consistent(registry: Registry) -> None:
    """Check what every reader must see, whenever a writer died."""
    versions = registry.versions()
    for version in versions:
        registry.read(version)  # raises CorruptVersion on a torn version

    state = registry.state()  # raises on a torn state.json
    changes = state.pointer_changes()
    for before, after in itertools.pairwise(changes):
        assert after.from_version == before.to_version, (before, after)
    last_target = changes[-1].to_version if changes else None
    assert state.serving == last_target
    assert state.serving is None or state.serving in versions

    counter = registry.storage.read(COUNTER_KEY)
    if versions:
        assert counter is not None
        assert json.loads(counter.data)["next_version"] > versions[-1]


def allocated_numbers(registry: Registry) -> set[int]:
    """Return every version folder, with or without a manifest."""
    folders = set()
    for key in registry.storage.list_keys("versions/"):
        folders.add(int(key.split("/")[1][1:]))
    return folders


def test_sigkill_leaves_no_torn_version(registry_url: str) -> None:
    rng = random.Random(20260301)
    kills = 16 if not registry_url.startswith("gs://") else 10
    for iteration in range(kills):
        process = start_worker("churn", registry_url, str(iteration))
        time.sleep(rng.uniform(0.05, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        check_consistent(open_registry(registry_url))

    registry = open_registry(registry_url)
    complete = set(registry.versions())
    allocated = allocated_numbers(registry)
    assert complete, "no version was ever completed"
    # Kills landing mid-publish leave folders without a manifest: invisible
    # to readers, and their numbers are never handed out again.
    assert allocated - complete, "no kill interrupted a publish"
    new_version = registry.publish(
        {"w": b"after the crashes"}, make_fields(), "job", "x"
    )
    assert new_version > max(allocated)
    assert registry.serving() == new_version


def test_racing_publish_and_rollback(registry_url: str) -> None:
    seeding = open_registry(registry_url, create=True)
    for index in range(3):
        seeding.publish({"w": bytes([index])}, make_fields(), "job", "seed")
    publishers = [
        start_worker("publish", registry_url, f"job-{index}", "6") for index in range(3)
    ]
    rollbackers = [
        start_worker("rollback", registry_url, f"ops-{index}", "8")
        for index in range(2)
    ]
    workers = publishers + rollbackers
    for process in workers:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [_results(process) for process in workers]

    registry = open_registry(registry_url)
    check_consistent(registry)
    published = [r["version"] for rs in results[:3] for r in rs if r["op"] == "publish"]
    rolled = [r for rs in results[3:] for r in rs if r["op"] == "rollback"]

    assert len(published) == 18
    assert len(set(published)) == 18, "two publishers got the same number"
    assert set(registry.versions()) == {1, 2, 3, *published}

    history = registry.history()
    publish_entries = [c.to_version for c in history if c.kind == "publish"]
    assert len(set(publish_entries)) == len(publish_entries)
    # A version is visible before its publish moves the pointer, so a racing
    # rollback may point at it first; either way it served once.
    assert set(published) <= {change.to_version for change in history}
    by_seq = {change.seq: change for change in history}
    for rollback in rolled:
        recorded = by_seq[rollback["seq"]]
        assert recorded.change_id == rollback["change_id"]
        assert recorded.to_version == rollback["to"]
    assert len(history) == len(publish_entries) + len(rolled)
    assert rolled, "no rollback took effect, so nothing raced"


def _results(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return [json.loads(line) for line in stdout.splitlines()]
