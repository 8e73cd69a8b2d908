"""The record that ties a model's output to the truth for one labelled event.

The learner produces these (test-then-train on the live stream, or scoring a
holdout set) and the metrics, drift detectors and the validation gate consume
them, so none of those needs to know about tensors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scored:
    """One labelled event as the model saw it before learning from it.

    ``ranked_labels`` contains the model's top-k labels, most probable
    first (k is at least 5 where the model has 5 labels). ``true_label_probability``
    is the probability the model gave the true label. When the label was new
    to the model, it is the probability the model gave to "a label never seen"
    (the escape probability of :class:`online_model.learner.OnlineLearner`),
    or 0.0 for a model without one, which the log loss clips.
    ``event_time_ms`` is the event time in milliseconds since the Unix epoch,
    UTC.
    """

    true_label: str
    ranked_labels: tuple[str, ...]
    true_label_probability: float
    event_time_ms: int = 0

    @property
    def predicted_label(self) -> str | None:
        """The model's most probable label, or None for a model with no labels."""
        return self.ranked_labels[0] if self.ranked_labels else None
