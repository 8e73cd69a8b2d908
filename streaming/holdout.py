"""The job's holdout window, with the work of scoring models on it shared.

Every gate scores the same window with several models: the candidate, the
serving version and the earlier versions kept for rollback. Checking and
featurizing the events does not depend on the weights, only on the feature
spec and the learner config. So the window is encoded once per state, and
every model with the same spec and config scores that encoded batch. A kept
version never learns again, so its metrics stay valid until an event enters
the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from online_model.evaluation import ConfusionMatrix, Metrics, MetricsAccumulator
from online_model.featurize import EncodedBatch
from online_model.learner import OnlineLearner

Event = dict[str, Any]
Evaluation = tuple[Metrics, ConfusionMatrix]


class HoldoutWindow:
    """The most recent held-out events, up to ``size``, oldest first.

    Change the events only through :meth:`append` and :meth:`replace`,
    because they discard the encoded batch and the kept metrics.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._events: deque[Event] = deque(maxlen=size)
        self._encoding_key: tuple[Any, Any] | None = None
        self._encoded: tuple[list[Event], EncodedBatch] | None = None
        # Metrics of models that do not change, by id(), with the model itself
        # so that an id reused by a new object cannot match.
        self._evaluations: dict[int, tuple[OnlineLearner, Evaluation]] = {}

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def append(self, event: Event) -> None:
        """Add an event, dropping the oldest when the window is full."""
        self._events.append(event)
        self._forget()

    def replace(self, events: Iterable[Event]) -> None:
        """Replace every event, as when a checkpoint is restored."""
        self._events.clear()
        self._events.extend(events)
        self._forget()

    def evaluate(self, learner: OnlineLearner, fixed: bool = False) -> Evaluation:
        """Return the metrics and confusion matrix of ``learner`` on the window.

        With ``fixed`` the caller promises that ``learner`` does not learn
        again, and its result is kept until the window changes.
        """
        if fixed:
            cached = self._evaluations.get(id(learner))
            if cached is not None and cached[0] is learner:
                return cached[1]
        labelled, encoded = self._encoding_for(learner)
        accumulator = MetricsAccumulator()
        accumulator.update(learner.score_encoded(labelled, encoded))
        evaluation = (accumulator.result(), accumulator.confusion_matrix())
        if fixed:
            self._evaluations[id(learner)] = (learner, evaluation)
        return evaluation

    def _encoding_for(self, learner: OnlineLearner) -> tuple[list[Event], EncodedBatch]:
        key = (learner.spec, learner.config)
        if self._encoded is None or key != self._encoding_key:
            self._encoded = learner.encode_for_scoring(list(self._events))
            self._encoding_key = key
        return self._encoded

    def _forget(self) -> None:
        self._encoded = None
        self._encoding_key = None
        self._evaluations.clear()
