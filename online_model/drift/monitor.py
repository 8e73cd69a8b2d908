"""Drift monitoring of a scored stream and of chosen numeric event fields.

``DriftMonitor`` turns each micro-batch of Scored records into per-event
quality signals and feeds them to the quality detectors. ADWIN watches the
top-1 error (1 when the top-1 label is wrong, else 0). Page-Hinkley, in mode
``up``, watches the same error or, by configuration, the per-event log loss
capped at ``log_loss_cap``. One KSWIN detector per configured field watches
the raw values of that field in the events.

Each detector has its own cooldown, so one change produces at most one alarm
per detector. Two quality detectors that both see a change each raise an
alarm for it, and each alarm's ``detector`` field names its detector.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeGuard

from online_model.drift.base import DriftAlarm, DriftDetector
from online_model.drift.detectors import (
    AdwinConfig,
    AdwinDetector,
    KswinConfig,
    KswinDetector,
    PageHinkleyConfig,
    PageHinkleyDetector,
)
from online_model.evaluation import validate_probability
from online_model.scored import Scored

logger = logging.getLogger(__name__)

# A KSWIN field null or absent in this many events, every one so far, is
# reported once.
MISSING_WARNING_EVENTS = 1000

QualitySignal = Literal["error", "log_loss"]


@dataclass(frozen=True, slots=True)
class DriftMonitorConfig:
    """The detectors of a DriftMonitor, the signal each watches, and their settings.

    ``adwin`` or ``page_hinkley`` set to None switches that detector off.
    ``log_loss_cap`` bounds the per-event log loss (in nats) fed to
    Page-Hinkley, because a label new to the model gets only the escape
    probability (0 from a model without one, which costs about 34.5,
    ``-ln 1e-15``) and would move the detector in one step.
    ``kswin_features`` names the numeric event fields that get a KSWIN
    detector each.
    """

    adwin: AdwinConfig | None = field(default_factory=AdwinConfig)
    page_hinkley: PageHinkleyConfig | None = field(default_factory=PageHinkleyConfig)
    page_hinkley_signal: QualitySignal = "error"
    log_loss_cap: float = 10.0
    kswin: KswinConfig = field(default_factory=KswinConfig)
    kswin_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.page_hinkley_signal not in ("error", "log_loss"):
            raise ValueError(
                "page_hinkley_signal must be 'error' or 'log_loss', "
                f"got {self.page_hinkley_signal!r}"
            )
        if not (math.isfinite(self.log_loss_cap) and self.log_loss_cap > 0.0):
            raise ValueError(
                f"log_loss_cap must be a finite number above 0, "
                f"got {self.log_loss_cap!r}"
            )
        if isinstance(self.kswin_features, str):
            raise TypeError(
                "kswin_features must be a tuple of field names, "
                f"got the string {self.kswin_features!r}"
            )
        if len(set(self.kswin_features)) != len(self.kswin_features):
            raise ValueError(
                f"kswin_features must not repeat a field, got {self.kswin_features!r}"
            )
        if any(not name for name in self.kswin_features):
            raise ValueError(
                f"kswin_features must not contain an empty name, "
                f"got {self.kswin_features!r}"
            )


class DriftMonitor:
    """The drift detectors of one stream, fed a micro-batch at a time.

    Alarm positions count from the first record of the first micro-batch. A
    quality alarm carries the index of its Scored record. A feature alarm
    carries the index of its event among all events given, counting the
    events whose value for that field was skipped.
    """

    def __init__(self, config: DriftMonitorConfig | None = None) -> None:
        self.config = config if config is not None else DriftMonitorConfig()
        self._adwin = (
            AdwinDetector("adwin_error", self.config.adwin)
            if self.config.adwin is not None
            else None
        )
        self._page_hinkley = (
            PageHinkleyDetector(
                f"page_hinkley_{self.config.page_hinkley_signal}",
                self.config.page_hinkley,
            )
            if self.config.page_hinkley is not None
            else None
        )
        self._feature_detectors = {
            name: KswinDetector(f"kswin_{name}", self.config.kswin)
            for name in self.config.kswin_features
        }
        self._n_missing_values: Counter[str] = Counter()
        self._n_invalid_values: Counter[str] = Counter()
        self._n_events = 0
        # KSWIN fields already reported as having no value at all.
        self._warned_missing: set[str] = set()

    @property
    def detectors(self) -> tuple[DriftDetector, ...]:
        """Every active detector: quality detectors first, then one per feature."""
        quality = [d for d in (self._adwin, self._page_hinkley) if d is not None]
        return (*quality, *self._feature_detectors.values())

    @property
    def n_missing_values(self) -> dict[str, int]:
        """Per KSWIN field, the events where the field was absent or None."""
        return dict(self._n_missing_values)

    @property
    def n_invalid_values(self) -> dict[str, int]:
        """Per KSWIN field, the values skipped as non-numeric or not finite."""
        return dict(self._n_invalid_values)

    def update(
        self,
        micro_batch: Sequence[Scored],
        events: Iterable[Mapping[str, object]] | None = None,
    ) -> list[DriftAlarm]:
        """Feed one micro-batch and return the alarms it raised, in stream order.

        ``events`` are the raw events whose fields KSWIN watches. They need not
        be the events behind ``micro_batch``: unlabelled events carry feature
        values too. Raises ValueError, before feeding any detector, when a
        record's ``true_label_probability`` is not a number in [0, 1].
        """
        for record in micro_batch:
            validate_probability(record)

        alarms = self._update_quality(micro_batch)
        if events is not None and self._feature_detectors:
            alarms.extend(self._update_features(events))
        for alarm in alarms:
            logger.info(
                "drift alarm from %s at position %d: %s=%.6g",
                alarm.detector,
                alarm.position,
                alarm.statistic_name,
                alarm.statistic,
            )
        return alarms

    def reset(self) -> None:
        """Reset every detector and the skipped-value counters."""
        for detector in self.detectors:
            detector.reset()
        self._n_missing_values.clear()
        self._n_invalid_values.clear()
        self._n_events = 0

    def _update_quality(self, micro_batch: Sequence[Scored]) -> list[DriftAlarm]:
        # Each alarm with its event's position in the micro-batch and its
        # detector's rank, so that alarms return in stream order, ADWIN first.
        found: list[tuple[int, int, DriftAlarm]] = []
        if self._adwin is not None:
            errors = [
                0.0 if record.predicted_label == record.true_label else 1.0
                for record in micro_batch
            ]
            start = self._adwin.n_updates
            for alarm in self._adwin.update_many(errors):
                found.append((alarm.position - start, 0, alarm))
        if self._page_hinkley is not None:
            values = list(map(self._page_hinkley_value, micro_batch))
            start = self._page_hinkley.n_updates
            for alarm in self._page_hinkley.update_many(values):
                found.append((alarm.position - start, 1, alarm))
        found.sort(key=lambda entry: entry[:2])
        return [self._with_time(alarm, micro_batch[i]) for i, _, alarm in found]

    def _page_hinkley_value(self, record: Scored) -> float:
        if self.config.page_hinkley_signal == "error":
            return 0.0 if record.predicted_label == record.true_label else 1.0
        cap = self.config.log_loss_cap
        probability = record.true_label_probability
        return cap if probability <= math.exp(-cap) else -math.log(probability)

    @staticmethod
    def _with_time(alarm: DriftAlarm, record: Scored) -> DriftAlarm:
        return dataclasses.replace(alarm, event_time_ms=record.event_time_ms)

    def _update_features(
        self, events: Iterable[Mapping[str, object]]
    ) -> list[DriftAlarm]:
        alarms: list[DriftAlarm] = []
        invalid_in_batch: Counter[str] = Counter()
        for event in events:
            event_position = self._n_events
            self._n_events += 1
            for name, detector in self._feature_detectors.items():
                value = event.get(name)
                if value is None:
                    self._n_missing_values[name] += 1
                    continue
                if not _is_finite_number(value):
                    invalid_in_batch[name] += 1
                    continue
                alarm = detector.update(float(value))
                if alarm is not None:
                    alarms.append(dataclasses.replace(alarm, position=event_position))

        for name in self._feature_detectors:
            missing = self._n_missing_values[name]
            if (
                name not in self._warned_missing
                and missing >= MISSING_WARNING_EVENTS
                and missing == self._n_events
            ):
                self._warned_missing.add(name)
                logger.warning(
                    "KSWIN on %r has had no value in %d events: the field is "
                    "null or absent in every event so far, so it watches nothing",
                    name,
                    missing,
                )
        if invalid_in_batch:
            self._n_invalid_values.update(invalid_in_batch)
            logger.warning(
                "skipped feature values that are not finite numbers: %s",
                dict(invalid_in_batch),
            )
        return alarms


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)
