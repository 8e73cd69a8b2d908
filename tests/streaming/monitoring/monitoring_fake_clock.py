"""A clock for tests that moves only when a test advances it."""

from __future__ import annotations


class FakeClock:
    """Seconds since the Unix epoch, starting at a fixed time."""

    def __init__(self, start_s: float = 1_800_000_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

    def sleep(self, seconds: float) -> None:
        """Advance instead of sleeping, for code that takes a sleep function."""
        self.now_s += seconds
