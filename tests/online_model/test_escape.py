"""The escape probability that the learner keeps for labels it has never seen."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from online_model.learner import STATE_FILE, LearnerConfig, OnlineLearner
from online_model.spec import load_spec

SMALL_CONFIG = LearnerConfig(hash_bits=10, embedding_dim=8, hidden_units=8)


def event(number: int, label: str | None) -> dict[str, Any]:
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


def new_learner(label_recency: bool = True) -> OnlineLearner:
    config = dataclasses.replace(SMALL_CONFIG, label_recency=label_recency)
    return OnlineLearner(load_spec("electricity"), config, seed=0, device="cpu")


def test_escape_without_recency_first_batch() -> None:
    learner = new_learner(label_recency=False)
    assert learner.escape_probability == 1.0
    report = learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    assert [s.true_label_probability for s in report.scored] == [1.0, 1.0, 1.0]


def test_escape_with_recency_per_event() -> None:
    learner = new_learner()
    report = learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    # Event 1: 1 label among 1 earlier event, so escape 1 / 2, and all the
    # rest goes to UP, the only label seen. Event 2: 1 / (2 * 2).
    probabilities = [s.true_label_probability for s in report.scored]
    assert probabilities == pytest.approx([1.0, 0.5, 0.25])
    assert [s.ranked_labels for s in report.scored] == [(), ("UP",), ("UP",)]


def test_escape_follows_method_d() -> None:
    learner = new_learner()
    learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    # 2 labels among 3 labelled events: 2 / (2 * 3).
    assert learner.escape_probability == pytest.approx(1 / 3)
    report = learner.learn([event(3, "UP"), event(4, "FLAT")])
    up, flat = report.scored
    # FLAT is the second event: 2 labels among 4 earlier events.
    assert flat.true_label_probability == pytest.approx(2 / 8)
    assert 0.0 < up.true_label_probability < 2 / 3
    # 3 labels among 5 labelled events: 3 / (2 * 5).
    assert learner.escape_probability == pytest.approx(0.3)
    assert learner.labelled_scored == 5


def test_predict_sums_to_one_minus_escape() -> None:
    learner = new_learner()
    learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    [ranked] = learner.predict([event(3, None)], k=5)
    assert [label for label, _ in ranked] in (["UP", "DOWN"], ["DOWN", "UP"])
    assert sum(p for _, p in ranked) == pytest.approx(2 / 3, abs=1e-6)


def test_unlabelled_events_leave_escape_alone() -> None:
    learner = new_learner()
    learner.learn([event(0, "UP"), event(1, "DOWN")])
    report = learner.learn([event(2, None), event(3, None)])
    assert report.unlabelled == 2
    assert learner.labelled_scored == 2
    # 2 labels among 2 labelled events: 2 / (2 * 2).
    assert learner.escape_probability == pytest.approx(0.5)
    assert sum(p for _, p in report.predictions[0][1]) == pytest.approx(0.5)


def test_score_gives_unknown_label_escape() -> None:
    learner = new_learner()
    learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    known, unknown = learner.score([event(3, "DOWN"), event(4, "FLAT")])
    assert unknown.true_label_probability == pytest.approx(1 / 3)
    assert 0.0 < known.true_label_probability < 2 / 3
    # Scoring a holdout does not count its events.
    assert learner.labelled_scored == 3
    assert learner.escape_probability == pytest.approx(1 / 3)


def test_escape_counter_saved_and_restored() -> None:
    learner = new_learner()
    learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    files = learner.to_files()
    assert json.loads(files[STATE_FILE])["counters"]["labelled_scored"] == 3

    restored = OnlineLearner.from_files(files, device="cpu")

    assert restored.labelled_scored == 3
    assert restored.escape_probability == learner.escape_probability
    later = [event(3, "UP"), event(4, "FLAT"), event(5, "DOWN")]
    assert restored.learn(later).scored == learner.learn(later).scored
    assert restored.to_files() == learner.to_files()


def test_state_without_escape_counter_loads() -> None:
    learner = new_learner()
    learner.learn([event(0, "UP"), event(1, "UP"), event(2, "DOWN")])
    files = learner.to_files()
    state = json.loads(files[STATE_FILE])
    del state["counters"]["labelled_scored"]
    files[STATE_FILE] = json.dumps(state).encode()

    restored = OnlineLearner.from_files(files, device="cpu")

    # The learned events stand in for the missing count.
    assert restored.labelled_scored == 3
    assert restored.escape_probability == pytest.approx(1 / 3)
