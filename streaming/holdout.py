"""The job's holdout window, with the work of scoring models on it shared.

Every gate scores the same window with several models: the candidate, the
serving version and the earlier versions kept for rollback. Checking and
featurizing the events does not depend on the weights, only on the feature
spec and the learner config. So each event is encoded once, in the chunk of
events that arrived between two evaluations, and every model with the same
spec and config scores those chunks. A kept version never learns again, so
its scores of a chunk stay valid for as long as the chunk is in the window:
between gates only the new chunk is scored with it.

A chunk is scored as one batch. The score of an event can differ in the last
float bit with the size of its batch (seen with batches of one event), so
the metrics equal those of :meth:`OnlineLearner.score` on the whole window
up to that rounding.
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from online_model.evaluation import ConfusionMatrix, Metrics, MetricsAccumulator
from online_model.featurize import EncodedBatch
from online_model.learner import OnlineLearner
from online_model.scored import Scored

Event = dict[str, Any]
Evaluation = tuple[Metrics, ConfusionMatrix]

# More chunks than this are encoded again as one, so that a window filled
# between many small evaluations is not scored in many small batches.
MAX_CHUNKS = 8


@dataclass
class _Chunk:
    """Events that entered the window together, encoded once.

    ``positions`` are the window positions (counted since the window was
    last replaced) of the events that passed the checks, in order, one per
    entry of ``labelled``.
    """

    start: int
    end: int
    labelled: list[Event]
    positions: list[int]
    encoded: EncodedBatch


@dataclass
class _FixedScores:
    """The scores of one model that does not learn, by chunk start and end.

    The model is referenced weakly, so that the window does not keep a
    version alive after the job dropped it.
    """

    learner: weakref.ref[OnlineLearner]
    by_chunk: dict[tuple[int, int], list[Scored]] = field(default_factory=dict)
    evaluation: Evaluation | None = None


class HoldoutWindow:
    """The most recent held-out events, up to ``size``, oldest first.

    Change the events only through :meth:`append` and :meth:`replace`. An
    event whose ``id_field`` value is already in the window is not added,
    because :meth:`OnlineLearner.score` counts only the first of the events
    with one id. Scores of models evaluated with ``fixed=True`` are kept for
    up to ``kept_models`` models, the least recently evaluated forgotten
    first.
    """

    def __init__(
        self, size: int, kept_models: int = 8, id_field: str = "event_id"
    ) -> None:
        self.size = size
        self.kept_models = kept_models
        self.id_field = id_field
        self._events: deque[Event] = deque(maxlen=size)
        self._ids: set[Any] = set()
        # Window position of the next event appended; the oldest event in the
        # window is at _next - len(_events).
        self._next = 0
        self._encoding_key: tuple[Any, Any] | None = None
        self._chunks: list[_Chunk] = []
        # By id(), with a weak reference to the model, so that an id reused
        # by a new object cannot match.
        self._fixed: OrderedDict[int, _FixedScores] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def append(self, event: Event) -> bool:
        """Add an event, dropping the oldest when the window is full.

        Return False, and leave the window as it was, when the event's id is
        in the window already.
        """
        key = self._id_of(event)
        if key is not None and key in self._ids:
            return False
        if len(self._events) == self.size and self._events:
            self._ids.discard(self._id_of(self._events[0]))
        self._events.append(event)
        if key is not None:
            self._ids.add(key)
        self._next += 1
        for scores in self._fixed.values():
            scores.evaluation = None
        return True

    def replace(self, events: Iterable[Event]) -> None:
        """Replace every event, as when a checkpoint is restored."""
        self._events.clear()
        self._ids.clear()
        self._next = 0
        self._chunks = []
        self._fixed.clear()
        for event in events:
            self.append(event)

    def evaluate(self, learner: OnlineLearner, fixed: bool = False) -> Evaluation:
        """Return the metrics and confusion matrix of ``learner`` on the window.

        With ``fixed`` the caller promises that ``learner`` does not learn
        again, and its scores are kept for the events still in the window.
        """
        cached = self._fixed_scores(learner) if fixed else None
        if cached is not None and cached.evaluation is not None:
            return cached.evaluation
        first = self._next - len(self._events)
        accumulator = MetricsAccumulator()
        for chunk in self._chunks_for(learner):
            span = (chunk.start, chunk.end)
            scored = None if cached is None else cached.by_chunk.get(span)
            if scored is None:
                scored = learner.score_encoded(chunk.labelled, chunk.encoded)
                if cached is not None:
                    cached.by_chunk[span] = scored
            # Events of the chunk that have left the window are not counted.
            accumulator.update(scored[bisect.bisect_left(chunk.positions, first) :])
        evaluation = (accumulator.result(), accumulator.confusion_matrix())
        if cached is not None:
            cached.evaluation = evaluation
        return evaluation

    def _id_of(self, event: Event) -> Any:
        """Return the event's id, or None when it has none that can be hashed."""
        try:
            key = event.get(self.id_field)
            hash(key)
        except (AttributeError, TypeError):
            return None
        return key

    def _fixed_scores(self, learner: OnlineLearner) -> _FixedScores:
        scores = self._fixed.get(id(learner))
        if scores is None or scores.learner() is not learner:
            scores = _FixedScores(weakref.ref(learner))
            self._fixed[id(learner)] = scores
        self._fixed.move_to_end(id(learner))
        while len(self._fixed) > self.kept_models:
            self._fixed.popitem(last=False)
        return scores

    def _chunks_for(self, learner: OnlineLearner) -> list[_Chunk]:
        """Return the chunks that cover the window, encoded for ``learner``."""
        first = self._next - len(self._events)
        key = (learner.spec, learner.config)
        if key != self._encoding_key:
            self._encoding_key = key
            self._chunks = []
        self._chunks = [c for c in self._chunks if c.end > first]
        encoded_to = self._chunks[-1].end if self._chunks else first
        if encoded_to < self._next and len(self._chunks) >= MAX_CHUNKS:
            self._chunks = []
            encoded_to = first
        if encoded_to < self._next:
            self._chunks.append(self._encode(learner, encoded_to))
        live = {(c.start, c.end) for c in self._chunks}
        for scores in self._fixed.values():
            for span in [s for s in scores.by_chunk if s not in live]:
                del scores.by_chunk[span]
        return self._chunks

    def _encode(self, learner: OnlineLearner, start: int) -> _Chunk:
        """Encode the events from window position ``start`` to the newest."""
        first = self._next - len(self._events)
        events = list(itertools.islice(self._events, start - first, None))
        labelled, encoded = learner.encode_for_scoring(events)
        # The checks keep the order and drop some events, so the events that
        # passed are matched to their positions by identity.
        positions: list[int] = []
        remaining = iter(enumerate(events, start))
        for event in labelled:
            for position, candidate in remaining:
                if candidate is event:
                    positions.append(position)
                    break
        return _Chunk(start, self._next, labelled, positions, encoded)
