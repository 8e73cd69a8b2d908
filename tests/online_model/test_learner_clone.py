"""OnlineLearner.clone: an in-memory copy that continues like the original."""

from __future__ import annotations

import itertools

from online_model.datasets import iter_events
from online_model.learner import OnlineLearner
from online_model.spec import load_spec

SPEC = load_spec("job_postings")
EVENTS = list(itertools.islice(iter_events("job_postings"), 1600))
BEFORE = EVENTS[:800]
AFTER = EVENTS[800:]


def learn_all(learner: OnlineLearner, events: list[dict]) -> list:
    scored = []
    for start in range(0, len(events), 200):
        scored.extend(learner.learn(events[start : start + 200]).scored)
    return scored


def trained() -> OnlineLearner:
    learner = OnlineLearner(SPEC, seed=0, device="cpu")
    learn_all(learner, BEFORE)
    return learner


def test_clone_continues_like_original() -> None:
    original = trained()
    clone = original.clone()
    restored = original.copy()

    clone_scored = learn_all(clone, AFTER)
    restored_scored = learn_all(restored, AFTER)
    original_scored = learn_all(original, AFTER)

    assert clone_scored == original_scored
    assert restored_scored == original_scored
    assert clone.to_files() == original.to_files()
    assert restored.to_files() == original.to_files()


def test_clone_is_independent() -> None:
    original = trained()
    files_before = original.to_files()
    clone = original.clone()
    learn_all(clone, AFTER)
    assert original.to_files() == files_before
    assert clone.to_files() != files_before
    assert clone.examples_seen == original.examples_seen + len(AFTER)
