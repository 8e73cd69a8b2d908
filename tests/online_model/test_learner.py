from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from online_model.learner import LearnerConfig, LearnerStateError, OnlineLearner
from online_model.spec import load_spec

# Small enough that a test learner builds in milliseconds.
SMALL_CONFIG = LearnerConfig(hash_bits=12, embedding_dim=16, hidden_units=16)
JOB_SPEC = load_spec("job_postings")
ELECTRICITY_SPEC = load_spec("electricity")


def batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def new_learner(spec: Any = JOB_SPEC, seed: int = 0) -> OnlineLearner:
    return OnlineLearner(spec, SMALL_CONFIG, seed=seed, device="cpu")


def test_first_batch_scored_before_learning(job_postings: list[dict[str, Any]]) -> None:
    learner = new_learner()
    report = learner.learn(job_postings[:64])
    assert report.learned == 64
    assert len(report.scored) == 64
    # Nothing was known when the batch was scored, so the first event's only
    # outcome is "a new label". Later events are ranked by label recency, over
    # exactly the labels of the events before them.
    assert report.scored[0].true_label_probability == 1.0
    seen: list[str] = []
    for scored, labelled in zip(report.scored, job_postings[:64], strict=True):
        assert set(scored.ranked_labels) <= set(seen)
        assert len(scored.ranked_labels) == min(5, len(set(seen)))
        seen.append(labelled["job_role"])
    assert set(report.new_labels) == {e["job_role"] for e in job_postings[:64]}
    assert learner.examples_seen == 64


def test_learning_beats_majority(job_postings: list[dict[str, Any]]) -> None:
    learner = new_learner()
    hits = 0
    for batch in batches(job_postings, 256):
        report = learner.learn(batch)
        if learner.batches_seen > 4:
            hits += sum(s.predicted_label == s.true_label for s in report.scored)
    later = job_postings[1024:]
    majority = Counter(e["job_role"] for e in later).most_common(1)[0][1] / len(later)
    assert hits / len(later) > majority + 0.05


def test_predict_ranks_with_probabilities(job_postings: list[dict[str, Any]]) -> None:
    learner = new_learner()
    for batch in batches(job_postings[:1024], 256):
        learner.learn(batch)
    request = dict(job_postings[1500], job_role=None)
    [top] = learner.predict([request], k=3)
    assert len(top) == 3
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
    assert {label for label, _ in top} <= set(learner.labels)


def test_unlabelled_events_predicted_not_learned(
    job_postings: list[dict[str, Any]],
) -> None:
    learner = new_learner()
    learner.learn(job_postings[:256])
    requests = [dict(e, job_role=None) for e in job_postings[256:266]]
    weights_before = learner._model.output_weight.detach().clone()
    report = learner.learn(requests)
    assert report.unlabelled == 10
    assert report.learned == 0
    assert [event_id for event_id, _ in report.predictions] == [
        e["event_id"] for e in requests
    ]
    assert all(len(ranked) == 5 for _, ranked in report.predictions)
    assert torch.equal(learner._model.output_weight, weights_before)


def test_invalid_and_duplicate_events_counted(
    job_postings: list[dict[str, Any]],
) -> None:
    learner = new_learner()
    good = job_postings[:4]
    broken = dict(job_postings[4], salary_year_avg=math.nan)
    missing = {k: v for k, v in job_postings[5].items() if k != "country"}
    report = learner.learn([*good, good[0], broken, missing, "junk"])
    assert report.learned == 4
    assert report.duplicates == 1
    assert dict(report.invalid) == {
        "duplicate_event_id": 1,
        "non_finite_number": 1,
        "missing_field": 1,
        "not_a_record": 1,
    }
    assert report.invalid_total == 4
    assert learner.invalid_seen == 4
    assert report.problems[0][1].reason == "duplicate_event_id"


@pytest.mark.parametrize(
    ("optimizer", "position", "state_key"),
    [("adagrad", 0, "sum"), ("adam", 0, "exp_avg")],
)
def test_new_label_grows_and_keeps_old(
    job_postings: list[dict[str, Any]], optimizer: str, position: int, state_key: str
) -> None:
    config = dataclasses.replace(SMALL_CONFIG, optimizer=optimizer)
    learner = OnlineLearner(JOB_SPEC, config, seed=0, device="cpu")
    for batch in batches(job_postings[:512], 128):
        learner.learn(batch)
    old_count = len(learner.labels)
    probe = job_postings[600:610]
    before = learner._model(learner._model_input(learner.featurizer.encode(probe)))
    chosen = learner._optimizers[position]
    old_moment = chosen.state[learner._model.output_weight][state_key].clone()

    learner._add_labels([dict(job_postings[0], job_role="Prompt Engineer")])

    after = learner._model(learner._model_input(learner.featurizer.encode(probe)))
    assert learner.labels[-1] == "Prompt Engineer"
    assert after.shape == (10, old_count + 1)
    assert torch.equal(after[:, :old_count], before)
    moment = chosen.state[learner._model.output_weight][state_key]
    assert torch.equal(moment[:old_count], old_moment)
    assert torch.count_nonzero(moment[old_count:]) == 0


def test_new_label_learned_midstream(job_postings: list[dict[str, Any]]) -> None:
    config = LearnerConfig(
        hash_bits=12,
        embedding_dim=16,
        hidden_units=16,
        optimizer="adagrad",
        learning_rate=0.05,
    )
    learner = OnlineLearner(JOB_SPEC, config, seed=0, device="cpu")
    learner.learn(job_postings[:256])
    # Postings without skills become a new role from the second batch on.
    renamed = [
        dict(e, job_role="Prompt Engineer") if not e["skills"] else e
        for e in job_postings[256:1536]
    ]
    assert sum(e["job_role"] == "Prompt Engineer" for e in renamed) > 50
    for batch in batches(renamed, 256):
        learner.learn(batch)
    assert "Prompt Engineer" in learner.labels
    probe = next(e for e in job_postings[1536:] if not e["skills"])
    [top] = learner.predict([dict(probe, job_role=None)], k=1)
    assert top[0][0] == "Prompt Engineer"


def test_non_finite_update_rejected(job_postings: list[dict[str, Any]]) -> None:
    learner = new_learner()
    learner.learn(job_postings[:256])
    with torch.no_grad():
        learner._model.hidden.weight[0, 0] = math.inf
    saved = {k: v.clone() for k, v in learner._model.state_dict().items()}
    # A new label in the rejected batch still grows the output layer (new rows
    # of zeros); the rows that existed must be unchanged.
    old_count = len(learner.labels)
    report = learner.learn(job_postings[256:512])
    assert report.refused_non_finite == 1
    assert report.learned == 0
    assert report.loss is None
    assert learner.updates_refused == 1
    for name, value in learner._model.state_dict().items():
        if name.startswith("output") or name == "label_counts":
            value = value[:old_count]
        assert torch.equal(value.nan_to_num(), saved[name].nan_to_num()), name


def test_failed_second_step_undone(
    job_postings: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = new_learner()
    learner.learn(job_postings[:512])
    before = learner.to_files()
    checks = iter([True, False])
    original = learner._backward_finite

    def fail_second_step(loss: torch.Tensor, rows: torch.Tensor) -> bool:
        original(loss, rows)
        return next(checks)

    # Simulates a non-finite gradient in the second of the two steps.
    monkeypatch.setattr(learner, "_backward_finite", fail_second_step)
    report = learner.learn(job_postings[512:768])

    assert report.refused_non_finite == 1
    assert report.learned == 0
    restored = OnlineLearner.from_files(before)
    for name, value in restored._model.state_dict().items():
        assert torch.equal(learner._model.state_dict()[name], value), name
    for key, value in restored._embedding_optimizer.state.items():
        assert torch.equal(learner._embedding_optimizer.state[key], value), key
    monkeypatch.undo()
    # The rejected batch's events still count towards the escape probability.
    assert learner.labelled_scored == restored.labelled_scored + 256
    # Label recency learns from the labels of a rejected batch too.
    restored.labelled_scored = learner.labelled_scored
    restored._recency.frequencies = learner._recency.frequencies.clone()
    restored._recency.log_weights = learner._recency.log_weights.clone()
    assert (
        learner.learn(job_postings[768:1024]).scored
        == restored.learn(job_postings[768:1024]).scored
    )


def test_score_does_not_learn(job_postings: list[dict[str, Any]]) -> None:
    learner = new_learner()
    learner.learn(job_postings[:256])
    first = learner.score(job_postings[256:512])
    second = learner.score(job_postings[256:512])
    assert first == second
    assert learner.examples_seen == 256
    assert len(first) == 256


def test_same_seed_same_run(job_postings: list[dict[str, Any]]) -> None:
    runs = []
    for _ in range(2):
        learner = new_learner(seed=7)
        reports = [learner.learn(b) for b in batches(job_postings[:768], 256)]
        runs.append([s.true_label_probability for r in reports for s in r.scored])
    assert runs[0] == runs[1]
    other = new_learner(seed=8)
    reports = [other.learn(b) for b in batches(job_postings[:768], 256)]
    assert runs[0] != [s.true_label_probability for r in reports for s in r.scored]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_restore_continues_bit_for_bit(
    job_postings: list[dict[str, Any]], optimizer: str, tmp_path: Path
) -> None:
    config = LearnerConfig(
        hash_bits=12,
        embedding_dim=16,
        hidden_units=16,
        optimizer=optimizer,
        steps_per_batch=2,
    )
    stream = batches(job_postings[:1536], 256)
    uninterrupted = OnlineLearner(JOB_SPEC, config, seed=3, device="cpu")
    interrupted = OnlineLearner(JOB_SPEC, config, seed=3, device="cpu")
    for batch in stream[:3]:
        uninterrupted.learn(batch)
        interrupted.learn(batch)
    interrupted.save(tmp_path / "state")
    restored = OnlineLearner.load(tmp_path / "state")
    assert restored.labels == uninterrupted.labels
    assert restored.examples_seen == 768

    for batch in stream[3:]:
        expected = uninterrupted.learn(batch)
        actual = restored.learn(batch)
        assert actual.scored == expected.scored
        assert actual.loss == expected.loss
    for name, value in uninterrupted._model.state_dict().items():
        assert torch.equal(restored._model.state_dict()[name], value), name


def test_copy_is_independent(job_postings: list[dict[str, Any]]) -> None:
    learner = new_learner()
    learner.learn(job_postings[:256])
    twin = learner.copy()
    learner.learn(job_postings[256:512])
    assert twin.examples_seen == 256
    assert twin.score(job_postings[:64]) != learner.score(job_postings[:64])


def test_from_files_rejects_missing_part() -> None:
    files = new_learner().to_files()
    del files["learner.json"]
    with pytest.raises(ValueError, match=r"missing learner\.json"):
        OnlineLearner.from_files(files)


def test_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match=r"LearnerConfig.hash_bits is 40"):
        LearnerConfig(hash_bits=40)
    with pytest.raises(ValueError, match="optimizer is 'sgd'"):
        LearnerConfig(optimizer="sgd")


def test_config_bounds_combined_size() -> None:
    # 2**26 buckets of 4,096 columns: 1 TiB of weights.
    with pytest.raises(ValueError, match="would have 274,877,906,944 weights"):
        LearnerConfig(hash_bits=26, embedding_dim=4096)
    # 2**16 buckets and 65,536 hidden units of 4,096: 2 GiB of weights.
    with pytest.raises(ValueError, match="would have 536,870,912 weights"):
        LearnerConfig(hash_bits=16, embedding_dim=4096, hidden_units=65536)
    assert LearnerConfig(hash_bits=26, embedding_dim=4).embedding_dim == 4


def test_forged_state_too_large_rejected() -> None:
    learner = new_learner()
    files = learner.to_files()
    state = json.loads(files["learner.json"])
    state["config"].update(hash_bits=26, embedding_dim=4096)
    files["learner.json"] = json.dumps(state).encode("utf-8")

    with pytest.raises(LearnerStateError, match="hidden layer would have"):
        OnlineLearner.from_files(files)


def test_mixed_batch_learns_labelled_only(job_postings: list[dict[str, Any]]) -> None:
    alone = new_learner()
    mixed = new_learner()
    alone.learn(job_postings[:256])
    mixed.learn(job_postings[:256])
    labelled = job_postings[256:356]
    requests = [dict(e, job_role=None) for e in job_postings[356:376]]

    expected = alone.learn(labelled)
    actual = mixed.learn(labelled + requests)

    assert actual.learned == 100
    assert actual.unlabelled == 20
    assert len(actual.predictions) == 20
    assert actual.scored == expected.scored
    for name, value in alone._model.state_dict().items():
        assert torch.allclose(mixed._model.state_dict()[name], value, atol=1e-6), name


def test_extreme_numbers_keep_statistics(electricity: list[dict[str, Any]]) -> None:
    learner = new_learner(ELECTRICITY_SPEC)
    learner.learn(electricity[:256])
    mean_before = learner._model.numeric_mean.clone()
    extreme = [
        dict(e, nswdemand=1e308 if i % 2 else -1e308)
        for i, e in enumerate(electricity[256:512])
    ]

    report = learner.learn(extreme)

    assert report.learned == 256
    assert torch.isfinite(learner._model.numeric_mean).all()
    assert torch.isfinite(learner._model.numeric_m2).all()
    column = learner.featurizer.numeric_fields.index("nswdemand")
    assert learner._model.numeric_mean[column] == mean_before[column]
    later = learner.learn(electricity[512:768])
    assert all(0.0 < s.true_label_probability < 1.0 for s in later.scored)
