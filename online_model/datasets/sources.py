"""Converters from the four real source files to events, in stream order.

Each converter reads its whole source (the largest has 74,301 rows), puts the
rows in the dataset's stream order and yields events shaped by the Avro
schema of the same name. Event ids are ``<source file stem>:<data row>``, the
1-based row number in the source file, so they are stable across runs and
unique even where the source repeats a row word for word.

A CSV source must have every column its converter reads, except the label
column when unlabelled rows are kept. A header that lacks one, or repeats a
column name, raises ValueError before the first row is converted.
"""

from __future__ import annotations

import ast
import csv
import random
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from online_model.datasets.base import (
    ConversionReport,
    Event,
    RowError,
    check_header,
    label_or_skip,
    open_text,
    optional_float,
    optional_str,
    parse_rows,
    parse_utc_time,
    shown_value,
)

JOB_POSTINGS_FILE = "data_jobs_2023_salaried.csv.gz"
SURVEY_FILE = "so_survey_2016.csv.gz"
AIJOBS_FILE = "aijobs_salaries_2025-01-19.csv.gz"
ELECTRICITY_FILE = "elecNormNew.arff.gz"

# Seed of the fixed shuffle of the survey, whose rows come grouped by country.
SURVEY_SHUFFLE_SEED = 2016
SURVEY_OPENING_DAY = datetime(2016, 1, 7, tzinfo=UTC)
# The Elec2 rows are consecutive half-hours from 7 May 1996 to 5 Dec 1998.
ELECTRICITY_START = datetime(1996, 5, 7, tzinfo=UTC)
ELECTRICITY_STEP = timedelta(minutes=30)


def _csv_rows(
    path: Path, columns: Collection[str], label: str, keep_unlabelled: bool
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield numbered rows after checking the header for ``columns`` and ``label``."""
    required = list(columns) if keep_unlabelled else [*columns, label]
    with open_text(path) as text:
        reader = csv.DictReader(text)
        check_header(path, reader.fieldnames, required)
        yield from enumerate(reader, start=1)


def _event_id(path: Path, row_number: int) -> str:
    stem = path.name.split(".")[0]
    return f"{stem}:{row_number}"


# --- job postings -------------------------------------------------------------

JOB_POSTINGS_LABEL = "job_title_short"
JOB_POSTINGS_COLUMNS = (
    "job_posted_date",
    "job_skills",
    "job_country",
    "job_schedule_type",
    "job_work_from_home",
    "job_no_degree_mention",
    "job_health_insurance",
    "job_via",
    "salary_year_avg",
    "salary_hour_avg",
)


def _boolean(row: dict[str, str], column: str) -> bool | None:
    text = row.get(column, "")
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    raise RowError(
        "invalid_boolean", f"{column}={shown_value(text)}; expected True or False"
    )


def _skill_list(text: str) -> list[str]:
    if text == "":
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise RowError(
            "invalid_skills", f"job_skills={shown_value(text)} is not a list literal"
        ) from None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RowError(
            "invalid_skills",
            f"job_skills={shown_value(text)} is not a list of strings",
        )
    return value


def job_postings(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield job postings sorted by posting time (ties in file order)."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        label = (
            optional_str(row, JOB_POSTINGS_LABEL)
            if keep_unlabelled
            else label_or_skip(row, JOB_POSTINGS_LABEL)
        )
        return {
            "event_id": _event_id(path, row_number),
            "event_time": parse_utc_time(row["job_posted_date"], "%Y-%m-%d %H:%M:%S"),
            "skills": _skill_list(row.get("job_skills", "")),
            "country": optional_str(row, "job_country"),
            "schedule_type": optional_str(row, "job_schedule_type"),
            "work_from_home": _boolean(row, "job_work_from_home"),
            "no_degree_mention": _boolean(row, "job_no_degree_mention"),
            "health_insurance": _boolean(row, "job_health_insurance"),
            "source_site": optional_str(row, "job_via"),
            "salary_year_avg": optional_float(row, "salary_year_avg"),
            "salary_hour_avg": optional_float(row, "salary_hour_avg"),
            "job_role": label,
        }

    rows = _csv_rows(path, JOB_POSTINGS_COLUMNS, JOB_POSTINGS_LABEL, keep_unlabelled)
    parsed = list(parse_rows(rows, parse, report))
    parsed.sort(key=lambda item: (item[1]["event_time"], item[0]))
    for _, event in parsed:
        yield event


# --- 2016 Stack Overflow survey ---------------------------------------------

SURVEY_LABEL = "occupation"
SURVEY_LIST_COLUMNS = (
    "tech_do",
    "tech_want",
    "self_identification",
    "education",
    "dev_environment",
)
SURVEY_TEXT_COLUMNS = (
    "experience_range",
    "country",
    "company_size_range",
    "industry",
    "age_range",
    "gender",
    "salary_range",
    "employment_status",
    "remote",
    "desktop_os",
    "team_size_range",
)
SURVEY_COLUMNS = (*SURVEY_LIST_COLUMNS, *SURVEY_TEXT_COLUMNS, "programming_ability")


def _semicolon_list(row: dict[str, str], column: str) -> list[str]:
    text = row.get(column, "")
    return [part.strip() for part in text.split(";") if part.strip()] if text else []


def so_survey_2016(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield survey responses in a fixed seeded shuffle (rows have no time)."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        label = (
            optional_str(row, SURVEY_LABEL)
            if keep_unlabelled
            else label_or_skip(row, SURVEY_LABEL)
        )
        event: Event = {
            "event_id": _event_id(path, row_number),
            "event_time": SURVEY_OPENING_DAY,
        }
        for column in SURVEY_LIST_COLUMNS:
            event[column] = _semicolon_list(row, column)
        for column in SURVEY_TEXT_COLUMNS:
            event[column] = optional_str(row, column)
        event["programming_ability"] = optional_float(row, "programming_ability")
        event["occupation"] = label
        return event

    rows = _csv_rows(path, SURVEY_COLUMNS, SURVEY_LABEL, keep_unlabelled)
    parsed = [event for _, event in parse_rows(rows, parse, report)]
    random.Random(SURVEY_SHUFFLE_SEED).shuffle(parsed)
    yield from parsed


# --- aijobs.net salaries ------------------------------------------------------

AIJOBS_LABEL = "job_title"
AIJOBS_COLUMNS = (
    "work_year",
    "experience_level",
    "employment_type",
    "employee_residence",
    "company_location",
    "remote_ratio",
    "company_size",
    "salary_currency",
    "salary_in_usd",
)


def aijobs_salaries(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield salary reports bottom-up: the publisher prepends new rows."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        label = (
            optional_str(row, AIJOBS_LABEL)
            if keep_unlabelled
            else label_or_skip(row, AIJOBS_LABEL)
        )
        year_text = row.get("work_year", "")
        if not year_text.isdigit():
            raise RowError("invalid_year", f"work_year={shown_value(year_text)}")
        remote = optional_float(row, "remote_ratio")
        return {
            "event_id": _event_id(path, row_number),
            "event_time": datetime(int(year_text), 1, 1, tzinfo=UTC),
            "work_year": int(year_text),
            "experience_level": optional_str(row, "experience_level"),
            "employment_type": optional_str(row, "employment_type"),
            "employee_residence": optional_str(row, "employee_residence"),
            "company_location": optional_str(row, "company_location"),
            "remote_ratio": None if remote is None else int(remote),
            "company_size": optional_str(row, "company_size"),
            "salary_currency": optional_str(row, "salary_currency"),
            "salary_in_usd": optional_float(row, "salary_in_usd"),
            "job_title": label,
        }

    rows = _csv_rows(path, AIJOBS_COLUMNS, AIJOBS_LABEL, keep_unlabelled)
    parsed = list(parse_rows(rows, parse, report))
    for _, event in reversed(parsed):
        yield event


# --- Electricity (Elec2) ------------------------------------------------------

_ELECTRICITY_COLUMNS = (
    "date",
    "day",
    "period",
    "nswprice",
    "nswdemand",
    "vicprice",
    "vicdemand",
    "transfer",
    "class",
)


def _arff_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield numbered data rows after checking the declared attributes.

    Values are matched to columns by position, so the file must declare
    exactly the Elec2 attributes, in order.
    """
    with open_text(path) as text:
        attributes: list[str] = []
        for line in text:
            words = line.split(maxsplit=2)
            keyword = words[0].lower() if words else ""
            if keyword == "@attribute" and len(words) > 1:
                attributes.append(words[1].strip("'\""))
            elif keyword == "@data":
                break
        else:
            raise ValueError(
                f"ARFF file {str(path)!r} has no @data line; expected the Elec2 "
                "file elecNormNew.arff"
            )
        if attributes != list(_ELECTRICITY_COLUMNS):
            raise ValueError(
                f"ARFF file {str(path)!r} declares the attributes "
                f"{', '.join(attributes) or '(none)'}; expected "
                f"{', '.join(_ELECTRICITY_COLUMNS)}, in that order"
            )
        for row_number, line in enumerate(text, start=1):
            values = line.strip().split(",")
            yield row_number, dict(zip(_ELECTRICITY_COLUMNS, values, strict=False))


def electricity(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield half-hours in row order, without ``date`` and ``nswprice``."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        if len(row) != len(_ELECTRICITY_COLUMNS):
            raise RowError(
                "wrong_column_count",
                f"{len(row)} values, expected {len(_ELECTRICITY_COLUMNS)}",
            )
        label = optional_str(row, "class")
        if label not in ("UP", "DOWN") and not (keep_unlabelled and label is None):
            raise RowError(
                "invalid_label",
                f"class={shown_value(label or '')}; expected UP or DOWN",
            )
        event: Event = {
            "event_id": _event_id(path, row_number),
            "event_time": ELECTRICITY_START + (row_number - 1) * ELECTRICITY_STEP,
            "day": row["day"],
        }
        for column in ("period", "nswdemand", "vicprice", "vicdemand", "transfer"):
            value = optional_float(row, column)
            if value is None:
                raise RowError("missing_number", f"{column} is empty")
            event[column] = value
        event["class"] = label
        return event

    for _, event in parse_rows(_arff_rows(path), parse, report):
        yield event
