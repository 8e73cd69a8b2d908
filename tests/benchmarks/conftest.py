"""Put benchmarks/ on the import path, because its scripts import sibling modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from online_model.datasets import iter_events

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))


@pytest.fixture(scope="session")
def electricity() -> list[dict[str, Any]]:
    """The first 600 half-hours of the real Electricity stream."""
    events = []
    for event in iter_events("electricity"):
        events.append(event)
        if len(events) == 600:
            break
    return events
