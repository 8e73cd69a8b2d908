from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from online_model.datasets import iter_events
from online_model.featurize import (
    Featurizer,
    TokenLayout,
    hashed_tokens,
    stable_id,
    standardize,
)
from online_model.learner import LearnerConfig, OnlineLearner
from online_model.spec import load_spec

# Saved models depend on this value staying the same across versions.
EXPECTED_GERMANY_ID = 2133334434


def tokens_of(spec_name: str, events: list[dict[str, Any]]) -> list[set[int]]:
    spec = load_spec(spec_name)
    featurizer = Featurizer(spec)
    layout = TokenLayout(spec, featurizer, hash_bits=20)
    encoded = featurizer.encode(events)
    columns = len(featurizer.numeric_fields)
    zeros = torch.zeros(columns, dtype=torch.float64)
    z = standardize(encoded.numeric, layout, zeros, zeros, zeros)
    batch = hashed_tokens(encoded, layout, z, torch.device("cpu"))
    ends = [*batch.token_offsets.tolist()[1:], batch.tokens.shape[0]]
    starts = batch.token_offsets.tolist()
    return [set(batch.tokens[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]


def test_stable_id_fixed_across_processes() -> None:
    # BLAKE2b of "country\x1fstr:Germany": the same in every process and run.
    assert stable_id("country", "str:Germany") == EXPECTED_GERMANY_ID


def test_exact_cross_separates_salaries() -> None:
    first = next(iter_events("aijobs_salaries"))
    same = dict(first, event_id="copy")
    other_salary = dict(
        first, event_id="other", salary_in_usd=first["salary_in_usd"] + 1
    )
    plain, copy, changed = tokens_of("aijobs_salaries", [first, same, other_salary])
    assert plain == copy
    assert plain != changed
    assert len(plain - changed) >= 2


def test_unseen_value_gets_own_feature() -> None:
    events = list(itertools.islice(iter_events("job_postings"), 2))
    spec = load_spec("job_postings")
    featurizer = Featurizer(spec)
    featurizer.encode(events)
    again = featurizer.encode(events)
    assert again.new_values == 0
    novel = featurizer.encode([dict(events[0], country="Atlantis")])
    assert novel.new_values == 1
    known, unseen = tokens_of(
        "job_postings", [events[0], dict(events[0], country="Atlantis")]
    )
    assert known != unseen


def test_text_field_learns(tmp_path: Path) -> None:
    spec_path = tmp_path / "text.toml"
    spec_path.write_text(
        'schema = "job_postings"\nevent_id = "event_id"\n'
        'event_time = "event_time"\nlabel = "job_role"\n'
        '[fields.source_site]\nkind = "text"\n'
        '[fields.skills]\nkind = "multi_valued"\n'
    )
    spec = load_spec(spec_path)
    events = list(itertools.islice(iter_events("job_postings"), 512))
    learner = OnlineLearner(spec, LearnerConfig(hash_bits=12), device="cpu")
    first = learner.learn(events[:256])
    second = learner.learn(events[256:])
    assert first.learned == 256
    assert second.learned == 256
    featurizer = Featurizer(spec)
    encoded = featurizer.encode([dict(events[0], source_site="via LinkedIn")])
    source_site = featurizer.bag_fields.index("source_site")
    assert encoded.bag_ids[source_site].shape[0] == 2  # "via" and "linkedin"


def test_value_token_same_for_int_and_float() -> None:
    first = next(iter_events("aijobs_salaries"))
    as_int = dict(first, salary_in_usd=int(first["salary_in_usd"]))
    float_first = tokens_of("aijobs_salaries", [first, as_int])
    int_first = tokens_of("aijobs_salaries", [as_int, first])
    assert float_first[0] == float_first[1]
    assert int_first[0] == float_first[0]
