"""The peer learners of the side-by-side benchmark, behind one interface.

Every learner scores each labelled event before it learns from it
(test-then-train) and hands back one ``Scored`` record per event. The driver
in ``peers.py`` times ``featurize`` (decoded event dict to the learner's input)
apart from ``test_then_train`` and ``finish`` (the model step).
"""

from __future__ import annotations

import abc
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from peer_features import FieldKinds, PeerFeaturizer

from online_model.featurize import EncodedBatch
from online_model.scored import Scored
from online_model.spec import FeatureSpec

logger = logging.getLogger("peers.learners")

Event = Mapping[str, Any]

# Scored records keep this many labels, enough for the top-5 hit rate.
RANKED_LABELS_KEPT = 5


def scored_from_probabilities(
    true_label: str, probabilities: Mapping[str, float]
) -> Scored:
    """Build a Scored record from a label-to-probability mapping.

    Labels with equal probability keep the mapping's order, so ties are broken
    the same way on every run.
    """
    ranked = sorted(probabilities, key=lambda label: -probabilities[label])
    return Scored(
        true_label=true_label,
        ranked_labels=tuple(ranked[:RANKED_LABELS_KEPT]),
        true_label_probability=float(probabilities.get(true_label, 0.0)),
    )


class StreamLearner(abc.ABC):
    """One learner run test-then-train over a stream of decoded events.

    ``inner_featurize_s`` is featurization time spent inside
    ``test_then_train`` by a learner that featurizes within its own update.
    """

    name: str
    inner_featurize_s: float = 0.0

    @abc.abstractmethod
    def featurize(self, events: Sequence[Event]) -> Any:
        """Turn decoded events into the learner's own input."""

    @abc.abstractmethod
    def test_then_train(self, features: Any, labels: Sequence[str]) -> list[Scored]:
        """Score each example with the current model, then learn from it."""

    def finish(self) -> list[Scored]:
        """Run deferred work and return any records not returned yet."""
        return []


class MostFrequentClasses(StreamLearner):
    """Predict the labels seen most often so far, with smoothed frequencies.

    The probability of a label is (count + 1) / (seen + known labels + 1), so a
    label never seen before keeps a small share instead of zero.
    """

    name = "most-frequent"

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._seen = 0

    def featurize(self, events: Sequence[Event]) -> None:
        return None

    def test_then_train(self, features: Any, labels: Sequence[str]) -> list[Scored]:
        records = []
        for label in labels:
            denominator = self._seen + len(self._counts) + 1
            ranked = tuple(
                name for name, _ in self._counts.most_common(RANKED_LABELS_KEPT)
            )
            records.append(
                Scored(
                    true_label=label,
                    ranked_labels=ranked,
                    true_label_probability=(self._counts[label] + 1) / denominator,
                )
            )
            self._counts[label] += 1
            self._seen += 1
        return records


class NoChange(StreamLearner):
    """Predict the previous event's label first: the no-change baseline.

    Its probability is the smoothed share of events so far whose label
    repeated the one before, (repeats + 1) / (events + 2). The rest goes to the
    other labels in proportion to their smoothed counts, as in
    :class:`MostFrequentClasses`, which also ranks them.
    """

    name = "no-change"

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._seen = 0
        self._repeats = 0
        self._previous: str | None = None

    def featurize(self, events: Sequence[Event]) -> None:
        return None

    def test_then_train(self, features: Any, labels: Sequence[str]) -> list[Scored]:
        records = []
        for label in labels:
            previous = self._previous
            repeat_share = (self._repeats + 1) / (self._seen + 2)
            if previous is None:
                repeat_share = 0.0
            others = self._seen - self._counts[previous] if previous else self._seen
            # Smoothed counts of the labels other than the previous one, and
            # one more share for a label never seen.
            denominator = others + len(self._counts) - (previous is not None) + 1
            ranked = [previous] if previous is not None else []
            ranked += [
                name
                for name, _ in self._counts.most_common(RANKED_LABELS_KEPT + 1)
                if name != previous
            ]
            if label == previous:
                probability = repeat_share
            else:
                probability = (
                    (1 - repeat_share) * (self._counts[label] + 1) / denominator
                )
            records.append(
                Scored(
                    true_label=label,
                    ranked_labels=tuple(ranked[:RANKED_LABELS_KEPT]),
                    true_label_probability=probability,
                )
            )
            self._repeats += label == previous
            self._counts[label] += 1
            self._seen += 1
            self._previous = label
        return records


class RiverLearner(StreamLearner):
    """A River classifier fed the sparse dicts of ``PeerFeaturizer``."""

    def __init__(self, name: str, model: Any, featurizer: PeerFeaturizer) -> None:
        self.name = name
        self.model = model
        self._featurizer = featurizer

    def featurize(self, events: Sequence[Event]) -> list[dict[str, float]]:
        return [self._featurizer.river_features(event) for event in events]

    def test_then_train(
        self, features: list[dict[str, float]], labels: Sequence[str]
    ) -> list[Scored]:
        records = []
        for x, label in zip(features, labels, strict=True):
            probabilities = self.model.predict_proba_one(x)
            records.append(scored_from_probabilities(label, probabilities))
            self.model.learn_one(x, label)
        return records


def _select_numeric(numeric: frozenset[str], x: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in x.items() if name in numeric}


def _drop_numeric(numeric: frozenset[str], x: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in x.items() if name not in numeric}


def _linear_pipeline(kinds: FieldKinds, classifier: Any) -> Any:
    """Scale the numeric fields from running statistics, pass indicators as is.

    River's ``compose.Select`` raises KeyError on an event that lacks a
    selected field (a null salary), so plain functions pick the fields.
    """
    from river import compose, preprocessing

    if not kinds.numeric:
        return classifier
    numeric = frozenset(kinds.numeric)
    scaled = (
        compose.FuncTransformer(partial(_select_numeric, numeric))
        | preprocessing.StandardScaler()
    )
    if not kinds.has_indicators:
        return scaled | classifier
    indicators = compose.FuncTransformer(partial(_drop_numeric, numeric))
    return compose.TransformerUnion(scaled, indicators) | classifier


def build_river_learner(
    peer: str, kinds: FieldKinds, featurizer: PeerFeaturizer, seed: int
) -> RiverLearner:
    """Build one of River's learners with its documented defaults."""
    from river import forest, linear_model, multiclass, naive_bayes, tree

    model: Any
    if peer == "river-softmax":
        model = _linear_pipeline(kinds, linear_model.SoftmaxRegression())
    elif peer == "river-ovr-logreg":
        ovr = multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        model = _linear_pipeline(kinds, ovr)
    elif peer == "river-hat":
        model = tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    elif peer == "river-arf":
        model = forest.ARFClassifier(seed=seed)
    elif peer == "river-nb":
        # Multinomial naive Bayes needs counts, so it gets the indicator
        # features only. An all-numeric stream gets Gaussian naive Bayes.
        if kinds.has_indicators:
            model = _indicators_only(kinds, naive_bayes.MultinomialNB())
        else:
            model = naive_bayes.GaussianNB()
    else:
        raise ValueError(f"unknown River peer {peer!r}")
    return RiverLearner(peer, model, featurizer)


def _indicators_only(kinds: FieldKinds, classifier: Any) -> Any:
    """Drop the numeric fields in front of ``classifier``."""
    from river import compose

    if not kinds.numeric:
        return classifier
    numeric = frozenset(kinds.numeric)
    return compose.FuncTransformer(partial(_drop_numeric, numeric)) | classifier


def vw_arguments(label_count: int, quadratic: bool) -> list[str]:
    """Return Vowpal Wabbit's options for one-against-all with probabilities.

    ``--probabilities`` needs the logistic loss. ``-q ::`` adds the products
    of every pair of namespaces, each namespace with itself included.
    """
    arguments = [
        "--oaa",
        str(label_count),
        "--probabilities",
        "--loss_function",
        "logistic",
        "--quiet",
    ]
    if quadratic:
        arguments += ["-q", "::"]
    return arguments


class VowpalWabbitBinding(StreamLearner):
    """Vowpal Wabbit through its Python binding, one example at a time.

    ``learn`` on a parsed example leaves on it the probabilities computed
    before the update, the same numbers a ``predict`` call before ``learn``
    returns (checked with vowpalwabbit 9.11.9), so one call scores and learns.
    """

    def __init__(
        self,
        name: str,
        featurizer: PeerFeaturizer,
        label_ids: Mapping[str, int],
        quadratic: bool,
    ) -> None:
        import vowpalwabbit

        self.name = name
        self._featurizer = featurizer
        self._label_ids = label_ids
        self._labels = list(label_ids)
        self._workspace = vowpalwabbit.Workspace(
            arg_list=vw_arguments(len(label_ids), quadratic)
        )
        self._prediction_type = self._workspace.get_prediction_type()

    def featurize(self, events: Sequence[Event]) -> list[str]:
        label_field = self._featurizer.kinds.label
        return [
            self._featurizer.vw_line(event, self._label_ids[event[label_field]])
            for event in events
        ]

    def test_then_train(
        self, features: list[str], labels: Sequence[str]
    ) -> list[Scored]:
        records = []
        workspace = self._workspace
        for line, label in zip(features, labels, strict=True):
            example = workspace.parse(line)
            workspace.learn(example)
            probabilities = example.get_prediction(self._prediction_type)
            workspace.finish_example(example)
            records.append(
                scored_from_probabilities(
                    label, dict(zip(self._labels, probabilities, strict=True))
                )
            )
        return records

    def finish(self) -> list[Scored]:
        self._workspace.finish()
        return []


class VowpalWabbitCommandLine(StreamLearner):
    """Vowpal Wabbit's command-line driver over a text file, in one pass.

    In a single pass VW predicts each example before it learns from it, and
    ``-p`` writes those predictions, so the pass is test-then-train. The pip
    package ships no ``vw`` executable, so ``run_driver`` does what
    ``python -m vowpalwabbit -d FILE ...`` does. It runs, in-process, the C++
    loop of the executable (``start_parser``, ``generic_driver``,
    ``end_parser``), and no example passes through Python.
    """

    def __init__(
        self,
        name: str,
        featurizer: PeerFeaturizer,
        label_ids: Mapping[str, int],
        quadratic: bool,
        work_dir: Path | None = None,
    ) -> None:
        self.name = name
        self._featurizer = featurizer
        self._label_ids = label_ids
        self._labels = list(label_ids)
        self._quadratic = quadratic
        self._directory = tempfile.TemporaryDirectory(dir=work_dir)
        self._data_path = Path(self._directory.name) / "stream.vw"
        self._predictions_path = Path(self._directory.name) / "predictions.txt"
        self._data_file = self._data_path.open("w", encoding="utf-8")
        self._true_labels: list[str] = []

    def featurize(self, events: Sequence[Event]) -> None:
        label_field = self._featurizer.kinds.label
        lines = [
            self._featurizer.vw_line(event, self._label_ids[event[label_field]])
            for event in events
        ]
        self._data_file.write("\n".join(lines) + "\n")

    def test_then_train(self, features: Any, labels: Sequence[str]) -> list[Scored]:
        self._true_labels.extend(labels)
        return []

    def run_driver(self, limit: int | None) -> tuple[float, float]:
        """Run one pass over the first ``limit`` lines, or all lines if None.

        Returns the wall and CPU seconds of the pass. Copying the first lines
        to their own file is not timed.
        """
        import vowpalwabbit

        self._data_file.close()
        data_path = self._data_path
        if limit is not None:
            data_path = self._data_path.with_suffix(".prefix.vw")
            with (
                self._data_path.open(encoding="utf-8") as source,
                data_path.open("w", encoding="utf-8") as head,
            ):
                for _, line in zip(range(limit), source, strict=False):
                    head.write(line)
        arguments = vw_arguments(len(self._labels), self._quadratic)
        arguments += ["-d", str(data_path), "-p", str(self._predictions_path)]
        cpu_started = time.process_time()
        started = time.perf_counter()
        workspace = vowpalwabbit.Workspace(arg_list=arguments)
        workspace.finish()
        return time.perf_counter() - started, time.process_time() - cpu_started

    def iter_records(self) -> Iterator[Scored]:
        """Yield the predictions of the last ``run_driver`` as Scored records."""
        with self._predictions_path.open(encoding="utf-8") as predictions:
            for line, label in zip(predictions, self._true_labels, strict=False):
                probabilities = {}
                for pair in line.split():
                    class_id, probability = pair.split(":")
                    probabilities[self._labels[int(class_id) - 1]] = float(probability)
                yield scored_from_probabilities(label, probabilities)

    def cleanup(self) -> None:
        """Delete the data and predictions files."""
        self._directory.cleanup()


def label_ids_in_order_of_appearance(
    events: Sequence[Event], label_field: str
) -> dict[str, int]:
    """Number the labels 1..K by first appearance in the whole stream.

    Vowpal Wabbit's ``--oaa K`` needs K before the first example, so the
    benchmark reads the label count up front, which a live stream cannot do.
    """
    label_ids: dict[str, int] = {}
    for event in events:
        label = event[label_field]
        if label not in label_ids:
            label_ids[label] = len(label_ids) + 1
    return label_ids


class StreamlearnLearner(StreamLearner):
    """streamlearn's ``OnlineLearner`` with its default configuration, on the CPU.

    ``learn`` featurizes inside, so the time spent in the learner's
    ``featurizer.encode`` (event dicts to ids and numbers) is measured there
    and reported as featurization. Event validation, token hashing, scoring
    and the update count as the model step.
    """

    name = "streamlearn"

    def __init__(self, spec: FeatureSpec, seed: int) -> None:
        from online_model.learner import OnlineLearner

        self.learner = OnlineLearner(spec, seed=seed, device="cpu")
        self.inner_featurize_s = 0.0
        self.rejected_events = 0
        encode = self.learner.featurizer.encode

        def timed_encode(events: Sequence[Mapping[str, Any]]) -> EncodedBatch:
            started = time.perf_counter()
            encoded = encode(events)
            self.inner_featurize_s += time.perf_counter() - started
            return encoded

        # An instance attribute shadows the method for this learner only.
        self.learner.featurizer.encode = timed_encode  # type: ignore[method-assign]

    def featurize(self, events: Sequence[Event]) -> Sequence[Event]:
        return events

    def test_then_train(
        self, features: Sequence[Event], labels: Sequence[str]
    ) -> list[Scored]:
        report = self.learner.learn(features)
        records = list(report.scored)
        if len(records) < len(labels):
            # The peers score every event, so an event the learner rejected
            # counts as a miss with probability 0. Within a micro-batch only
            # the rejected events' labels matter, not their order.
            missing = Counter(labels) - Counter(r.true_label for r in records)
            for label in missing.elements():
                records.append(Scored(label, (), 0.0))
            self.rejected_events += missing.total()
            logger.warning(
                "streamlearn rejected %d of %d events of a micro-batch: %s",
                missing.total(),
                len(labels),
                dict(report.invalid),
            )
        return records
