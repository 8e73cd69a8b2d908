import logging
import math
import random
from collections.abc import Callable

import pytest

from online_model.drift import (
    AdwinConfig,
    AdwinDetector,
    DriftAlarm,
    DriftDetector,
    DriftMonitor,
    DriftMonitorConfig,
    KswinConfig,
    KswinDetector,
    PageHinkleyConfig,
    PageHinkleyDetector,
)
from online_model.scored import Scored

FIRST_CHANGE = 600
SECOND_CHANGE = 1200
STREAM_LENGTH = 1800
# Every detector, at its default settings, alarms within this many events of
# a step in the rate of a 0/1 stream of the size in two_step_stream.
MAX_DELAY = 400
# KSWIN runs a Kolmogorov-Smirnov test per value, so silent streams are short.
STATIONARY_LENGTH = 1000


def two_step_stream(seed: int = 0) -> list[float]:
    """Return 0/1 values whose rate steps 0.05 -> 0.5 -> 0.95 at two positions."""
    rng = random.Random(seed)
    values = []
    for position in range(STREAM_LENGTH):
        if position < FIRST_CHANGE:
            rate = 0.05
        elif position < SECOND_CHANGE:
            rate = 0.5
        else:
            rate = 0.95
        values.append(1.0 if rng.random() < rate else 0.0)
    return values


def stationary_stream(seed: int = 0, rate: float = 0.2) -> list[float]:
    rng = random.Random(seed)
    return [1.0 if rng.random() < rate else 0.0 for _ in range(STATIONARY_LENGTH)]


def run(detector: DriftDetector, values: list[float]) -> list[DriftAlarm]:
    alarms = []
    for value in values:
        alarm = detector.update(value)
        if alarm is not None:
            alarms.append(alarm)
    return alarms


DetectorFactory = Callable[[int], DriftDetector]

FACTORIES: dict[str, DetectorFactory] = {
    "adwin": lambda cooldown: AdwinDetector(
        config=AdwinConfig(cooldown_events=cooldown)
    ),
    "page_hinkley": lambda cooldown: PageHinkleyDetector(
        config=PageHinkleyConfig(cooldown_events=cooldown)
    ),
    "kswin": lambda cooldown: KswinDetector(
        config=KswinConfig(cooldown_events=cooldown)
    ),
}


# Contract: every detector behind DriftDetector passes these tests.


@pytest.fixture(params=sorted(FACTORIES))
def factory(request: pytest.FixtureRequest) -> DetectorFactory:
    return FACTORIES[request.param]


def test_contract_has_names(factory: DetectorFactory) -> None:
    detector = factory(100)

    assert detector.name
    assert detector.statistic_name


def test_contract_constant_input_silent(factory: DetectorFactory) -> None:
    detector = factory(100)

    alarms = run(detector, [0.3] * STATIONARY_LENGTH)

    assert alarms == []
    assert detector.n_updates == STATIONARY_LENGTH


def test_contract_stationary_stream_silent(factory: DetectorFactory) -> None:
    detector = factory(100)

    alarms = run(detector, stationary_stream())

    assert alarms == []


def test_contract_alarm_after_change(factory: DetectorFactory) -> None:
    detector = factory(100)
    alarms = []
    update_counts = []

    for value in two_step_stream():
        alarm = detector.update(value)
        if alarm is not None:
            alarms.append(alarm)
            update_counts.append(detector.n_updates)

    first = alarms[0]
    assert first.detector == detector.name
    assert first.statistic_name == detector.statistic_name
    assert math.isfinite(first.statistic)
    assert FIRST_CHANGE <= first.position < FIRST_CHANGE + MAX_DELAY
    assert first.event_time_ms is None
    assert [alarm.position + 1 for alarm in alarms] == update_counts


def test_contract_cooldown_gives_one_alarm(factory: DetectorFactory) -> None:
    # Two changes 600 events apart: a cooldown of 0 lets both through, one of
    # 2000 lets through only the first and counts the second as suppressed.
    without_cooldown = factory(0)
    with_cooldown = factory(2000)

    alarms_without = run(without_cooldown, two_step_stream())
    alarms_with = run(with_cooldown, two_step_stream())

    assert len(alarms_without) == 2
    assert alarms_without[1].position >= SECOND_CHANGE
    assert len(alarms_with) == 1
    assert alarms_with[0] == alarms_without[0]
    assert with_cooldown.n_alarms == 1
    assert with_cooldown.n_suppressed == 1


def test_contract_rearms_after_cooldown(factory: DetectorFactory) -> None:
    # The first alarm comes at most MAX_DELAY (400) events after the first
    # change, which is 600 events before the second, so a cooldown of 150 has
    # ended before the second change.
    detector = factory(150)

    alarms = run(detector, two_step_stream())

    assert len(alarms) == 2
    assert detector.n_suppressed == 0


def test_contract_reset_replays_same(factory: DetectorFactory) -> None:
    detector = factory(2000)
    first_run = run(detector, two_step_stream())

    detector.reset()

    assert detector.n_updates == 0
    assert detector.n_alarms == 0
    assert detector.n_suppressed == 0
    assert run(detector, two_step_stream()) == first_run


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0.5", True])
def test_contract_rejects_non_finite(factory: DetectorFactory, value: float) -> None:
    detector = factory(100)

    with pytest.raises(ValueError, match="needs a finite number, got"):
        detector.update(value)

    assert detector.n_updates == 0


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_contract_update_many_as_update(factory: DetectorFactory, chunk: int) -> None:
    # The same stream, fed whole or in chunks, gives the same alarms and counters.
    values = two_step_stream()
    one_by_one = factory(100)
    expected = run(one_by_one, values)
    batched = factory(100)
    alarms = []
    for start in range(0, len(values), chunk):
        alarms.extend(batched.update_many(values[start : start + chunk]))
    assert expected
    assert alarms == expected
    assert batched.n_updates == one_by_one.n_updates
    assert batched.n_suppressed == one_by_one.n_suppressed


def test_contract_update_many_takes_iterator(factory: DetectorFactory) -> None:
    values = two_step_stream()
    detector = factory(100)
    alarms = detector.update_many(iter(values))
    assert detector.n_updates == len(values)
    assert alarms == run(factory(100), values)


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.5", True])
def test_contract_update_many_checks_first(
    factory: DetectorFactory, value: float
) -> None:
    detector = factory(100)

    with pytest.raises(ValueError, match="needs a finite number, got"):
        detector.update_many([0.0, 1.0, value, 0.0])

    assert detector.n_updates == 0


# Detector-specific behaviour.


def test_adwin_ignores_error_decrease() -> None:
    falling = [1.0 - value for value in two_step_stream()]

    default = AdwinDetector()
    both_ways = AdwinDetector(config=AdwinConfig(alarm_on_decrease=True))

    assert run(default, falling) == []
    assert len(run(both_ways, falling)) >= 1


def test_adwin_statistic_is_new_mean() -> None:
    detector = AdwinDetector()

    alarm = run(detector, two_step_stream())[0]

    # The window after the cut mixes a few 0.05-rate values with 0.5-rate
    # values, so its mean lies above the old rate and at most the new one.
    assert 0.05 < alarm.statistic <= 0.55


def test_page_hinkley_up_ignores_decrease() -> None:
    falling = [1.0 - value for value in two_step_stream()]

    up = PageHinkleyDetector()
    both = PageHinkleyDetector(config=PageHinkleyConfig(mode="both"))

    assert run(up, falling) == []
    assert len(run(both, falling)) >= 1


def test_page_hinkley_statistic_crosses_threshold() -> None:
    detector = PageHinkleyDetector(config=PageHinkleyConfig(threshold=20.0))

    alarm = run(detector, two_step_stream())[0]

    assert alarm.statistic > 20.0
    assert alarm.statistic < 21.0  # one step adds less than 1 for 0/1 input


def test_kswin_statistic_is_p_value() -> None:
    config = KswinConfig(alpha=0.01)
    detector = KswinDetector(config=config)

    alarm = run(detector, two_step_stream())[0]

    assert 0.0 <= alarm.statistic <= config.alpha


@pytest.mark.parametrize(
    ("make_config", "message"),
    [
        (lambda: AdwinConfig(delta=0.0), "delta must be in the open interval"),
        (lambda: AdwinConfig(clock=0), "clock must be at least 1, got 0"),
        (lambda: AdwinConfig(cooldown_events=-1), "cooldown_events must be at"),
        (lambda: PageHinkleyConfig(threshold=0.0), "threshold must be above 0"),
        (lambda: PageHinkleyConfig(alpha=1.5), r"alpha must be in \(0, 1\]"),
        (lambda: PageHinkleyConfig(mode="sideways"), "mode must be one of"),  # type: ignore[arg-type]
        (lambda: KswinConfig(alpha=1.0), "alpha must be in the open interval"),
        (
            lambda: KswinConfig(window_size=50, stat_size=30),
            "window_size must be at least 60, got 50",
        ),
        (
            lambda: DriftMonitorConfig(page_hinkley_signal="auc"),  # type: ignore[arg-type]
            "page_hinkley_signal must be 'error' or 'log_loss'",
        ),
        (lambda: DriftMonitorConfig(log_loss_cap=0.0), "log_loss_cap must be"),
        (
            lambda: DriftMonitorConfig(kswin_features=("a", "a")),
            "must not repeat a field",
        ),
    ],
)
def test_config_rejects_invalid(
    make_config: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_config()


def test_config_rejects_feature_string() -> None:
    with pytest.raises(TypeError, match="got the string 'salary'"):
        DriftMonitorConfig(kswin_features="salary")  # type: ignore[arg-type]


# DriftMonitor.


def scored_stream(values: list[float]) -> list[Scored]:
    """Return Scored records that are wrong where the value is 1.0."""
    records = []
    for position, value in enumerate(values):
        ranked = ("b", "a") if value else ("a", "b")
        probability = 0.2 if value else 0.8
        records.append(Scored("a", ranked, probability, 1_000_000 + position))
    return records


def feed_in_batches(
    monitor: DriftMonitor,
    records: list[Scored],
    events: list[dict[str, object]] | None = None,
    batch_size: int = 128,
) -> list[DriftAlarm]:
    alarms = []
    for start in range(0, len(records), batch_size):
        batch_events = None if events is None else events[start : start + batch_size]
        alarms.extend(monitor.update(records[start : start + batch_size], batch_events))
    return alarms


def test_monitor_quality_alarms_in_batches() -> None:
    monitor = DriftMonitor()
    alone = AdwinDetector(config=AdwinConfig())
    expected_adwin = run(alone, two_step_stream())[0]

    alarms = feed_in_batches(monitor, scored_stream(two_step_stream()))

    by_detector = {alarm.detector: alarm for alarm in alarms}
    assert [alarm.detector for alarm in alarms].count("adwin_error") == 1
    assert [alarm.detector for alarm in alarms].count("page_hinkley_error") == 1
    adwin_alarm = by_detector["adwin_error"]
    assert adwin_alarm.position == expected_adwin.position
    assert adwin_alarm.statistic == expected_adwin.statistic
    assert adwin_alarm.event_time_ms == 1_000_000 + adwin_alarm.position
    assert by_detector["page_hinkley_error"].position >= FIRST_CHANGE


def test_monitor_detectors_can_be_off() -> None:
    monitor = DriftMonitor(DriftMonitorConfig(adwin=None, page_hinkley=None))

    alarms = feed_in_batches(monitor, scored_stream(two_step_stream()))

    assert monitor.detectors == ()
    assert alarms == []


def test_monitor_log_loss_signal_is_capped() -> None:
    # 1000 events with p = 0.9 (loss 0.105), then events with p = 0. Each of
    # those adds (loss - running mean - delta 0.005) to the Page-Hinkley sum.
    # Cap 10: about 9.88, 9.87, ... 9.81, so the sum is 68.9 after seven and
    # 78.7 after eight, over the threshold of 75 at position 1007.
    # Cap 40: the loss of p = 0 is the cap itself, adding 39.86 and 39.73, so
    # the sum is 79.6 after two and the alarm is at position 1001.
    records = [Scored("a", ("a",), 0.9)] * 1000 + [Scored("a", ("b",), 0.0)] * 20
    positions = {}
    for cap in (10.0, 40.0):
        config = DriftMonitorConfig(
            adwin=None, page_hinkley_signal="log_loss", log_loss_cap=cap
        )
        alarms = feed_in_batches(DriftMonitor(config), records)
        assert [alarm.detector for alarm in alarms] == ["page_hinkley_log_loss"]
        positions[cap] = alarms[0].position

    assert positions[10.0] == 1007
    assert positions[40.0] == 1001


def test_monitor_kswin_on_event_field() -> None:
    rng = random.Random(3)
    events: list[dict[str, object]] = [
        {"salary": rng.gauss(100.0 if i < 700 else 160.0, 20.0)} for i in range(1400)
    ]
    records = scored_stream([0.0] * 1400)
    monitor = DriftMonitor(DriftMonitorConfig(kswin_features=("salary",)))

    alarms = feed_in_batches(monitor, records, events)

    assert [alarm.detector for alarm in alarms] == ["kswin_salary"]
    assert 700 <= alarms[0].position < 800
    assert alarms[0].event_time_ms is None


def test_monitor_feature_position_counts_events() -> None:
    # Every other event lacks the field, so the detector receives half the
    # events, but the alarm carries the index among all events.
    rng = random.Random(3)
    events: list[dict[str, object]] = []
    for i in range(1400):
        events.append({"salary": rng.gauss(100.0 if i < 700 else 160.0, 20.0)})
        events.append({"salary": None})
    monitor = DriftMonitor(
        DriftMonitorConfig(adwin=None, page_hinkley=None, kswin_features=("salary",))
    )

    alarms = feed_in_batches(monitor, [Scored("a", ("a",), 1.0)] * 2800, events)

    detector = monitor.detectors[0]
    assert [alarm.detector for alarm in alarms] == ["kswin_salary"]
    assert alarms[0].position % 2 == 0
    assert 1400 <= alarms[0].position < 1600
    assert detector.n_updates == 1400
    assert monitor.n_missing_values == {"salary": 1400}


def test_monitor_counts_skipped_values(caplog: pytest.LogCaptureFixture) -> None:
    events: list[dict[str, object]] = [
        {"salary": 1.0, "hours": 2},
        {"salary": None, "hours": math.nan},
        {"hours": "forty"},
        {"salary": True, "hours": math.inf},
    ]
    config = DriftMonitorConfig(kswin_features=("salary", "hours"))
    monitor = DriftMonitor(config)

    with caplog.at_level(logging.WARNING, logger="online_model.drift.monitor"):
        monitor.update([], events)

    assert monitor.n_missing_values == {"salary": 2}
    assert monitor.n_invalid_values == {"salary": 1, "hours": 3}
    detectors = {detector.name: detector for detector in monitor.detectors}
    assert detectors["kswin_salary"].n_updates == 1
    assert detectors["kswin_hours"].n_updates == 1
    assert "not finite numbers" in caplog.text
    assert "'hours': 3" in caplog.text


def test_monitor_rejects_bad_probability() -> None:
    monitor = DriftMonitor()
    batch = [Scored("a", ("a",), 0.5), Scored("a", ("a",), 2.0)]

    with pytest.raises(ValueError, match="true_label_probability must be"):
        monitor.update(batch)

    assert all(detector.n_updates == 0 for detector in monitor.detectors)


def test_monitor_reset_clears_all() -> None:
    monitor = DriftMonitor(DriftMonitorConfig(kswin_features=("salary",)))
    monitor.update(scored_stream([0.0, 1.0]), [{"salary": None}, {"salary": 3.0}])

    monitor.reset()

    assert [detector.n_updates for detector in monitor.detectors] == [0, 0, 0]
    assert monitor.n_missing_values == {}


def test_monitor_reports_field_without_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = DriftMonitor(
        DriftMonitorConfig(
            adwin=None, page_hinkley=None, kswin_features=("salary", "bonus")
        )
    )
    events: list[dict[str, object]] = [
        {"salary": None, "bonus": float(i % 7)} for i in range(2500)
    ]

    with caplog.at_level(logging.WARNING, logger="online_model.drift.monitor"):
        for start in range(0, 2500, 500):
            monitor.update([], events[start : start + 500])

    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "KSWIN on 'salary' has had no value in 1000 events" in warnings[0]
