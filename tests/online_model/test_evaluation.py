import math

import pytest

from online_model.evaluation import (
    NO_PREDICTION_LABEL,
    OTHER_LABEL,
    EvaluationConfig,
    MetricsAccumulator,
    evaluate,
)
from online_model.scored import Scored

# Six events with top_k = 2. Columns: true label, ranked labels, p(true label).
#   1. a  (a, b, c)  0.5    top-1 hit, top-2 hit
#   2. b  (a, b, c)  0.25   top-1 miss (a), top-2 hit
#   3. c  (b, a)     0.0    top-1 miss (b), top-2 miss, loss clipped
#   4. a  ()         0.0    no prediction, both miss, loss clipped
#   5. b  (d, b)     0.4    top-1 miss (d), top-2 hit
#   6. c  (c,)       0.9    top-1 hit, top-2 hit
FIXTURE = [
    Scored("a", ("a", "b", "c"), 0.5, 1),
    Scored("b", ("a", "b", "c"), 0.25, 2),
    Scored("c", ("b", "a"), 0.0, 3),
    Scored("a", (), 0.0, 4),
    Scored("b", ("d", "b"), 0.4, 5),
    Scored("c", ("c",), 0.9, 6),
]
TOP2 = EvaluationConfig(top_k=2)


def test_top1_and_top_k_by_hand() -> None:
    metrics = evaluate(FIXTURE, TOP2)

    assert metrics.n_events == 6
    assert metrics.top_k == 2
    assert metrics.top1_accuracy == pytest.approx(2 / 6)  # events 1 and 6
    assert metrics.top_k_hit_rate == pytest.approx(4 / 6)  # events 1, 2, 5, 6


def test_log_loss_clips_zero_probability() -> None:
    metrics = evaluate(FIXTURE, TOP2)

    # -ln p per event: ln 2 = 0.6931, ln 4 = 1.3863, -ln(1e-15) = 34.5388
    # twice (events 3 and 4), ln 2.5 = 0.9163, ln(1/0.9) = 0.1054.
    # Sum 72.1786, mean over 6 events 12.0298.
    expected = (
        math.log(2)
        + math.log(4)
        + 2 * 15 * math.log(10)
        + math.log(2.5)
        + math.log(1 / 0.9)
    )
    assert metrics.log_loss == pytest.approx(expected / 6)
    assert metrics.log_loss == pytest.approx(12.0298, abs=1e-4)


def test_log_loss_clip_is_configurable() -> None:
    record = Scored("a", ("b",), 0.0)

    metrics = evaluate([record], EvaluationConfig(log_loss_clip=1e-3))

    assert metrics.log_loss == pytest.approx(3 * math.log(10))


def test_macro_scores_by_hand() -> None:
    metrics = evaluate(FIXTURE, TOP2)

    # Top-1 pairs (true, predicted): (a,a) (b,a) (c,b) (a,none) (b,d) (c,c).
    # Labels averaged: a, b, c (true) and d (predicted only) -> 4.
    #   a: TP 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
    #   b: TP 0, predicted 1, support 2 -> P 0,   R 0,   F1 0
    #   c: TP 1, predicted 1, support 2 -> P 1,   R 1/2, F1 2/3
    #   d: TP 0, predicted 1, support 0 -> P 0,   R 0 (no support), F1 0
    assert metrics.n_labels == 4
    assert metrics.macro_precision == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert metrics.macro_recall == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert metrics.macro_f1 == pytest.approx((0.5 + 0 + 2 / 3 + 0) / 4)


def test_never_predicted_label_has_zero_precision() -> None:
    # b is true once and never predicted: P 0, R 0. a: P 1/2, R 1.
    records = [Scored("a", ("a",), 0.9), Scored("b", ("a",), 0.1)]

    metrics = evaluate(records)

    assert metrics.macro_precision == pytest.approx((0.5 + 0) / 2)
    assert metrics.macro_recall == pytest.approx((1 + 0) / 2)
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 0) / 2)


def test_default_top_k_is_five() -> None:
    ranked = ("a", "b", "c", "d", "e", "f")
    records = [Scored("e", ranked, 0.1), Scored("f", ranked, 0.1)]

    metrics = evaluate(records)

    assert metrics.top_k == 5
    assert metrics.top_k_hit_rate == pytest.approx(0.5)  # e is 5th, f is 6th


def test_empty_input_gives_nan() -> None:
    metrics = evaluate([])

    assert metrics.n_events == 0
    assert metrics.n_labels == 0
    assert math.isnan(metrics.top1_accuracy)
    assert math.isnan(metrics.log_loss)
    assert math.isnan(metrics.macro_f1)


def test_incremental_matches_holdout() -> None:
    accumulator = MetricsAccumulator(TOP2)

    accumulator.update(FIXTURE[:2])
    after_first_batch = accumulator.result()
    accumulator.update(FIXTURE[2:])

    assert after_first_batch.n_events == 2
    assert after_first_batch.top1_accuracy == pytest.approx(0.5)
    assert accumulator.result() == evaluate(FIXTURE, TOP2)


def test_reset_forgets_events() -> None:
    accumulator = MetricsAccumulator(TOP2)
    accumulator.update(FIXTURE)

    accumulator.reset()
    accumulator.update(FIXTURE[:1])

    assert accumulator.n_events == 1
    assert accumulator.result().top1_accuracy == 1.0


def test_as_dict_has_every_field() -> None:
    as_dict = evaluate(FIXTURE, TOP2).as_dict()

    assert as_dict["n_events"] == 6
    assert as_dict["top_k"] == 2
    assert as_dict["top1_accuracy"] == pytest.approx(1 / 3)
    assert set(as_dict) == {
        "n_events",
        "top1_accuracy",
        "top_k",
        "top_k_hit_rate",
        "log_loss",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "n_labels",
    }


def test_confusion_matrix_full() -> None:
    accumulator = MetricsAccumulator(TOP2)
    accumulator.update(FIXTURE)

    matrix = accumulator.confusion_matrix()

    # Support: a 2, b 2, c 2, then (no prediction) 0 and d 0, ties by name.
    assert matrix.labels == ("a", "b", "c", NO_PREDICTION_LABEL, "d")
    assert matrix.count("a", "a") == 1
    assert matrix.count("b", "a") == 1
    assert matrix.count("c", "b") == 1
    assert matrix.count("a", NO_PREDICTION_LABEL) == 1
    assert matrix.count("b", "d") == 1
    assert matrix.count("c", "c") == 1
    assert matrix.count("a", "b") == 0
    assert sum(map(sum, matrix.counts)) == 6


def test_confusion_matrix_top_n_folds_rest() -> None:
    accumulator = MetricsAccumulator(TOP2)
    accumulator.update(FIXTURE)

    matrix = accumulator.confusion_matrix(top_n=2)

    # Kept: a and b. Folded into (other): c as a true label, and c, d and
    # (no prediction) as predicted labels.
    assert matrix.labels == ("a", "b", OTHER_LABEL)
    assert matrix.counts == (
        (1, 0, 1),  # a -> a, a -> (no prediction)
        (1, 0, 1),  # b -> a, b -> d
        (0, 1, 1),  # c -> b, c -> c
    )


def test_confusion_matrix_rejects_bad_top_n() -> None:
    accumulator = MetricsAccumulator()

    with pytest.raises(ValueError, match="top_n must be None or at least 1, got 0"):
        accumulator.confusion_matrix(top_n=0)


def test_confusion_matrix_unknown_label() -> None:
    accumulator = MetricsAccumulator()
    accumulator.update(FIXTURE)

    with pytest.raises(KeyError, match="true_label 'zz' is not in"):
        accumulator.confusion_matrix().count("zz", "a")


@pytest.mark.parametrize("probability", [-0.1, 1.5, math.nan])
def test_invalid_probability_rejected(probability: float) -> None:
    accumulator = MetricsAccumulator()
    batch = [Scored("a", ("a",), 0.5), Scored("b", ("a",), probability, 42)]

    with pytest.raises(ValueError, match="true_label_probability must be"):
        accumulator.update(batch)

    assert accumulator.n_events == 0  # the valid first record was not counted


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"top_k": 0}, "top_k must be at least 1, got 0"),
        ({"log_loss_clip": 0.0}, "log_loss_clip must be in the open interval"),
        ({"log_loss_clip": 1.0}, "log_loss_clip must be in the open interval"),
    ],
)
def test_config_rejects_invalid(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluationConfig(**arguments)  # type: ignore[arg-type]
