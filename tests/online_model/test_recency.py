"""Label recency: the event-by-event label frequencies mixed into scores."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
import safetensors.torch
import torch

from online_model import recency
from online_model.learner import (
    STATE_FILE,
    TENSORS_FILE,
    LearnerConfig,
    LearnerStateError,
    OnlineLearner,
)
from online_model.recency import LabelRecency
from online_model.spec import load_spec

SMALL_CONFIG = LearnerConfig(hash_bits=10, embedding_dim=8, hidden_units=8)


def reference_sequence(
    recency_state: LabelRecency,
    model: torch.Tensor,
    targets: list[int],
    escapes: list[float],
) -> torch.Tensor:
    """The same mixture as LabelRecency.mix_sequence, one event at a time."""
    labels = max(model.shape[1], max(targets) + 1)
    pairs = [(r, s) for r in recency.RATES for s in recency.SHARES]
    frequencies = torch.zeros(len(recency.RATES), labels, dtype=torch.float64)
    frequencies[:, : recency_state.frequencies.shape[1]] = recency_state.frequencies
    log_weights = recency_state.log_weights.clone()
    known = model.shape[1]
    rows = []
    for event, target in enumerate(targets):
        remaining = 1.0 - escapes[event]
        recent = []
        for index in range(len(recency.RATES)):
            total = float(frequencies[index].sum())
            row = frequencies[index] / total if total > 0 else frequencies[index] * 0
            recent.append(row)
        model_row = torch.zeros(labels, dtype=torch.float64)
        if known:
            model_row[:known] = model[event].double()
            recent = [r if r.sum() > 0 else model_row / remaining for r in recent]
        else:
            model_row = remaining * recent[0]
        weights = torch.softmax(log_weights, dim=0)
        mixed = torch.zeros(labels, dtype=torch.float64)
        for weight, (rate, share) in zip(weights.tolist(), pairs, strict=True):
            rate_row = recent[recency.RATES.index(rate)]
            mixed += weight * ((1 - share) * model_row + share * remaining * rate_row)
        rows.append(mixed)
        scores = torch.zeros(len(pairs), dtype=torch.float64)
        if target < known:
            for position, (rate, share) in enumerate(pairs):
                rate_row = recent[recency.RATES.index(rate)]
                p = (1 - share) * model_row[target] + share * remaining * rate_row[
                    target
                ]
                scores[position] = math.log(max(float(p), recency.FLOOR))
        log_weights = recency.DISCOUNT * log_weights + scores
        for index, rate in enumerate(recency.RATES):
            frequencies[index] *= 1 - rate
            frequencies[index, target] += rate
    return torch.stack(rows)


def random_model(events: int, labels: int, escape: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(events, labels, generator=generator, dtype=torch.float64)
    return torch.softmax(logits, dim=1) * (1 - escape)


@pytest.mark.parametrize("labels", [6, recency.SPARSE_FROM_LABELS + 24])
@pytest.mark.parametrize("carried", [True, False])
def test_sequence_matches_the_event_by_event_reference(
    labels: int, carried: bool
) -> None:
    # 700 events cross two chunk boundaries, and the last two labels are new
    # in the batch, unknown to the model. With many labels and a carried
    # state, every chunk takes the sparse form. Without a carried state the
    # first chunk is dense, because its rates have seen no label yet.
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(0, labels, (700,), generator=generator).tolist()
    known = labels - 2
    model = random_model(700, known, 0.1, seed=2)
    escapes = [0.1] * 700
    state = LabelRecency()
    state.resize(known)
    if carried:
        state.frequencies[:, 1] = 1.0
    expected = reference_sequence(state, model, targets, escapes)
    got = state.mix_sequence(
        model, torch.tensor(targets), torch.tensor(escapes, dtype=torch.float64)
    )
    assert got.shape == (700, labels)
    assert torch.allclose(got, expected, atol=1e-12)


def test_many_labels_skip_dense_form(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = recency.SPARSE_FROM_LABELS
    state = LabelRecency()
    state.resize(labels)
    state.frequencies[:, 0] = 1.0
    calls: list[int] = []
    dense = LabelRecency._dense_chunk

    def counted(self: LabelRecency, *arguments: Any) -> torch.Tensor:
        calls.append(len(arguments[1]))
        return dense(self, *arguments)

    monkeypatch.setattr(LabelRecency, "_dense_chunk", counted)
    targets = torch.randint(0, labels, (300,), generator=torch.Generator())
    escapes = torch.full((300,), 0.1, dtype=torch.float64)
    state.mix_sequence(random_model(300, labels, 0.1, seed=7), targets, escapes)
    assert calls == []

    fewer = LabelRecency()
    fewer.resize(labels - 1)
    fewer.frequencies[:, 0] = 1.0
    fewer.mix_sequence(
        random_model(300, labels - 1, 0.1, seed=7), targets % (labels - 1), escapes
    )
    assert calls == [256, 44]


def test_tiny_frequencies_stay_finite() -> None:
    # Sums below FLOOR come only from a damaged state; the sparse form would
    # divide by them.
    labels = recency.SPARSE_FROM_LABELS + 4
    state = LabelRecency()
    state.resize(labels)
    state.frequencies[:, 0] = 5e-324
    targets = torch.randint(0, labels, (50,), generator=torch.Generator())
    escapes = torch.full((50,), 0.1, dtype=torch.float64)

    rows = state.mix_sequence(random_model(50, labels, 0.1, seed=8), targets, escapes)

    assert bool(torch.isfinite(rows).all())
    # The first event's recency rows are floored to almost nothing; from the
    # second on, the first label fills them.
    assert float(rows[0].sum()) <= 0.9
    assert torch.allclose(rows[1:].sum(dim=1), torch.full((49,), 0.9).double())


def test_sequence_ignores_later_labels() -> None:
    model = random_model(50, 3, 0.05, seed=3)
    escapes = torch.full((50,), 0.05, dtype=torch.float64)
    targets = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(4))
    changed = targets.clone()
    changed[30:] = (changed[30:] + 1) % 3
    first = LabelRecency().mix_sequence(model, targets, escapes)
    second = LabelRecency().mix_sequence(model, changed, escapes)
    assert torch.equal(first[:31], second[:31])
    assert not torch.equal(first[31:], second[31:])


def test_rows_sum_to_one_minus_escape() -> None:
    state = LabelRecency()
    model = random_model(40, 3, 0.2, seed=5)
    escapes = torch.full((40,), 0.2, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2] * 13 + [0])
    rows = state.mix_sequence(model, targets, escapes)
    # Before any label, the frequencies leave their share to the model.
    assert torch.allclose(rows.sum(dim=1), torch.full((40,), 0.8, dtype=torch.float64))
    later = state.mix(random_model(5, 3, 0.2, seed=6), 0.2)
    assert torch.allclose(later.sum(dim=1), torch.full((5,), 0.8, dtype=torch.float64))


def test_weights_follow_the_better_expert() -> None:
    uninformative = torch.full((2000, 2), 0.5, dtype=torch.float64)
    escapes = torch.zeros(2000, dtype=torch.float64)
    runs = torch.tensor(([0] * 20 + [1] * 20) * 50)
    on_runs = LabelRecency()
    on_runs.resize(2)
    on_runs.mix_sequence(uninformative, runs, escapes)

    sharp = torch.tensor([[0.99, 0.01]], dtype=torch.float64).repeat(2000, 1)
    alternating = torch.tensor([0, 1] * 1000)
    # The model is right on even events only, but recency is wrong on all.
    sharp[1::2] = torch.tensor([0.01, 0.99], dtype=torch.float64)
    on_alternation = LabelRecency()
    on_alternation.resize(2)
    on_alternation.mix_sequence(sharp, alternating, escapes)

    def recency_share(state: LabelRecency) -> float:
        weights = torch.softmax(state.log_weights, dim=0)
        shares = torch.tensor(
            [share for _ in recency.RATES for share in recency.SHARES],
            dtype=torch.float64,
        )
        return float(weights @ shares)

    assert recency_share(on_runs) > 0.8
    assert recency_share(on_alternation) < 0.05


def run_event(number: int, label: str) -> dict[str, Any]:
    return {
        "event_id": f"e{number}",
        "event_time": number,
        "day": "2",
        "period": 0.5,
        "nswdemand": 0.4,
        "vicprice": 0.003,
        "vicdemand": 0.4,
        "transfer": 0.4,
        "class": label,
    }


@pytest.mark.parametrize("label_recency", [False, True])
def test_learner_label_runs(label_recency: bool) -> None:
    # Identical features, labels in runs of 16: only recency can tell them apart.
    events = [run_event(i, "UP" if (i // 16) % 2 else "DOWN") for i in range(2048)]
    config = dataclasses.replace(SMALL_CONFIG, label_recency=label_recency)
    learner = OnlineLearner(load_spec("electricity"), config, seed=0, device="cpu")
    hits = 0
    for start in range(0, len(events), 256):
        report = learner.learn(events[start : start + 256])
        if start >= 512:
            hits += sum(s.predicted_label == s.true_label for s in report.scored)
    accuracy = hits / (len(events) - 512)
    if label_recency:
        # Wrong only on the first event of each run.
        assert accuracy > 0.9
    else:
        assert accuracy < 0.6


def test_restore_wrong_recency_shape() -> None:
    learner = OnlineLearner(load_spec("electricity"), SMALL_CONFIG, seed=0)
    learner.learn([run_event(0, "UP"), run_event(1, "DOWN")])
    files = learner.to_files()
    tensors = safetensors.torch.load(files[TENSORS_FILE])
    tensors["recency.frequencies"] = torch.zeros(3, 7, dtype=torch.float64)
    damaged = {**files, TENSORS_FILE: safetensors.torch.save(tensors)}
    with pytest.raises(LearnerStateError, match="recency tensors have shapes"):
        OnlineLearner.from_files(damaged)


def test_small_chunks_for_many_labels_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(7)
    targets = torch.randint(0, 6, (300,), generator=generator)
    model = random_model(300, 5, 0.1, seed=8)
    escapes = torch.full((300,), 0.1, dtype=torch.float64)
    whole = LabelRecency().mix_sequence(model, targets, escapes)

    # 60 cells over 3 rates and 6 labels: chunks of 3 events.
    monkeypatch.setattr(recency, "CHUNK_CELLS", 60)
    chunked = LabelRecency().mix_sequence(model, targets, escapes)

    assert torch.allclose(chunked, whole, atol=1e-12)


@pytest.mark.parametrize(
    ("counter", "value", "message"),
    [
        ("labelled_scored", 1, "fewer than the 2 labels"),
        ("examples_seen", -3, "negative counters: examples_seen"),
    ],
)
def test_restore_rejects_impossible_counters(
    counter: str, value: int, message: str
) -> None:
    learner = OnlineLearner(load_spec("electricity"), SMALL_CONFIG, seed=0)
    learner.learn([run_event(0, "UP"), run_event(1, "DOWN"), run_event(2, "UP")])
    files = learner.to_files()
    state = json.loads(files[STATE_FILE])
    state["counters"][counter] = value
    damaged = {**files, STATE_FILE: json.dumps(state).encode("utf-8")}

    with pytest.raises(LearnerStateError, match=message):
        OnlineLearner.from_files(damaged)


def test_restore_rejects_negative_frequencies() -> None:
    learner = OnlineLearner(load_spec("electricity"), SMALL_CONFIG, seed=0)
    learner.learn([run_event(0, "UP"), run_event(1, "DOWN")])
    files = learner.to_files()
    tensors = safetensors.torch.load(files[TENSORS_FILE])
    tensors["recency.frequencies"] = -tensors["recency.frequencies"]
    damaged = {**files, TENSORS_FILE: safetensors.torch.save(tensors)}

    with pytest.raises(LearnerStateError, match="finite and >= 0"):
        OnlineLearner.from_files(damaged)
