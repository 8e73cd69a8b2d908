"""River's ADWIN, Page-Hinkley and KSWIN behind the ``DriftDetector`` contract.

The defaults were chosen with ``benchmarks/drift_detectors.py``, whose results
page (``benchmarks/results/drift_detectors.md``) lists the detection delays
and false alarm rates measured for them and for River's own defaults. River
restarts each of these detectors from empty on the update after a detection,
so after an alarm the detector learns the new level as its baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from river import drift

from online_model.drift.base import DriftDetector, validate_count

PageHinkleyMode = Literal["up", "down", "both"]


@dataclass(frozen=True, slots=True)
class AdwinConfig:
    """Settings of ``river.drift.ADWIN`` plus the alarm policy.

    ``delta`` is ADWIN's significance level: smaller means fewer false alarms
    and a longer delay. ``clock`` is how many updates pass between two checks
    for a cut. With ``alarm_on_decrease`` False, a cut after which the window
    mean fell (the error rate dropped, so quality improved) raises no alarm.
    """

    delta: float = 0.002
    clock: int = 32
    max_buckets: int = 5
    min_window_length: int = 5
    grace_period: int = 10
    alarm_on_decrease: bool = False
    cooldown_events: int = 1000

    def __post_init__(self) -> None:
        _validate_open_unit("delta", self.delta)
        validate_count("clock", self.clock, minimum=1)
        validate_count("max_buckets", self.max_buckets, minimum=1)
        validate_count("min_window_length", self.min_window_length, minimum=1)
        validate_count("grace_period", self.grace_period, minimum=0)
        validate_count("cooldown_events", self.cooldown_events, minimum=0)


@dataclass(frozen=True, slots=True)
class PageHinkleyConfig:
    """Settings of ``river.drift.PageHinkley``.

    ``mode="up"`` watches only for an increase of the mean, which for an error
    or a loss is a drop in quality. ``delta`` is the change in the mean that is
    tolerated, in the unit of the input, and ``threshold`` is the cumulative
    deviation that raises a detection. ``alpha`` is the forgetting factor of
    that cumulative sum.
    """

    min_instances: int = 30
    delta: float = 0.005
    threshold: float = 75.0
    alpha: float = 1 - 0.0001
    mode: PageHinkleyMode = "up"
    cooldown_events: int = 1000

    def __post_init__(self) -> None:
        validate_count("min_instances", self.min_instances, minimum=1)
        if not self.delta >= 0.0:
            raise ValueError(f"delta must be at least 0, got {self.delta!r}")
        if not self.threshold > 0.0:
            raise ValueError(f"threshold must be above 0, got {self.threshold!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if self.mode not in ("up", "down", "both"):
            raise ValueError(
                f"mode must be one of 'up', 'down', 'both', got {self.mode!r}"
            )
        validate_count("cooldown_events", self.cooldown_events, minimum=0)


@dataclass(frozen=True, slots=True)
class KswinConfig:
    """Settings of ``river.drift.KSWIN``.

    KSWIN runs a two-sample Kolmogorov-Smirnov test on every update between
    the last ``stat_size`` values and ``stat_size`` values drawn from the
    older part of a window of ``window_size`` values. It detects when the
    p-value is at most ``alpha`` and the KS statistic is above 0.1. ``seed``
    fixes the draw, so a run is reproducible.

    River's KSWIN runs scipy's exact test on every value: at the default
    window sizes it took 0.6-0.9 ms per value on a busy 2-core machine
    (``benchmarks/drift_detectors.py``), far more than the learner spends
    per event. ``sample_every`` feeds only every n-th value to it, which
    divides that cost by n and multiplies the delay, counted in values, by
    about n. Positions and the cooldown still count every value.
    """

    alpha: float = 1e-5
    window_size: int = 300
    stat_size: int = 100
    seed: int = 0
    sample_every: int = 1
    cooldown_events: int = 1000

    def __post_init__(self) -> None:
        _validate_open_unit("alpha", self.alpha)
        validate_count("stat_size", self.stat_size, minimum=1)
        validate_count("window_size", self.window_size, minimum=2 * self.stat_size)
        validate_count("seed", self.seed, minimum=0)
        validate_count("sample_every", self.sample_every, minimum=1)
        validate_count("cooldown_events", self.cooldown_events, minimum=0)


class AdwinDetector(DriftDetector):
    """ADWIN over a stream such as the per-event top-1 error (0 or 1)."""

    statistic_name: ClassVar[str] = "adwin_window_mean"

    def __init__(self, name: str = "adwin", config: AdwinConfig | None = None) -> None:
        self.config = config if config is not None else AdwinConfig()
        super().__init__(name, self.config.cooldown_events)
        self._adwin = self._new_adwin()

    def _new_adwin(self) -> drift.ADWIN:
        return drift.ADWIN(
            delta=self.config.delta,
            clock=self.config.clock,
            max_buckets=self.config.max_buckets,
            min_window_length=self.config.min_window_length,
            grace_period=self.config.grace_period,
        )

    def _detect(self, value: float) -> float | None:
        mean_before = self._adwin.estimation
        self._adwin.update(value)
        if not self._adwin.drift_detected:
            return None

        # After a cut, ADWIN's window holds only the values after the change,
        # so its mean is the new level. A lower level is an improvement.
        mean_after = float(self._adwin.estimation)
        if mean_after <= mean_before and not self.config.alarm_on_decrease:
            return None
        return mean_after

    def _reset_detector(self) -> None:
        self._adwin = self._new_adwin()


class PageHinkleyDetector(DriftDetector):
    """Page-Hinkley over a stream such as the per-event error or log loss."""

    statistic_name: ClassVar[str] = "page_hinkley_cumulative_deviation"

    def __init__(
        self, name: str = "page_hinkley", config: PageHinkleyConfig | None = None
    ) -> None:
        self.config = config if config is not None else PageHinkleyConfig()
        super().__init__(name, self.config.cooldown_events)
        self._page_hinkley = self._new_page_hinkley()

    def _new_page_hinkley(self) -> drift.PageHinkley:
        return drift.PageHinkley(
            min_instances=self.config.min_instances,
            delta=self.config.delta,
            threshold=self.config.threshold,
            alpha=self.config.alpha,
            mode=self.config.mode,
        )

    def _detect(self, value: float) -> float | None:
        detector = self._page_hinkley
        detector.update(value)
        if not detector.drift_detected:
            return None

        # NOTE: River 0.26 keeps the test statistic only in private
        # attributes. The larger of the two one-sided statistics is the one
        # that crossed the threshold in every mode.
        increase = detector._sum_increase - detector._min_increase
        decrease = detector._max_decrease - detector._sum_decrease
        if self.config.mode == "up":
            return float(increase)
        if self.config.mode == "down":
            return float(decrease)
        return float(max(increase, decrease))

    def _reset_detector(self) -> None:
        self._page_hinkley = self._new_page_hinkley()


class KswinDetector(DriftDetector):
    """KSWIN over one numeric feature, such as a salary field of the events."""

    statistic_name: ClassVar[str] = "ks_p_value"

    def __init__(self, name: str = "kswin", config: KswinConfig | None = None) -> None:
        self.config = config if config is not None else KswinConfig()
        super().__init__(name, self.config.cooldown_events)
        self._kswin = self._new_kswin()

    def _new_kswin(self) -> drift.KSWIN:
        return drift.KSWIN(
            alpha=self.config.alpha,
            window_size=self.config.window_size,
            stat_size=self.config.stat_size,
            seed=self.config.seed,
        )

    def _detect(self, value: float) -> float | None:
        # The base class has already counted this value.
        if (self.n_updates - 1) % self.config.sample_every:
            return None
        self._kswin.update(value)
        if not self._kswin.drift_detected:
            return None
        return float(self._kswin.p_value)

    def _reset_detector(self) -> None:
        self._kswin = self._new_kswin()


def _validate_open_unit(argument: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{argument} must be in the open interval (0, 1), got {value!r}"
        )
