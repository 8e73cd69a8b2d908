"""The holdout window: shared encoding and kept scores, checked against score()."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import weakref

import pytest

from online_model.datasets import iter_events
from online_model.evaluation import MetricsAccumulator
from online_model.learner import LearnerConfig, OnlineLearner
from online_model.spec import load_spec
from streaming.holdout import MAX_CHUNKS, HoldoutWindow

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
    # The new event is scored alone, a batch of one, whose float rounding
    # can differ in the last bit from its score within the whole window.
    want_metrics, want_confusion = expected(learner, [*HELD_OUT, LATER[0]])
    assert after[1] == want_confusion
    assert after[0].log_loss == pytest.approx(want_metrics.log_loss, rel=1e-9)
    assert dataclasses.replace(after[0], log_loss=0.0) == dataclasses.replace(
        want_metrics, log_loss=0.0
    )
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


def counting_scores(learner: OnlineLearner) -> list[int]:
    """Make ``learner`` record the size of every batch it scores."""
    sizes: list[int] = []
    score_encoded = learner.score_encoded

    def recorded(labelled: list[dict], encoded: object) -> list:
        sizes.append(len(labelled))
        return score_encoded(labelled, encoded)  # type: ignore[arg-type]

    learner.score_encoded = recorded  # type: ignore[method-assign]
    return sizes


def assert_close(got: tuple, want: tuple) -> None:
    # Batches of other sizes may round the last float bit differently.
    metrics, confusion = got
    want_metrics, want_confusion = want
    assert confusion == want_confusion
    assert metrics.n_events == want_metrics.n_events
    assert metrics.top1_accuracy == want_metrics.top1_accuracy
    assert metrics.top_k_hit_rate == want_metrics.top_k_hit_rate
    assert metrics.log_loss == pytest.approx(want_metrics.log_loss, rel=1e-6)


def test_kept_version_scores_only_new_events() -> None:
    learner = trained()
    sizes = counting_scores(learner)
    window = window_of(HELD_OUT[:300])
    window.evaluate(learner, fixed=True)
    for event in HELD_OUT[300:]:
        window.append(event)
    got = window.evaluate(learner, fixed=True)
    assert sizes == [300, 200]
    assert_close(got, expected(learner, HELD_OUT))


def test_candidate_rescores_every_chunk() -> None:
    learner = trained()
    sizes = counting_scores(learner)
    window = window_of(HELD_OUT[:300])
    window.evaluate(learner)
    for event in HELD_OUT[300:]:
        window.append(event)
    got = window.evaluate(learner)
    assert sizes == [300, 300, 200]
    assert_close(got, expected(learner, HELD_OUT))


def test_oldest_chunk_partly_dropped() -> None:
    # Chunks of 100 events in a window of 250: the oldest chunk in the window
    # is half out of it after every second evaluation.
    learner = trained()
    window = window_of(HELD_OUT[:150], size=250)
    for start in (150, 250, 350):
        window.evaluate(learner, fixed=True)
        for event in HELD_OUT[start : start + 100]:
            window.append(event)
        got = window.evaluate(learner, fixed=True)
        assert list(window) == HELD_OUT[start - 150 : start + 100]
        assert_close(got, expected(learner, list(window)))


def test_many_small_chunks_encoded_again_as_one() -> None:
    learner = trained()
    sizes = counting_scores(learner)
    window = window_of(HELD_OUT[:100])
    for event in HELD_OUT[100 : 100 + MAX_CHUNKS]:
        window.evaluate(learner, fixed=True)
        window.append(event)
    got = window.evaluate(learner, fixed=True)
    # 100 events, then one per evaluation until MAX_CHUNKS chunks, then all.
    assert sizes == [100, *([1] * (MAX_CHUNKS - 1)), 100 + MAX_CHUNKS]
    assert_close(got, expected(learner, HELD_OUT[: 100 + MAX_CHUNKS]))


def test_least_recent_kept_model_forgotten() -> None:
    first, second, third = trained(), trained(), trained()
    sizes = {id(m): counting_scores(m) for m in (first, second, third)}
    window = window_of(HELD_OUT)
    window.kept_models = 2
    for model in (first, second, third, second, first):
        window.evaluate(model, fixed=True)
    assert sizes[id(first)] == [500, 500]
    assert sizes[id(second)] == [500]
    assert sizes[id(third)] == [500]


def test_window_keeps_no_dropped_version_alive() -> None:
    learner = trained()
    window = window_of(HELD_OUT)
    window.evaluate(learner, fixed=True)
    reference = weakref.ref(learner)
    del learner
    gc.collect()
    assert reference() is None


def test_duplicate_id_kept_once() -> None:
    # score() counts only the first event with an id, and so does the window,
    # whichever chunks the copies would fall in.
    learner = trained()
    first, second, third = HELD_OUT[:3]
    copy = {**first, "job_role": second["job_role"]}
    window = window_of([first], size=3)
    window.evaluate(learner, fixed=True)
    assert window.append(copy) is False
    assert window.append(second) is True
    assert list(window) == [first, second]
    assert_close(
        window.evaluate(learner, fixed=True), expected(learner, [first, second])
    )

    # Once the first copy has left the window, the id may enter again.
    window.append(third)
    window.append(HELD_OUT[3])
    assert window.append(copy) is True
    assert list(window) == [third, HELD_OUT[3], copy]
    assert_close(window.evaluate(learner), expected(learner, list(window)))


def test_replace_keeps_first_of_duplicates() -> None:
    learner = trained()
    copy = {**HELD_OUT[0], "job_role": HELD_OUT[1]["job_role"]}
    window = window_of(HELD_OUT[:5])
    window.replace([HELD_OUT[0], copy, HELD_OUT[1]])
    assert list(window) == [HELD_OUT[0], HELD_OUT[1]]
    assert window.evaluate(learner) == expected(learner, [HELD_OUT[0], HELD_OUT[1]])
