"""The contract every drift detector meets, and the alarm it returns.

A detector takes one number per update and returns a ``DriftAlarm`` when it
decides that the distribution of those numbers changed. The cooldown is
implemented here, once for every detector. After an alarm, detections in the
next ``cooldown_events`` updates are counted as suppressed and not returned.
River's detectors can flag one change several times while the data settles,
and the cooldown turns those flags into a single alarm.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """A change found by one detector.

    ``position`` is the 0-based index, in the stream of values that this
    detector watches, of the value that raised the alarm. ``statistic`` is the
    detector's own evidence, named by ``statistic_name`` (for example the
    ADWIN window mean after the cut, or a Kolmogorov-Smirnov p-value).
    ``event_time_ms`` is the event time of that value, in milliseconds since
    the Unix epoch, where the caller knows it.
    """

    detector: str
    position: int
    statistic_name: str
    statistic: float
    event_time_ms: int | None = None


class DriftDetector(abc.ABC):
    """A detector of change in one stream of numbers, with a cooldown.

    Subclasses implement ``_detect`` and ``_reset_detector``. Every value must
    be finite, because a NaN would corrupt the running sums of ADWIN and
    Page-Hinkley, and the window of KSWIN, until the next reset.
    """

    #: Name of the number that ``DriftAlarm.statistic`` carries.
    statistic_name: ClassVar[str]

    def __init__(self, name: str, cooldown_events: int) -> None:
        if not name:
            raise ValueError("name must be a non-empty string, got ''")
        validate_count("cooldown_events", cooldown_events, minimum=0)
        self.name = name
        self.cooldown_events = cooldown_events
        self._n_updates = 0
        self._n_alarms = 0
        self._n_suppressed = 0
        self._last_alarm_position: int | None = None

    @property
    def n_updates(self) -> int:
        """Number of values seen since construction or the last reset."""
        return self._n_updates

    @property
    def n_alarms(self) -> int:
        """Number of alarms returned since construction or the last reset."""
        return self._n_alarms

    @property
    def n_suppressed(self) -> int:
        """Number of detections that fell in a cooldown and raised no alarm."""
        return self._n_suppressed

    def update(self, value: float) -> DriftAlarm | None:
        """Feed one value and return an alarm if it completes a detected change.

        Raises ValueError for a value that is not a finite number.
        """
        self._check_value(value)
        position = self._n_updates
        self._n_updates += 1

        statistic = self._detect(float(value))
        if statistic is None:
            return None
        return self._alarm(position, statistic)

    def _check_value(self, value: object) -> None:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (is_number and math.isfinite(value)):  # type: ignore[arg-type]
            raise ValueError(
                f"detector {self.name!r} needs a finite number, got {value!r}"
            )

    def _alarm(self, position: int, statistic: float) -> DriftAlarm | None:
        """Return the alarm for a detection, or None within the cooldown."""
        if self._in_cooldown(position):
            self._n_suppressed += 1
            logger.debug(
                "%s: detection at position %d suppressed by the cooldown",
                self.name,
                position,
            )
            return None

        self._n_alarms += 1
        self._last_alarm_position = position
        return DriftAlarm(self.name, position, self.statistic_name, statistic)

    def update_many(self, values: Iterable[float]) -> list[DriftAlarm]:
        """Feed values in order, as :meth:`update` does one by one; return the
        alarms they raised.

        Raises ValueError, before feeding any value, when one is not a finite
        number.
        """
        values = list(values)
        if not all(type(value) is float and math.isfinite(value) for value in values):
            for value in values:
                self._check_value(value)
        alarms: list[DriftAlarm] = []
        detect = self._detect
        for value in values:
            position = self._n_updates
            self._n_updates += 1
            statistic = detect(float(value))
            if statistic is not None:
                alarm = self._alarm(position, statistic)
                if alarm is not None:
                    alarms.append(alarm)
        return alarms

    def reset(self) -> None:
        """Forget every value, the cooldown and the counters."""
        self._n_updates = 0
        self._n_alarms = 0
        self._n_suppressed = 0
        self._last_alarm_position = None
        self._reset_detector()

    def _in_cooldown(self, position: int) -> bool:
        last = self._last_alarm_position
        return last is not None and position - last <= self.cooldown_events

    @abc.abstractmethod
    def _detect(self, value: float) -> float | None:
        """Feed the wrapped detector, returning its statistic on a detection."""

    @abc.abstractmethod
    def _reset_detector(self) -> None:
        """Recreate the wrapped detector from its configuration."""


def validate_count(argument: str, value: int, minimum: int) -> None:
    """Raise unless ``value`` is an int of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{argument} must be at least {minimum}, got {value}")
