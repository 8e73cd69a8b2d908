from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_cloud_monitoring import FakeMonitoringServer
from monitoring_fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitoring_server() -> Iterator[FakeMonitoringServer]:
    server = FakeMonitoringServer(min_interval_s=10.0)
    server.start()
    yield server
    server.stop()
