"""Shared fixtures: real events from the repository's data files, loaded once."""

from __future__ import annotations

from typing import Any

import pytest

from online_model.datasets import iter_events


@pytest.fixture(scope="session")
def job_postings() -> list[dict[str, Any]]:
    """The first 2,048 job postings of the real stream, by posting time."""
    events = []
    for event in iter_events("job_postings"):
        events.append(event)
        if len(events) == 2048:
            break
    return events


@pytest.fixture(scope="session")
def electricity() -> list[dict[str, Any]]:
    """The first 4,096 half-hours of the Electricity stream."""
    events = []
    for event in iter_events("electricity"):
        events.append(event)
        if len(events) == 4096:
            break
    return events
