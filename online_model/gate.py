"""The validation gate: promote a candidate model only if the holdout agrees.

The gate scores the candidate and the serving model (the champion) on the
same holdout set, compares one configured metric, and promotes the candidate
when it is no worse than the champion by more than the tolerance. The
tolerance is in the metric's own unit: nats for ``log_loss`` (lower is
better), a fraction of events for ``top1``, ``top5`` and ``macro_f1`` (higher
is better). A candidate exactly as good as the champion is promoted, because
it has learned from newer events. Without a champion, the first candidate is
promoted once the holdout is large enough.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from online_model.evaluation import EvaluationConfig, Metrics, evaluate
from online_model.scored import Scored

logger = logging.getLogger(__name__)

GateMetric = Literal["log_loss", "top1", "top5", "macro_f1"]

#: The Metrics field behind each gate metric.
METRIC_FIELDS: dict[str, str] = {
    "log_loss": "log_loss",
    "top1": "top1_accuracy",
    "top5": "top_k_hit_rate",
    "macro_f1": "macro_f1",
}
LOWER_IS_BETTER = frozenset({"log_loss"})


@runtime_checkable
class Scorer(Protocol):
    """A model that scores events without learning from them."""

    def score(self, events: Sequence[Any]) -> list[Scored]:
        """Return one Scored record per labelled event, in order."""
        ...


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The metric the gate compares, its tolerance and the holdout minimum.

    ``tolerance`` is how much worse than the champion the candidate may be,
    in the metric's unit. ``min_holdout_events`` is the number of labelled
    holdout events below which the gate rejects every candidate.
    """

    metric: GateMetric = "log_loss"
    tolerance: float = 0.0
    min_holdout_events: int = 500
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        if self.metric not in METRIC_FIELDS:
            raise ValueError(
                f"metric must be one of {sorted(METRIC_FIELDS)}, got {self.metric!r}"
            )
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0.0):
            raise ValueError(
                f"tolerance must be a finite number of at least 0, "
                f"got {self.tolerance!r}"
            )
        minimum = self.min_holdout_events
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            raise ValueError(
                f"min_holdout_events must be an int of at least 1, got {minimum!r}"
            )
        if self.metric == "top5" and self.evaluation.top_k != 5:
            raise ValueError(
                f"metric 'top5' needs evaluation.top_k 5, got {self.evaluation.top_k}"
            )


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The gate's decision and every number behind it.

    ``champion_value`` and ``champion_metrics`` are None when there was no
    champion. ``holdout_size`` counts the labelled holdout events scored.
    """

    promote: bool
    metric: str
    candidate_value: float
    champion_value: float | None
    tolerance: float
    holdout_size: int
    min_holdout_events: int
    reason: str
    candidate_metrics: Metrics
    champion_metrics: Metrics | None

    def as_dict(self) -> dict[str, Any]:
        """Return the decision as a dict, with both metric sets as nested dicts."""
        return asdict(self)


class ValidationGate:
    """A promote-or-reject check of a candidate model against the champion.

    >>> gate = ValidationGate(GateConfig(metric="top1", min_holdout_events=1))
    >>> candidate = evaluate([Scored("a", ("a",), 0.9)])
    >>> gate.decide(candidate, champion=None).promote
    True
    """

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config if config is not None else GateConfig()

    def decide(
        self,
        candidate: Scorer | Metrics,
        champion: Scorer | Metrics | None,
        holdout: Sequence[Any] | None = None,
    ) -> GateDecision:
        """Decide whether to promote the candidate, scoring on the holdout if needed.

        Each model is a Scorer, scored here on ``holdout``, or its Metrics on
        that holdout, computed earlier with the same EvaluationConfig.
        Raises ValueError when a Scorer comes without a holdout, or when the
        two models were scored on different numbers of events.
        """
        candidate_metrics = self._metrics_of("candidate", candidate, holdout)
        champion_metrics = (
            None
            if champion is None
            else self._metrics_of("champion", champion, holdout)
        )
        if (
            champion_metrics is not None
            and champion_metrics.n_events != candidate_metrics.n_events
        ):
            raise ValueError(
                f"the candidate was scored on {candidate_metrics.n_events} events "
                f"and the champion on {champion_metrics.n_events}: score both on "
                "the same holdout set"
            )

        decision = self._compare(candidate_metrics, champion_metrics)
        logger.info(
            "validation gate %s: %s",
            "promoted the candidate" if decision.promote else "rejected the candidate",
            decision.reason,
        )
        return decision

    def _metrics_of(
        self, role: str, model: Scorer | Metrics, holdout: Sequence[Any] | None
    ) -> Metrics:
        if isinstance(model, Metrics):
            if model.top_k != self.config.evaluation.top_k:
                raise ValueError(
                    f"the {role} metrics were computed with top_k {model.top_k}, "
                    f"but the gate uses top_k {self.config.evaluation.top_k}: "
                    "recompute them with the gate's EvaluationConfig"
                )
            return model
        if not isinstance(model, Scorer):
            raise TypeError(
                f"the {role} must be a Scorer (with score(events)) or Metrics, "
                f"got {type(model).__name__}"
            )
        if holdout is None:
            raise ValueError(
                f"the {role} is a Scorer, so a holdout set is required, got None"
            )
        return evaluate(model.score(holdout), self.config.evaluation)

    def _compare(self, candidate: Metrics, champion: Metrics | None) -> GateDecision:
        config = self.config
        metric = config.metric
        candidate_value = _value(candidate, metric)
        champion_value = None if champion is None else _value(champion, metric)
        size = candidate.n_events

        def decision(promote: bool, reason: str) -> GateDecision:
            return GateDecision(
                promote=promote,
                metric=metric,
                candidate_value=candidate_value,
                champion_value=champion_value,
                tolerance=config.tolerance,
                holdout_size=size,
                min_holdout_events=config.min_holdout_events,
                reason=reason,
                candidate_metrics=candidate,
                champion_metrics=champion,
            )

        if size < config.min_holdout_events:
            return decision(
                False,
                f"the holdout has {size} labelled events, below the minimum "
                f"of {config.min_holdout_events}",
            )
        if math.isnan(candidate_value):
            return decision(False, f"the candidate's {metric} is not a number")
        if champion_value is None:
            return decision(
                True,
                f"no champion yet, so the candidate is promoted with {metric} "
                f"{candidate_value:.6g} on {size} holdout events",
            )
        if math.isnan(champion_value):
            return decision(
                True,
                f"the champion's {metric} is not a number, so the candidate "
                f"with {candidate_value:.6g} is promoted",
            )

        # How much worse the candidate is, in the metric's unit: positive is worse.
        if metric in LOWER_IS_BETTER:
            shortfall = candidate_value - champion_value
        else:
            shortfall = champion_value - candidate_value
        comparison = (
            f"candidate {metric} {candidate_value:.6g}, champion "
            f"{champion_value:.6g}, on {size} holdout events"
        )
        if shortfall < 0.0:
            return decision(True, f"{comparison}: the candidate is better")
        if shortfall == 0.0:
            return decision(True, f"{comparison}: the candidate is as good")
        if shortfall <= config.tolerance:
            return decision(
                True,
                f"{comparison}: the candidate is worse by {shortfall:.6g}, within "
                f"the tolerance {config.tolerance:.6g}",
            )
        return decision(
            False,
            f"{comparison}: the candidate is worse by {shortfall:.6g}, more than "
            f"the tolerance {config.tolerance:.6g}",
        )


def _value(metrics: Metrics, metric: str) -> float:
    return float(getattr(metrics, METRIC_FIELDS[metric]))
