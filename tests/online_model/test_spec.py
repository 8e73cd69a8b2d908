from __future__ import annotations

import json
from pathlib import Path

import pytest

from online_model.learner import LearnerConfig
from online_model.spec import (
    SpecError,
    fingerprint,
    load_schema,
    load_spec,
    spec_from_dict,
)

SHIPPED = ["job_postings", "so_survey_2016", "aijobs_salaries", "electricity"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_load(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name
    assert spec.label_field in spec.avro_fields
    assert spec.fields


def test_job_postings_spec_fields() -> None:
    spec = load_spec("job_postings")
    assert spec.label_field == "job_role"
    assert spec.field("skills").kind == "multi_valued"
    assert spec.field("salary_year_avg").transform == "log1p"
    names = {f.name for f in spec.fields}
    assert "job_title" not in spec.avro_fields
    assert "company_name" not in names


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(
        'schema = "job_postings"\nevent_id = "event_id"\n'
        'event_time = "event_time"\nlabel = "job_role"\n' + body
    )
    return path


def test_misspelt_field_is_named(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[fields.skils]\nkind = "multi_valued"\n')
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "feature spec 'custom': field 'skils' is not in the Avro schema" in message
    assert "skills" in message


def test_kind_must_match_avro_type(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[fields.skills]\nkind = "numeric"\n')
    with pytest.raises(SpecError, match="kind 'numeric' needs Avro type"):
        load_spec(path)


def test_unknown_option_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[fields.country]\nkind = "categorical"\nbucket = 3\n')
    with pytest.raises(SpecError, match="unknown option"):
        load_spec(path)


@pytest.mark.parametrize("weight", ["0", "-1.5", "nan", "inf", "true"])
def test_field_weight_must_be_positive_finite(tmp_path: Path, weight: str) -> None:
    path = write_spec(
        tmp_path, f'[fields.country]\nkind = "categorical"\nweight = {weight}\n'
    )
    with pytest.raises(SpecError, match="weight must be a positive finite number"):
        load_spec(path)


def test_label_cannot_be_feature(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[fields.job_role]\nkind = "categorical"\n')
    with pytest.raises(SpecError, match="cannot be a feature"):
        load_spec(path)


def test_cross_needs_numeric_buckets(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        '[fields.country]\nkind = "categorical"\n'
        '[fields.salary_year_avg]\nkind = "numeric"\n'
        '[[crosses]]\nfields = ["country", "salary_year_avg"]\n',
    )
    with pytest.raises(SpecError, match="set buckets > 0"):
        load_spec(path)


def test_cross_allows_one_bag(tmp_path: Path) -> None:
    path = tmp_path / "survey.toml"
    path.write_text(
        'schema = "so_survey_2016"\nevent_id = "event_id"\n'
        'event_time = "event_time"\nlabel = "occupation"\n'
        '[fields.tech_do]\nkind = "multi_valued"\n'
        '[fields.tech_want]\nkind = "multi_valued"\n'
        '[[crosses]]\nfields = ["tech_do", "tech_want"]\n'
    )
    with pytest.raises(SpecError, match="at most one multi-valued"):
        load_spec(path)


def test_unknown_schema_lists_shipped_names() -> None:
    with pytest.raises(SpecError, match="job_postings"):
        load_schema("no_such_schema")


def test_fingerprint_stable_and_sensitive() -> None:
    spec = load_spec("job_postings")
    first = fingerprint(spec, LearnerConfig())
    assert first == fingerprint(load_spec("job_postings"), LearnerConfig())
    assert len(first) == 64
    assert first != fingerprint(spec, LearnerConfig(learning_rate=0.5))
    assert first != fingerprint(load_spec("so_survey_2016"), LearnerConfig())


def test_exact_cross_needs_value_token(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        '[fields.country]\nkind = "categorical"\n'
        '[fields.salary_year_avg]\nkind = "numeric"\nbuckets = 4\n'
        '[[crosses]]\nfields = ["country", "salary_year_avg"]\nexact = true\n',
    )
    with pytest.raises(SpecError, match="needs value_token = true"):
        load_spec(path)


def test_spec_round_trips_through_dict() -> None:
    spec = load_spec("aijobs_salaries")
    again = spec_from_dict(json.loads(json.dumps(spec.to_dict(), sort_keys=True)))
    assert again == spec
    assert [f.name for f in again.fields] == [f.name for f in spec.fields]
    assert again.crosses[-1].exact


def test_timestamp_field_not_a_feature(tmp_path: Path) -> None:
    path = write_spec(tmp_path, '[fields.event_time]\nkind = "numeric"\n')
    with pytest.raises(SpecError, match="logical type 'timestamp-millis'"):
        load_spec(path)


def test_spec_path_with_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_spec(tmp_path, '[fields.country]\nkind = "categorical"\n')

    spec = load_spec("~/custom.toml")

    assert spec.name == "custom"
