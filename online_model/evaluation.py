"""Classification metrics over Scored records: prequential and holdout.

Both paths share one accumulator, so the online metric and the holdout metric
cannot disagree on a definition:

- top-1 accuracy: the share of events whose most probable label is the true one;
- top-k hit rate: the share of events whose true label is among the first k
  ranked labels (k is ``EvaluationConfig.top_k``, 5 by default);
- log loss: the mean of ``-ln(p)`` over events, where ``p`` is the probability
  the model gave the true label, clipped to ``[log_loss_clip, 1]`` so a label
  the model gave probability 0 (such as a label new to a model without an
  escape probability) costs ``-ln(log_loss_clip)``, about 34.5 for the
  default 1e-15, instead of infinity;
- macro precision, recall and F1 over the top-1 predictions, averaged over every
  label seen as a true label or as a top-1 prediction. A label never predicted
  has precision 0, a label predicted but never true has recall 0, and F1 is 0
  when precision and recall are both 0 (scikit-learn's ``zero_division=0``).
  Macro F1 is the mean of the per-label F1 scores, not the harmonic mean of
  macro precision and macro recall.

An event scored by a model that has no labels yet (empty ``ranked_labels``)
is a miss for every metric and a false negative for its true label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from online_model.scored import Scored

#: Column of the confusion matrix for events scored by a model with no labels.
NO_PREDICTION_LABEL = "(no prediction)"
#: Row and column that collect the labels left out of a top-N confusion matrix.
OTHER_LABEL = "(other)"


@dataclass(frozen=True, slots=True)
class EvaluationConfig:
    """Settings shared by the prequential and the holdout metrics."""

    top_k: int = 5
    log_loss_clip: float = 1e-15

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise TypeError(f"top_k must be an int, got {self.top_k!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if not 0.0 < self.log_loss_clip < 1.0:
            raise ValueError(
                "log_loss_clip must be in the open interval (0, 1), "
                f"got {self.log_loss_clip!r}"
            )


@dataclass(frozen=True, slots=True)
class Metrics:
    """Classification metrics over a set of scored events.

    Every rate and the log loss are NaN when ``n_events`` is 0. ``n_labels``
    is the number of labels the macro scores average over: those that
    occurred or were predicted in these events.
    """

    n_events: int
    top1_accuracy: float
    top_k: int
    top_k_hit_rate: float
    log_loss: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    n_labels: int

    def as_dict(self) -> dict[str, float | int]:
        """Return the metrics as a flat dict keyed by field name."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ConfusionMatrix:
    """Counts of (true label, top-1 predicted label) pairs.

    ``counts[i][j]`` is the number of events whose true label is ``labels[i]``
    and whose predicted label is ``labels[j]``. Rows are true labels and
    columns are predicted labels, in the same order.
    """

    labels: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]

    def count(self, true_label: str, predicted_label: str) -> int:
        """Return the count in the cell of one true and one predicted label."""
        row = self._index(true_label, "true_label")
        column = self._index(predicted_label, "predicted_label")
        return self.counts[row][column]

    def _index(self, label: str, argument: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(
                f"{argument} {label!r} is not in the confusion matrix, "
                f"which has the labels {list(self.labels)}"
            ) from None


class MetricsAccumulator:
    """Incremental metrics: update per micro-batch, read at any time.

    An update costs O(batch size) and ``result()`` costs O(number of labels),
    so the prequential loop can read the metrics after every micro-batch.

    >>> accumulator = MetricsAccumulator()
    >>> accumulator.update([Scored("a", ("a", "b"), 0.5), Scored("b", ("a",), 0.25)])
    >>> accumulator.result().top1_accuracy
    0.5
    """

    def __init__(self, config: EvaluationConfig | None = None) -> None:
        self.config = config if config is not None else EvaluationConfig()
        self.reset()

    def reset(self) -> None:
        """Forget every event seen so far."""
        self._n_events = 0
        self._n_top1_correct = 0
        self._n_top_k_hits = 0
        self._log_loss_sum = 0.0
        self._pair_counts: Counter[tuple[str, str]] = Counter()

    @property
    def n_events(self) -> int:
        """Number of events seen since construction or the last reset."""
        return self._n_events

    def update(self, micro_batch: Iterable[Scored]) -> None:
        """Add the events of one micro-batch to the running totals.

        Raises ValueError, before changing any total, when a record's
        ``true_label_probability`` is not a number in [0, 1].
        """
        records = list(micro_batch)
        for record in records:
            validate_probability(record)

        top_k = self.config.top_k
        for record in records:
            predicted = record.predicted_label
            if predicted == record.true_label:
                self._n_top1_correct += 1
            if record.true_label in record.ranked_labels[:top_k]:
                self._n_top_k_hits += 1
            self._log_loss_sum += self.event_log_loss(record)
            key = predicted if predicted is not None else NO_PREDICTION_LABEL
            self._pair_counts[(record.true_label, key)] += 1
        self._n_events += len(records)

    def event_log_loss(self, record: Scored) -> float:
        """Return one event's log loss, with the configured clip applied."""
        probability = max(record.true_label_probability, self.config.log_loss_clip)
        return -math.log(probability)

    def result(self) -> Metrics:
        """Return the metrics over every event seen so far."""
        n = self._n_events
        precision, recall, f1, n_labels = self._macro_scores()
        if n == 0:
            return Metrics(
                n_events=0,
                top1_accuracy=math.nan,
                top_k=self.config.top_k,
                top_k_hit_rate=math.nan,
                log_loss=math.nan,
                macro_precision=math.nan,
                macro_recall=math.nan,
                macro_f1=math.nan,
                n_labels=0,
            )
        return Metrics(
            n_events=n,
            top1_accuracy=self._n_top1_correct / n,
            top_k=self.config.top_k,
            top_k_hit_rate=self._n_top_k_hits / n,
            log_loss=self._log_loss_sum / n,
            macro_precision=precision,
            macro_recall=recall,
            macro_f1=f1,
            n_labels=n_labels,
        )

    def confusion_matrix(self, top_n: int | None = None) -> ConfusionMatrix:
        """Return the confusion matrix, optionally cut to the top_n labels.

        Labels are ordered by their number of true events, most first, with
        ties broken by label name. With ``top_n``, the matrix keeps the first
        ``top_n`` labels in that order and sums every other label into a last
        ``OTHER_LABEL`` row and column, so the total count is kept.
        """
        if top_n is not None and (isinstance(top_n, bool) or top_n < 1):
            raise ValueError(f"top_n must be None or at least 1, got {top_n!r}")

        support: Counter[str] = Counter()
        all_labels: set[str] = set()
        for (true_label, predicted), count in self._pair_counts.items():
            support[true_label] += count
            all_labels.update((true_label, predicted))

        by_support = sorted(all_labels, key=lambda label: (-support[label], label))
        if top_n is None or top_n >= len(by_support):
            labels = tuple(by_support)
        else:
            labels = (*by_support[:top_n], OTHER_LABEL)

        position = {label: index for index, label in enumerate(labels)}
        cells = [[0] * len(labels) for _ in labels]
        for (true_label, predicted), count in self._pair_counts.items():
            row = position.get(true_label, position.get(OTHER_LABEL, -1))
            column = position.get(predicted, position.get(OTHER_LABEL, -1))
            cells[row][column] += count
        return ConfusionMatrix(labels, tuple(tuple(row) for row in cells))

    def _macro_scores(self) -> tuple[float, float, float, int]:
        """Return macro precision, recall, F1 and the number of labels averaged."""
        true_positives: Counter[str] = Counter()
        predicted_count: Counter[str] = Counter()
        support: Counter[str] = Counter()
        for (true_label, predicted), count in self._pair_counts.items():
            support[true_label] += count
            if predicted == NO_PREDICTION_LABEL:
                continue
            predicted_count[predicted] += count
            if predicted == true_label:
                true_positives[true_label] += count

        labels = set(support) | set(predicted_count)
        if not labels:
            return math.nan, math.nan, math.nan, 0

        precision_sum = recall_sum = f1_sum = 0.0
        for label in labels:
            hits = true_positives[label]
            precision = hits / predicted_count[label] if predicted_count[label] else 0.0
            recall = hits / support[label] if support[label] else 0.0
            both = precision + recall
            precision_sum += precision
            recall_sum += recall
            f1_sum += 2 * precision * recall / both if both else 0.0
        n_labels = len(labels)
        return (
            precision_sum / n_labels,
            recall_sum / n_labels,
            f1_sum / n_labels,
            n_labels,
        )


def evaluate(
    scored: Iterable[Scored], config: EvaluationConfig | None = None
) -> Metrics:
    """Compute the metrics over a fixed set of scored events, such as a holdout set."""
    accumulator = MetricsAccumulator(config)
    accumulator.update(scored)
    return accumulator.result()


def validate_probability(record: Scored) -> None:
    """Raise ValueError unless the record's true-label probability is in [0, 1]."""
    probability = record.true_label_probability
    if not (isinstance(probability, int | float) and 0.0 <= probability <= 1.0):
        raise ValueError(
            f"true_label_probability must be a number in [0, 1], got "
            f"{probability!r} for the event with true_label "
            f"{record.true_label!r} at event_time_ms {record.event_time_ms}"
        )
