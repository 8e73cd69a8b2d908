from __future__ import annotations

import gzip
import os
import stat
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


SURVEY_HEADER = (
    "occupation,tech_do,tech_want,self_identification,education,dev_environment,"
    "experience_range,country,company_size_range,industry,age_range,gender,"
    "salary_range,employment_status,remote,desktop_os,team_size_range,"
    "programming_ability\n"
)
AIJOBS_HEADER = (
    "work_year,experience_level,employment_type,job_title,salary,salary_currency,"
    "salary_in_usd,employee_residence,remote_ratio,company_location,company_size\n"
)


def _without_column(header: str, column: str) -> str:
    names = header.strip().split(",")
    names.remove(column)
    return ",".join(names) + "\n" + "," * (len(names) - 1) + "\n"


@pytest.mark.parametrize(
    ("dataset", "header", "column"),
    [
        ("job_postings", HEADER, "job_posted_date"),
        ("job_postings", HEADER, "job_title_short"),
        ("job_postings", HEADER, "job_skills"),
        ("so_survey_2016", SURVEY_HEADER, "occupation"),
        ("so_survey_2016", SURVEY_HEADER, "dev_environment"),
        ("aijobs_salaries", AIJOBS_HEADER, "work_year"),
        ("aijobs_salaries", AIJOBS_HEADER, "job_title"),
    ],
)
def test_missing_column_rejected_before_rows(
    tmp_path: Path, dataset: str, header: str, column: str
) -> None:
    source = tmp_path / "source.csv"
    source.write_text(_without_column(header, column))
    report = ConversionReport(dataset)
    with pytest.raises(ValueError) as caught:
        next(iter_events(dataset, source, report))
    message = str(caught.value)
    assert str(source) in message
    assert f"lacks the required column(s) {column!r}" in message
    assert report.rows_read == 0


def test_missing_label_column_allowed_unlabelled(tmp_path: Path) -> None:
    source = tmp_path / "requests.csv"
    source.write_text(
        HEADER.replace("job_title_short,", "") + posting_row().split(",", 1)[1]
    )
    events = list(iter_events("job_postings", source, keep_unlabelled=True))
    assert len(events) == 1
    assert events[0]["job_role"] is None


def test_empty_csv_rejected(tmp_path: Path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("")
    with pytest.raises(ValueError, match="is empty: expected a header row"):
        next(iter_events("aijobs_salaries", source))


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_byte_order_mark_ignored(tmp_path: Path, suffix: str) -> None:
    data = ("\ufeff" + HEADER + posting_row()).encode("utf-8")
    source = tmp_path / f"postings{suffix}"
    source.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    report = ConversionReport("job_postings")
    events = list(iter_events("job_postings", source, report))
    assert dict(report.skipped) == {}
    assert [event["job_role"] for event in events] == ["Data Analyst"]


def test_repeated_header_column_rejected(tmp_path: Path) -> None:
    source = tmp_path / "postings.csv"
    source.write_text(
        HEADER.strip() + ",job_title_short\n" + posting_row().strip() + ",Other\n"
    )
    with pytest.raises(ValueError) as caught:
        next(iter_events("job_postings", source))
    assert str(source) in str(caught.value)
    assert "repeats the header column(s) 'job_title_short'" in str(caught.value)


ARFF_HEADER = (
    "@relation elec\n\n"
    "@attribute date numeric\n@attribute day {1,2,3,4,5,6,7}\n"
    "@attribute period numeric\n@attribute nswprice numeric\n"
    "@attribute nswdemand numeric\n@attribute vicprice numeric\n"
    "@attribute vicdemand numeric\n@attribute transfer numeric\n"
    "@attribute class {UP,DOWN}\n\n"
)
ARFF_ROW = "0,2,0,0.056443,0.439155,0.003467,0.422915,0.414912,UP\n"


def test_arff_attributes_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.arff"
    good.write_text(ARFF_HEADER + "@data\n" + ARFF_ROW)
    assert [e["class"] for e in iter_events("electricity", good)] == ["UP"]

    reordered = tmp_path / "reordered.arff"
    reordered.write_text(
        ARFF_HEADER.replace("period", "PERIOD_TMP")
        .replace("nswdemand", "period")
        .replace("PERIOD_TMP", "nswdemand")
        + "@data\n"
        + ARFF_ROW
    )
    with pytest.raises(ValueError, match="expected date, day, period") as caught:
        next(iter_events("electricity", reordered))
    assert str(reordered) in str(caught.value)

    no_data = tmp_path / "no_data.arff"
    no_data.write_text(ARFF_HEADER + ARFF_ROW)
    with pytest.raises(ValueError, match="has no @data line"):
        next(iter_events("electricity", no_data))


def test_skip_example_shortens_long_value(tmp_path: Path) -> None:
    source = tmp_path / "postings.csv"
    source.write_text(HEADER + posting_row(salary="x" * 400))
    report = ConversionReport("job_postings")
    assert list(iter_events("job_postings", source, report)) == []
    example = report.examples["invalid_number"]
    assert example == f"row 1: salary_year_avg={'x' * 80!r}..."


def test_convert_failure_keeps_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "events.avro"
    out.write_bytes(b"previous events")
    bad_source = tmp_path / "postings.csv"
    bad_source.write_text(_without_column(HEADER, "job_posted_date"))
    with pytest.raises(ValueError, match="job_posted_date"):
        convert("job_postings", out, bad_source)
    with pytest.raises(FileNotFoundError, match="not found"):
        convert("job_postings", out, tmp_path / "absent.csv")
    assert out.read_bytes() == b"previous events"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.avro", "postings.csv"]


def test_convert_success_replaces_output(tmp_path: Path) -> None:
    out = tmp_path / "events.avro"
    out.write_bytes(b"previous events")
    source = tmp_path / "postings.csv"
    source.write_text(HEADER + posting_row())
    report = convert("job_postings", out, source)
    assert report.events == 1
    assert [e["job_role"] for e in read_events(out)] == ["Data Analyst"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.avro", "postings.csv"]


@pytest.mark.parametrize(
    ("file_name", "content", "expected"),
    [
        (
            "latin1.csv",
            HEADER.encode() + "Caf\u00e9,".encode("latin-1") + b"\n",
            "is not UTF-8 text (invalid continuation byte); save it as UTF-8",
        ),
        (
            "plain.csv.gz",
            HEADER.encode(),
            "is not a valid gzip file (Not a gzipped file (b'jo')); remove the .gz",
        ),
        (
            "truncated.csv.gz",
            gzip.compress((HEADER + posting_row() * 3).encode())[:-12],
            "is truncated or corrupt after 0 rows (Compressed file ended",
        ),
    ],
)
def test_convert_read_error_names_file(
    tmp_path: Path, file_name: str, content: bytes, expected: str
) -> None:
    source = tmp_path / file_name
    source.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        convert("job_postings", tmp_path / "out.avro", source)
    assert f"source file {str(source)!r} {expected}" in str(caught.value)


def test_convert_source_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught:
        convert("job_postings", tmp_path / "out.avro", tmp_path)
    assert f"source {str(tmp_path)!r} is not a file" in str(caught.value)
    assert "STREAMLEARN_DATA_DIR" not in str(caught.value)


def test_convert_refuses_own_source_and_special_output(tmp_path: Path) -> None:
    source = tmp_path / "postings.csv"
    source.write_text(HEADER + posting_row())
    with pytest.raises(ValueError, match="is the source file"):
        convert("job_postings", source, source)
    assert source.read_text() == HEADER + posting_row()

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    link = tmp_path / "link.avro"
    link.symlink_to(tmp_path / "target.avro")
    for out in (pipe, link):
        with pytest.raises(ValueError, match="is not a regular file"):
            convert("job_postings", out, source)
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert link.is_symlink()
