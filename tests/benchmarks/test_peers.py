"""The peer benchmark: featurization for the peers, VW's two paths, the tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import peers
import pytest
from peer_features import FieldKinds, PeerFeaturizer
from peer_learners import (
    MostFrequentClasses,
    NoChange,
    StreamlearnLearner,
    VowpalWabbitBinding,
    VowpalWabbitCommandLine,
    label_ids_in_order_of_appearance,
    scored_from_probabilities,
)
from peer_worker import PrequentialTally, chunk_bounds, rss_growth

from online_model.scored import Scored
from online_model.spec import load_spec

KINDS = FieldKinds(
    label="role",
    categorical=("country", "remote"),
    multi_valued=("skills",),
    text=("summary",),
    numeric=("salary", "hours"),
    log1p_fields=frozenset({"salary"}),
)


def test_river_features_encode_every_kind() -> None:
    event = {
        "country": "New Zealand",
        "remote": True,
        "skills": ["sql", "python"],
        "summary": "Data, and more DATA",
        "salary": math.e - 1,
        "hours": 40,
        "role": "Data Analyst",
    }
    features = PeerFeaturizer(KINDS).river_features(event)
    assert features["country=New Zealand"] == 1.0
    assert features["remote=True"] == 1.0
    assert features["skills=sql"] == 1.0
    assert features["skills=python"] == 1.0
    assert features["summary=data"] == 1.0
    assert features["summary=more"] == 1.0
    assert features["salary"] == pytest.approx(1.0)
    assert features["hours"] == 40.0
    assert "role" not in " ".join(features)


def test_missing_values_produce_no_feature() -> None:
    event = {
        "country": None,
        "skills": [],
        "summary": None,
        "salary": math.nan,
        "hours": math.inf,
        "role": "x",
    }
    featurizer = PeerFeaturizer(KINDS)
    assert featurizer.river_features(event) == {}
    assert featurizer.vw_line(event, 3) == "3 |"


def test_vw_line_escapes_separators() -> None:
    event = {"country": "a b:c|d", "skills": ["c++ dev"], "hours": 1.5, "role": "x"}
    line = PeerFeaturizer(KINDS).vw_line(event, 2)
    assert line == "2 |c country=a_b;c/d |m skills=c++_dev |n hours:1.5"


def test_scored_from_probabilities_ranks_and_breaks_ties() -> None:
    scored = scored_from_probabilities("b", {"a": 0.25, "b": 0.5, "c": 0.25})
    assert scored.ranked_labels == ("b", "a", "c")
    assert scored.true_label_probability == 0.5
    unseen = scored_from_probabilities("z", {"a": 1.0})
    assert unseen.true_label_probability == 0.0


def test_most_frequent_scores_before_learning() -> None:
    learner = MostFrequentClasses()
    records = learner.test_then_train(None, ["a", "a", "b"])
    assert records[0].ranked_labels == ()
    assert records[0].true_label_probability == 1.0
    assert records[1].ranked_labels == ("a",)
    assert records[1].true_label_probability == pytest.approx(2 / 3)
    assert records[2].true_label_probability == pytest.approx(1 / 4)


def test_no_change_ranks_previous_label_first() -> None:
    learner = NoChange()
    records = learner.test_then_train(None, ["a", "a", "b", "b"])
    assert [r.ranked_labels for r in records] == [(), ("a",), ("a",), ("b", "a")]
    # A new label first, then a repeat at (0 + 1) / (1 + 2). Then "b", new,
    # gets all of 1 - (1 + 1) / (2 + 2), and a repeat (1 + 1) / (3 + 2).
    probabilities = [r.true_label_probability for r in records]
    assert probabilities == pytest.approx([1.0, 1 / 3, 1 / 2, 2 / 5])


def test_chunk_bounds_cut_at_prefix() -> None:
    bounds = chunk_bounds(total=10, size=4, prefix=6)
    assert bounds == [(0, 4), (4, 6), (6, 10)]
    assert chunk_bounds(total=3, size=4, prefix=6) == [(0, 3)]


def test_tally_takes_prefix_metrics_inside_a_batch() -> None:
    tally = PrequentialTally(prefix=3)
    hit = Scored("a", ("a",), 1.0)
    miss = Scored("a", ("b",), 0.5)
    tally.add([hit, hit])
    assert tally.prefix_metrics is None
    tally.add([miss, miss, miss])
    assert tally.prefix_metrics is not None
    assert tally.prefix_metrics.n_events == 3
    assert tally.prefix_metrics.top1_accuracy == pytest.approx(2 / 3)
    assert tally.events == 5
    assert tally.accumulator.result().top1_accuracy == pytest.approx(2 / 5)


def test_rss_growth_from_first_quarter() -> None:
    samples = [(i, float(i)) for i in range(8)]
    assert rss_growth(samples) == 5.0
    assert rss_growth(samples[:3]) is None


@pytest.mark.parametrize("quadratic", [False, True])
def test_vw_binding_matches_command_line(
    electricity: list[dict[str, object]], quadratic: bool
) -> None:
    events = electricity[:600]
    kinds = FieldKinds(label="class", categorical=("day",), numeric=("period",))
    featurizer = PeerFeaturizer(kinds)
    label_ids = label_ids_in_order_of_appearance(events, "class")
    labels = [str(event["class"]) for event in events]

    binding = VowpalWabbitBinding("vw-py", featurizer, label_ids, quadratic)
    from_binding = binding.test_then_train(binding.featurize(events), labels)
    binding.finish()
    command_line = VowpalWabbitCommandLine("vw-cli", featurizer, label_ids, quadratic)
    command_line.featurize(events)
    command_line.test_then_train(None, labels)
    command_line.run_driver(limit=None)
    from_driver = list(command_line.iter_records())
    command_line.cleanup()

    assert len(from_driver) == len(from_binding) == 600
    for binding_record, driver_record in zip(from_binding, from_driver, strict=True):
        assert binding_record.ranked_labels == driver_record.ranked_labels
        assert binding_record.true_label_probability == pytest.approx(
            driver_record.true_label_probability, abs=1e-5
        )


@pytest.mark.slow
def test_peers_writes_tables(tmp_path: Path) -> None:
    exit_code = peers.main(
        [
            "--streams",
            "electricity",
            "--peers",
            "most-frequent,vw-cli,river-nb",
            "--limit",
            "600",
            "--prefix",
            "256",
            "--out",
            str(tmp_path),
        ]
    )
    assert exit_code == 0
    page = (tmp_path / "peers.md").read_text(encoding="utf-8")
    assert "--limit 600" in page
    assert "| vw-cli | 600 |" in page
    assert "| vw-cli | 256 |" in page
    with (tmp_path / "peers.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert {(r["learner"], r["scope"]) for r in rows} == {
        (peer, scope)
        for peer in ("most-frequent", "vw-cli", "river-nb")
        for scope in ("full", "prefix")
    }
    results = json.loads((tmp_path / "peers.json").read_text(encoding="utf-8"))
    assert all(r["events_run"] == 600 for r in results["results"])


def test_streamlearn_rejected_events_count_as_misses(
    electricity: list[dict[str, object]],
) -> None:
    learner = StreamlearnLearner(load_spec("electricity"), seed=0)
    batch = [*electricity[:8], electricity[0]]
    labels = [str(event["class"]) for event in batch]
    records = learner.test_then_train(learner.featurize(batch), labels)
    assert len(records) == len(batch)
    assert learner.rejected_events == 1
    assert records[-1].ranked_labels == ()
    assert records[-1].true_label_probability == 0.0
    assert records[-1].true_label == labels[0]
