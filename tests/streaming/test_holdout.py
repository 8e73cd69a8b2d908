"""The holdout window: shared encoding and kept metrics, checked against score()."""

from __future__ import annotations

import itertools

from online_model.datasets import iter_events
from online_model.evaluation import MetricsAccumulator
from online_model.learner import LearnerConfig, OnlineLearner
from online_model.spec import load_spec
from streaming.holdout import HoldoutWindow

SPEC = load_spec("job_postings")
EVENTS = list(itertools.islice(iter_events("job_postings"), 1800))
TRAINING = EVENTS[:1200]
HELD_OUT = EVENTS[1200:1700]
LATER = EVENTS[1700:]


def trained(config: LearnerConfig | None = None) -> OnlineLearner:
    learner = OnlineLearner(SPEC, config, seed=0, device="cpu")
    for start in range(0, len(TRAINING), 200):
        learner.learn(TRAINING[start : start + 200])
    return learner


def expected(learner: OnlineLearner, events: list[dict]) -> tuple:
    accumulator = MetricsAccumulator()
    accumulator.update(learner.score(events))
    return accumulator.result(), accumulator.confusion_matrix()


def window_of(events: list[dict], size: int = 2000) -> HoldoutWindow:
    window = HoldoutWindow(size)
    for event in events:
        window.append(event)
    return window


def test_evaluate_equals_score() -> None:
    learner = trained()
    metrics, confusion = window_of(HELD_OUT).evaluate(learner)
    want_metrics, want_confusion = expected(learner, HELD_OUT)
    assert metrics == want_metrics
    assert confusion == want_confusion
    assert metrics.n_events == len(HELD_OUT)


def test_shared_encoding_other_config() -> None:
    # The second learner has other hash buckets, so it must not reuse the
    # first one's encoded batch. Each must match its own score().
    default = trained()
    small = trained(LearnerConfig(hash_bits=10))
    window = window_of(HELD_OUT)
    for learner in (default, small, default):
        assert window.evaluate(learner) == expected(learner, HELD_OUT)
    assert window.evaluate(default)[0] != window.evaluate(small)[0]


def test_fixed_result_kept_until_append() -> None:
    learner = trained()
    window = window_of(HELD_OUT)
    first = window.evaluate(learner, fixed=True)
    assert window.evaluate(learner, fixed=True) is first

    window.append(LATER[0])
    after = window.evaluate(learner, fixed=True)
    assert after is not first
    assert after == expected(learner, [*HELD_OUT, LATER[0]])
    assert after[0].n_events == len(HELD_OUT) + 1


def test_learning_learner_rescored() -> None:
    learner = trained()
    window = window_of(HELD_OUT)
    before = window.evaluate(learner)
    learner.learn(LATER)
    after = window.evaluate(learner)
    assert after == expected(learner, HELD_OUT)
    assert after[0].log_loss != before[0].log_loss


def test_window_drops_oldest() -> None:
    learner = trained()
    window = window_of(HELD_OUT, size=300)
    assert len(window) == 300
    assert list(window) == HELD_OUT[-300:]
    assert window.evaluate(learner, fixed=True) == expected(learner, HELD_OUT[-300:])


def test_replace_discards_results() -> None:
    learner = trained()
    window = window_of(HELD_OUT)
    window.evaluate(learner, fixed=True)
    window.replace(LATER)
    assert list(window) == LATER
    assert window.evaluate(learner, fixed=True) == expected(learner, LATER)
