from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from online_model import featurize
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


def test_value_token_same_for_zero_and_negative_zero() -> None:
    first = next(iter_events("aijobs_salaries"))
    zero = dict(first, salary_in_usd=0.0)
    negative = dict(first, salary_in_usd=-0.0)
    zero_first = tokens_of("aijobs_salaries", [zero, negative])
    negative_first = tokens_of("aijobs_salaries", [negative, zero])
    assert zero_first[0] == zero_first[1]
    assert negative_first[0] == zero_first[0]


def test_encode_ids_are_stable_ids(job_postings: list[dict[str, Any]]) -> None:
    # Saved models depend on these ids: the type name and value, hashed.
    spec = load_spec("job_postings")
    featurizer = Featurizer(spec)
    encoded = featurizer.encode(job_postings[:3])
    country = featurizer.single_columns.index("country")
    skills = featurizer.bag_fields.index("skills")
    for row, event in enumerate(job_postings[:3]):
        expected = stable_id("country", f"str:{event['country']}")
        assert int(encoded.categorical[row, country]) == expected
    first_skills = [stable_id("skills", f"str:{s}") for s in job_postings[0]["skills"]]
    count = len(first_skills)
    assert encoded.bag_ids[skills][:count].tolist() == first_skills
    assert encoded.bag_events[skills][:count].tolist() == [0] * count


def test_encode_batch_equals_one_by_one(job_postings: list[dict[str, Any]]) -> None:
    spec = load_spec("job_postings")
    events = [*job_postings[:300], dict(job_postings[0], skills=[], event_id="e")]
    events.append(dict(job_postings[1], salary_year_avg=None, event_id="n"))
    batch = Featurizer(spec).encode(events)
    single = Featurizer(spec)
    parts = [single.encode([event]) for event in events]
    assert batch.new_values == sum(part.new_values for part in parts)
    assert batch.new_values > 0
    assert torch.equal(batch.categorical, torch.cat([p.categorical for p in parts]))
    numeric = torch.cat([p.numeric for p in parts])
    assert torch.equal(batch.numeric.isnan(), numeric.isnan())
    assert torch.equal(batch.numeric.nan_to_num(), numeric.nan_to_num())
    for bag in range(len(batch.bag_ids)):
        ids = torch.cat([p.bag_ids[bag] for p in parts])
        assert torch.equal(batch.bag_ids[bag], ids)
        owners = [
            torch.full_like(p.bag_events[bag], position)
            for position, p in enumerate(parts)
        ]
        assert torch.equal(batch.bag_events[bag], torch.cat(owners))


def test_encode_cache_cleared_within_batch(
    job_postings: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(featurize, "CACHE_LIMIT", 2)
    featurizer = Featurizer(load_spec("job_postings"))
    first = job_postings[0]
    assert featurizer.encode([dict(first, country="A")]).new_values > 0
    batch = [dict(first, country=country) for country in ("B", "C", "A")]
    country = featurizer.single_columns.index("country")
    encoded = featurizer.encode(batch)
    # "B" fills the cache, "C" clears it, so "A" is hashed again as new.
    assert featurizer._caches["country"] == {
        "C": stable_id("country", "str:C"),
        "A": stable_id("country", "str:A"),
    }
    assert encoded.categorical[:, country].tolist() == [
        stable_id("country", f"str:{c}") for c in ("B", "C", "A")
    ]


def test_encode_large_ints_as_torch(job_postings: list[dict[str, Any]]) -> None:
    featurizer = Featurizer(load_spec("job_postings"))
    column = featurizer.numeric_fields.index("salary_year_avg")
    values = [2**53 + 1, 2**63 + 7, 90_000]
    events = [dict(job_postings[0], salary_year_avg=v) for v in values]
    encoded = featurizer.encode(events)
    expected = torch.tensor(values, dtype=torch.float64)
    assert torch.equal(encoded.numeric[:, column], expected)
    too_large = dict(job_postings[0], salary_year_avg=10**400)
    with pytest.raises(OverflowError):
        featurizer.encode([too_large])


def per_event_reference(
    spec_name: str, events: list[dict[str, Any]]
) -> list[list[int]]:
    """Return each event's tokens built one cross at a time, for specs without bags."""
    spec = load_spec(spec_name)
    featurizer = Featurizer(spec)
    layout = TokenLayout(spec, featurizer, hash_bits=20)
    encoded = featurizer.encode(events)
    columns = len(featurizer.numeric_fields)
    zeros = torch.zeros(columns, dtype=torch.float64)
    z = standardize(encoded.numeric, layout, zeros, zeros, zeros)
    buckets = featurize._bucket_ids(z, layout)
    single = torch.cat([encoded.categorical, buckets], dim=1)
    size = len(events)
    static = [
        featurize._cross(encoded, layout, single, fields, salt, size)[0]
        for salt, fields in layout.static_crosses
    ]
    dynamic = [
        featurize._cross(encoded, layout, single, fields, salt, size)[0]
        for salt, fields in layout.dynamic_crosses
    ]
    rows = []
    for i in range(size):
        row = [
            *encoded.categorical[i].tolist(),
            *(int(crossed[i]) for crossed in static),
            *buckets[i].tolist(),
            *(int(crossed[i]) for crossed in dynamic),
        ]
        rows.append([token & ((1 << 20) - 1) for token in row])
    return rows


def test_crosses_without_bags_match_reference() -> None:
    for name in ("aijobs_salaries", "electricity"):
        events = list(itertools.islice(iter_events(name), 40))
        spec = load_spec(name)
        featurizer = Featurizer(spec)
        layout = TokenLayout(spec, featurizer, hash_bits=20)
        assert layout.dynamic_block is not None
        encoded = featurizer.encode(events)
        zeros = torch.zeros(len(featurizer.numeric_fields), dtype=torch.float64)
        z = standardize(encoded.numeric, layout, zeros, zeros, zeros)
        batch = hashed_tokens(encoded, layout, z, torch.device("cpu"))
        width = batch.tokens.shape[0] // len(events)
        assert batch.token_offsets.tolist() == [i * width for i in range(40)]
        rows = batch.tokens.view(len(events), width).tolist()
        assert rows == per_event_reference(name, events)
