from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from online_model.datasets import ConversionReport, convert, iter_events, read_events
from online_model.events import check_event
from online_model.spec import load_spec

HEADER = (
    "job_title_short,job_title,job_location,job_via,job_schedule_type,"
    "job_work_from_home,search_location,job_posted_date,job_no_degree_mention,"
    "job_health_insurance,job_country,salary_rate,salary_year_avg,salary_hour_avg,"
    "company_name,job_skills\n"
)


def posting_row(
    label: str = "Data Analyst",
    posted: str = "2023-03-01 10:00:00",
    wfh: str = "False",
    salary: str = "85000.0",
    skills: str = "\"['sql', 'excel']\"",
) -> str:
    return (
        f"{label},Raw Title,Here,via Indeed,Full-time,{wfh},US,{posted},True,False,"
        f"United States,year,{salary},,Acme,{skills}\n"
    )


def test_job_postings_bad_rows_counted(tmp_path: Path) -> None:
    source = tmp_path / "postings.csv"
    source.write_text(
        HEADER
        + posting_row(posted="2023-03-02 10:00:00")
        + posting_row(posted="yesterday")
        + posting_row(skills="\"['sql', \"")
        + posting_row(wfh="maybe")
        + posting_row(salary="lots")
        + posting_row(label="")
        + posting_row(posted="2023-03-01 09:00:00", skills="")
    )
    report = ConversionReport("job_postings")
    events = list(iter_events("job_postings", source, report))
    assert report.rows_read == 7
    assert report.events == 2
    assert dict(report.skipped) == {
        "invalid_time": 1,
        "invalid_skills": 1,
        "invalid_boolean": 1,
        "invalid_number": 1,
        "no_label": 1,
    }
    assert report.examples["invalid_time"].startswith("row 2:")
    # Sorted by posting time: row 7 (09:00) comes before row 1 (10:00 next day).
    assert [e["event_id"] for e in events] == ["postings:7", "postings:1"]
    assert events[0]["skills"] == []
    assert "invalid_boolean" in report.summary()


def test_job_postings_stream_sorted_and_valid(
    job_postings: list[dict[str, Any]],
) -> None:
    spec = load_spec("job_postings")
    times = [e["event_time"] for e in job_postings]
    assert times == sorted(times)
    assert times[0] == datetime(2023, 1, 1, 0, 1, 11, tzinfo=UTC)
    rejected = [e for e in job_postings if any(p.rejects for p in check_event(e, spec))]
    assert rejected == []
    assert "job_title" not in job_postings[0]


def test_aijobs_arrival_order() -> None:
    report = ConversionReport("aijobs_salaries")
    stream = iter_events("aijobs_salaries", report=report)
    first = next(stream)
    assert first["event_id"] == "aijobs_salaries_2025-01-19:74301"
    assert first["job_title"] == "Data Scientist"
    assert first["salary_in_usd"] == 94665.0
    assert first["work_year"] == 2021


def test_survey_shuffle_fixed_and_unlabelled_reported() -> None:
    report = ConversionReport("so_survey_2016")
    first_ids = [
        e["event_id"]
        for _, e in zip(
            range(3), iter_events("so_survey_2016", report=report), strict=False
        )
    ]
    again = [
        e["event_id"]
        for _, e in zip(range(3), iter_events("so_survey_2016"), strict=False)
    ]
    assert first_ids == again
    assert first_ids[0] == "so_survey_2016:5755"
    assert report.skipped["no_label"] == 6511
    assert report.events >= 3


def test_electricity_drops_date_and_nswprice(electricity: list[dict[str, Any]]) -> None:
    first = electricity[0]
    assert "date" not in first
    assert "nswprice" not in first
    assert first["class"] == "UP"
    assert electricity[1]["event_time"] == datetime(1996, 5, 7, 0, 30, tzinfo=UTC)


def test_convert_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "elec.avro"
    report = convert("electricity", out, limit=500)
    events = list(read_events(out))
    assert report.events == 500
    assert len(events) == 500
    expected = list(zip(range(500), iter_events("electricity"), strict=False))
    assert events == [e for _, e in expected]


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ValueError, match="job_postings"):
        next(iter_events("jobs"))
