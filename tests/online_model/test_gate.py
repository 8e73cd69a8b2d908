import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import pytest

from online_model.evaluation import EvaluationConfig, evaluate
from online_model.gate import GateConfig, GateDecision, ValidationGate
from online_model.scored import Scored

HOLDOUT = ["event-1", "event-2", "event-3", "event-4"]

# Candidate: top-1 right on 3 of 4 (0.75). Log loss (3 ln 2 + ln 4) / 4
# = 5 ln 2 / 4 = 0.8664. Macro F1: a has P 2/3, R 1, F1 0.8 and b has P 1,
# R 1/2, F1 2/3, so (0.8 + 2/3) / 2 = 0.7333.
CANDIDATE_RECORDS = [
    Scored("a", ("a", "b"), 0.5),
    Scored("a", ("a", "b"), 0.5),
    Scored("b", ("b", "a"), 0.5),
    Scored("b", ("a", "b"), 0.25),
]
# Champion: predicts a every time, so top-1 2 of 4 (0.5) and log loss ln 4
# = 1.3863. Macro F1: a has P 1/2, R 1, F1 2/3 and b has F1 0, so 1/3.
CHAMPION_RECORDS = [
    Scored("a", ("a", "b"), 0.25),
    Scored("a", ("a", "b"), 0.25),
    Scored("b", ("a", "b"), 0.25),
    Scored("b", ("a", "b"), 0.25),
]


class FixedScorer:
    """A fake model that returns the same records for any events."""

    def __init__(self, records: list[Scored]) -> None:
        self.records = records
        self.scored_events: list[Any] = []

    def score(self, events: Sequence[Any]) -> list[Scored]:
        self.scored_events.extend(events)
        return list(self.records)


def decide(
    candidate_records: list[Scored],
    champion_records: list[Scored] | None,
    **config: Any,
) -> GateDecision:
    gate = ValidationGate(GateConfig(min_holdout_events=4, **config))
    champion = None if champion_records is None else FixedScorer(champion_records)
    return gate.decide(FixedScorer(candidate_records), champion, HOLDOUT)


def test_log_loss_better_candidate_promoted() -> None:
    decision = decide(CANDIDATE_RECORDS, CHAMPION_RECORDS)

    assert decision.promote is True
    assert decision.metric == "log_loss"
    assert decision.candidate_value == pytest.approx(5 * math.log(2) / 4)
    assert decision.champion_value == pytest.approx(math.log(4))
    assert decision.holdout_size == 4
    assert "the candidate is better" in decision.reason


@pytest.mark.parametrize(
    ("tolerance", "promote"),
    [(0.0, False), (0.5, False), (0.52, True)],
)
def test_log_loss_tolerance_decides(tolerance: float, promote: bool) -> None:
    # Swapped roles: the candidate is worse by ln 4 - 5 ln 2 / 4 = 0.75 ln 2
    # = 0.5199 nats.
    decision = decide(CHAMPION_RECORDS, CANDIDATE_RECORDS, tolerance=tolerance)

    assert decision.promote is promote
    assert decision.tolerance == tolerance
    assert "worse by 0.51986," in decision.reason


@pytest.mark.parametrize(
    ("tolerance", "promote"),
    [(0.2, False), (0.25, True)],
)
def test_top1_tolerance_decides(tolerance: float, promote: bool) -> None:
    # Candidate 0.5, champion 0.75: worse by exactly 0.25.
    decision = decide(
        CHAMPION_RECORDS, CANDIDATE_RECORDS, metric="top1", tolerance=tolerance
    )

    assert decision.promote is promote
    assert decision.candidate_value == 0.5
    assert decision.champion_value == 0.75


def test_macro_f1_compared_by_hand() -> None:
    decision = decide(CANDIDATE_RECORDS, CHAMPION_RECORDS, metric="macro_f1")

    assert decision.promote is True
    assert decision.candidate_value == pytest.approx((0.8 + 2 / 3) / 2)
    assert decision.champion_value == pytest.approx(1 / 3)


def test_top5_tie_promotes() -> None:
    # Every true label is among the ranked labels for both models: 1.0 each.
    decision = decide(CANDIDATE_RECORDS, CHAMPION_RECORDS, metric="top5")

    assert decision.promote is True
    assert decision.candidate_value == 1.0
    assert decision.champion_value == 1.0
    assert "the candidate is as good" in decision.reason


def test_no_champion_promotes_candidate() -> None:
    decision = decide(CHAMPION_RECORDS, None)

    assert decision.promote is True
    assert decision.champion_value is None
    assert decision.champion_metrics is None
    assert decision.reason.startswith("no champion yet")


@pytest.mark.parametrize("champion_records", [None, CHAMPION_RECORDS])
def test_small_holdout_rejects(champion_records: list[Scored] | None) -> None:
    gate = ValidationGate(GateConfig(min_holdout_events=5))

    champion = None if champion_records is None else FixedScorer(champion_records)
    decision = gate.decide(FixedScorer(CANDIDATE_RECORDS), champion, HOLDOUT)

    assert decision.promote is False
    assert decision.holdout_size == 4
    assert decision.min_holdout_events == 5
    assert "4 labelled events, below the minimum of 5" in decision.reason


def test_scorers_receive_holdout() -> None:
    candidate = FixedScorer(CANDIDATE_RECORDS)
    champion = FixedScorer(CHAMPION_RECORDS)

    ValidationGate(GateConfig(min_holdout_events=4)).decide(
        candidate, champion, HOLDOUT
    )

    assert candidate.scored_events == HOLDOUT
    assert champion.scored_events == HOLDOUT


def test_precomputed_metrics_give_same_decision() -> None:
    gate = ValidationGate(GateConfig(min_holdout_events=4))

    from_metrics = gate.decide(evaluate(CANDIDATE_RECORDS), evaluate(CHAMPION_RECORDS))
    from_scorers = decide(CANDIDATE_RECORDS, CHAMPION_RECORDS)

    assert from_metrics == from_scorers


def test_decision_keeps_both_metric_sets() -> None:
    decision = decide(CANDIDATE_RECORDS, CHAMPION_RECORDS)

    assert decision.candidate_metrics == evaluate(CANDIDATE_RECORDS)
    assert decision.champion_metrics == evaluate(CHAMPION_RECORDS)
    as_dict = decision.as_dict()
    assert as_dict["promote"] is True
    assert as_dict["candidate_metrics"]["top1_accuracy"] == 0.75
    assert as_dict["champion_metrics"]["top1_accuracy"] == 0.5


def test_nan_candidate_value_rejects() -> None:
    nan_metrics = dataclasses.replace(evaluate(CANDIDATE_RECORDS), log_loss=math.nan)
    gate = ValidationGate(GateConfig(min_holdout_events=4))

    decision = gate.decide(nan_metrics, evaluate(CHAMPION_RECORDS))

    assert decision.promote is False
    assert decision.reason == "the candidate's log_loss is not a number"


def test_different_holdout_sizes_raise() -> None:
    gate = ValidationGate(GateConfig(min_holdout_events=1))

    with pytest.raises(ValueError, match="scored on 4 events and the champion on 3"):
        gate.decide(evaluate(CANDIDATE_RECORDS), evaluate(CHAMPION_RECORDS[:3]))


def test_scorer_without_holdout_raises() -> None:
    gate = ValidationGate()

    with pytest.raises(ValueError, match="candidate is a Scorer, so a holdout"):
        gate.decide(FixedScorer(CANDIDATE_RECORDS), None)


def test_other_model_type_raises() -> None:
    gate = ValidationGate()

    with pytest.raises(
        TypeError,
        match=r"must be a Scorer \(with score\(events\)\) or Metrics, got str",
    ):
        gate.decide("model-v3", None, HOLDOUT)  # type: ignore[arg-type]


def test_metrics_with_other_top_k_raise() -> None:
    gate = ValidationGate()
    top2_metrics = evaluate(CANDIDATE_RECORDS, EvaluationConfig(top_k=2))

    with pytest.raises(ValueError, match="computed with top_k 2, but the gate uses"):
        gate.decide(top2_metrics, None)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"metric": "auc"}, "metric must be one of"),
        ({"tolerance": -0.1}, "tolerance must be a finite number of at least 0"),
        ({"tolerance": math.inf}, "tolerance must be a finite number"),
        ({"min_holdout_events": 0}, "min_holdout_events must be an int of at least"),
        (
            {"metric": "top5", "evaluation": EvaluationConfig(top_k=3)},
            "metric 'top5' needs evaluation.top_k 5, got 3",
        ),
    ],
)
def test_config_rejects_invalid(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig(**arguments)
