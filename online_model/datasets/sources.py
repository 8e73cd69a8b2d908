"""Converters from the four real source files to events, in stream order.

Each converter reads its whole source (the largest has 74,301 rows), puts the
rows in the dataset's stream order and yields events shaped by the Avro
schema of the same name. Event ids are ``<source file stem>:<data row>``, the
1-based row number in the source file, so they are stable across runs and
unique even where the source repeats a row word for word.
"""

from __future__ import annotations

import ast
import csv
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from online_model.datasets.base import (
    ConversionReport,
    Event,
    RowError,
    label_or_skip,
    open_text,
    optional_float,
    optional_str,
    parse_rows,
    utc_millis,
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


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with open_text(path) as text:
        yield from enumerate(csv.DictReader(text), start=1)


def _event_id(path: Path, row_number: int) -> str:
    stem = path.name.split(".")[0]
    return f"{stem}:{row_number}"


# --- job postings -------------------------------------------------------------


def _boolean(row: dict[str, str], column: str) -> bool | None:
    text = row.get(column, "")
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    raise RowError("invalid_boolean", f"{column}={text!r}; expected True or False")


def _skill_list(text: str) -> list[str]:
    if text == "":
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise RowError(
            "invalid_skills", f"job_skills={text[:60]!r} is not a list literal"
        ) from None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RowError(
            "invalid_skills", f"job_skills={text[:60]!r} is not a list of strings"
        )
    return value


def job_postings(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield job postings sorted by posting time (ties in file order)."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        label = (
            optional_str(row, "job_title_short")
            if keep_unlabelled
            else label_or_skip(row, "job_title_short")
        )
        return {
            "event_id": _event_id(path, row_number),
            "event_time": utc_millis(row["job_posted_date"], "%Y-%m-%d %H:%M:%S"),
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

    parsed = list(parse_rows(_csv_rows(path), parse, report))
    parsed.sort(key=lambda item: (item[1]["event_time"], item[0]))
    for _, event in parsed:
        yield event


# --- 2016 Stack Overflow survey ---------------------------------------------


def _semicolon_list(row: dict[str, str], column: str) -> list[str]:
    text = row.get(column, "")
    return [part.strip() for part in text.split(";") if part.strip()] if text else []


def so_survey_2016(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield survey responses in a fixed seeded shuffle (rows have no time)."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        label = (
            optional_str(row, "occupation")
            if keep_unlabelled
            else label_or_skip(row, "occupation")
        )
        event: Event = {
            "event_id": _event_id(path, row_number),
            "event_time": SURVEY_OPENING_DAY,
        }
        for column in (
            "tech_do",
            "tech_want",
            "self_identification",
            "education",
            "dev_environment",
        ):
            event[column] = _semicolon_list(row, column)
        for column in (
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
        ):
            event[column] = optional_str(row, column)
        event["programming_ability"] = optional_float(row, "programming_ability")
        event["occupation"] = label
        return event

    parsed = [event for _, event in parse_rows(_csv_rows(path), parse, report)]
    random.Random(SURVEY_SHUFFLE_SEED).shuffle(parsed)
    yield from parsed


# --- aijobs.net salaries ------------------------------------------------------


def aijobs_salaries(
    path: Path, report: ConversionReport, keep_unlabelled: bool = False
) -> Iterator[Event]:
    """Yield salary reports bottom-up: the publisher prepends new rows."""

    def parse(row: dict[str, str], row_number: int) -> Event:
        label = (
            optional_str(row, "job_title")
            if keep_unlabelled
            else label_or_skip(row, "job_title")
        )
        year_text = row.get("work_year", "")
        if not year_text.isdigit():
            raise RowError("invalid_year", f"work_year={year_text!r}")
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

    parsed = list(parse_rows(_csv_rows(path), parse, report))
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
    with open_text(path) as text:
        for line in text:
            if line.strip().lower() == "@data":
                break
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
            raise RowError("invalid_label", f"class={label!r}; expected UP or DOWN")
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
