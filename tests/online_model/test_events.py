from __future__ import annotations

import math
import sys
from typing import Any

import pytest

from online_model import events as ev
from online_model.events import EventScreen, check_event, rejecting
from online_model.spec import load_spec

SPEC = load_spec("job_postings")


def posting(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "p1",
        "event_time": 1_672_531_200_000,
        "skills": ["sql", "python"],
        "country": "Germany",
        "schedule_type": "Full-time",
        "work_from_home": False,
        "no_degree_mention": True,
        "health_insurance": None,
        "source_site": "via LinkedIn",
        "salary_year_avg": 90000.0,
        "salary_hour_avg": None,
        "job_role": "Data Engineer",
    }
    event.update(changes)
    return event


def reasons(event: Any) -> list[str]:
    return [problem.reason for problem in check_event(event, SPEC)]


def test_clean_event_has_no_problems() -> None:
    assert check_event(posting(), SPEC) == []


def test_missing_field_rejects() -> None:
    event = posting()
    del event["country"]
    problems = check_event(event, SPEC)
    assert [p.reason for p in problems] == [ev.MISSING_FIELD]
    assert problems[0].field == "country"
    assert problems[0].rejects


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("skills", "sql, python"),
        ("skills", ["sql", 3]),
        ("country", 49),
        ("work_from_home", "no"),
        ("salary_year_avg", "90000"),
        ("salary_year_avg", True),
        ("event_id", 7),
    ],
)
def test_wrong_type_rejects(field: str, value: Any) -> None:
    problems = check_event(posting(**{field: value}), SPEC)
    assert [p.reason for p in problems] == [ev.WRONG_TYPE]
    assert problems[0].field == field


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_number_rejects(value: float) -> None:
    assert reasons(posting(salary_year_avg=value)) == [ev.NON_FINITE_NUMBER]


def test_null_in_required_field_rejects() -> None:
    assert reasons(posting(skills=None)) == [ev.NULL_VALUE]


def test_empty_skills_is_a_note() -> None:
    problems = check_event(posting(skills=[]), SPEC)
    assert [p.reason for p in problems] == [ev.EMPTY_LIST]
    assert not problems[0].rejects


def test_missing_label_is_prediction_request() -> None:
    problems = check_event(posting(job_role=None), SPEC)
    assert [p.reason for p in problems] == [ev.NO_LABEL]
    assert not problems[0].rejects


def test_empty_label_rejects() -> None:
    assert reasons(posting(job_role="")) == [ev.INVALID_LABEL]
    assert reasons(posting(job_role="  ")) == [ev.INVALID_LABEL]
    assert reasons(posting(job_role=" Data Engineer")) == []


@pytest.mark.parametrize(
    "label", ["\u200b", "\x00", "Data\x00Engineer", "Data\u00a0Engineer", "a\tb"]
)
def test_label_that_does_not_print_rejects(label: str) -> None:
    problems = check_event(posting(job_role=label), SPEC)
    assert [p.reason for p in problems] == [ev.INVALID_LABEL]
    assert "does not print" in problems[0].detail
    assert SCREEN.screen(posting(job_role=label)) == ev.NEEDS_CHECK


def test_printable_labels_pass() -> None:
    for label in ["Data Engineer", "Ingénieur données", "データ", "C++ dev 🙂"]:
        assert reasons(posting(job_role=label)) == []
        assert SCREEN.screen(posting(job_role=label)) == ev.CLEAN


def test_blank_event_id_rejects() -> None:
    assert reasons(posting(event_id="")) == [ev.INVALID_EVENT_ID]
    assert reasons(posting(event_id="  ")) == [ev.INVALID_EVENT_ID]
    assert reasons(posting(event_id=" a ")) == []
    assert reasons(posting(event_id="x" * 1024)) == []
    assert reasons(posting(event_id="é" * 512)) == []
    assert reasons(posting(event_id="x" * 1025)) == [ev.INVALID_EVENT_ID]
    assert reasons(posting(event_id="é" * 513)) == [ev.INVALID_EVENT_ID]


def test_unknown_label_with_vocabulary() -> None:
    problems = check_event(
        posting(job_role="Prompt Engineer"), SPEC, labels=["Data Engineer"]
    )
    assert [p.reason for p in problems] == [ev.UNKNOWN_LABEL]
    assert not problems[0].rejects


def test_unseen_category_is_fine() -> None:
    assert reasons(posting(country="Atlantis")) == []


def test_not_a_dict_rejects() -> None:
    assert reasons(["not", "a", "record"]) == [ev.NOT_A_RECORD]


def test_integer_salary_accepted() -> None:
    assert reasons(posting(salary_year_avg=90000)) == []


SCREEN = EventScreen(SPEC)
BAD_OR_NOTED = [
    posting(skills="sql, python"),
    posting(skills=["sql", 3]),
    posting(skills=None),
    posting(country=49),
    posting(work_from_home=1),
    posting(salary_year_avg="90000"),
    posting(salary_year_avg=True),
    posting(salary_year_avg=math.nan),
    posting(salary_year_avg=-math.inf),
    posting(event_id=7),
    posting(event_id=""),
    posting(event_id=" \t"),
    posting(event_id="x" * 1025),
    posting(event_id="é" * 513),
    posting(job_role=""),
    posting(job_role=" \t "),
    {k: v for k, v in posting().items() if k != "source_site"},
    "not a record",
]


@pytest.mark.parametrize("event", BAD_OR_NOTED)
def test_screen_passes_problems_on(event: Any) -> None:
    assert check_event(event, SPEC) != []
    assert SCREEN.screen(event) == ev.NEEDS_CHECK


def test_screen_clean_and_unlabelled() -> None:
    assert SCREEN.screen(posting()) == ev.CLEAN
    assert SCREEN.screen(posting(salary_year_avg=90000)) == ev.CLEAN
    assert SCREEN.screen(posting(skills=[])) == ev.CLEAN
    assert SCREEN.screen(posting(job_role=None)) == ev.UNLABELLED


def test_screen_agrees_on_real_stream(job_postings: list[dict[str, Any]]) -> None:
    for event in job_postings:
        problems = check_event(event, SPEC)
        clean = all(p.reason == ev.EMPTY_LIST for p in problems)
        assert (SCREEN.screen(event) == ev.CLEAN) == clean


def test_screen_batch_matches_screen() -> None:
    clean = [posting(event_id=f"c{i}") for i in range(3)]
    batch = [*clean, *BAD_OR_NOTED, posting(job_role=None), posting(skills=[])]
    expected = [SCREEN.screen(event) for event in batch]
    assert SCREEN.screen_batch(batch) == expected
    assert SCREEN.screen_batch(batch[::-1]) == expected[::-1]
    assert expected[:3] == [ev.CLEAN] * 3
    assert expected[-2:] == [ev.UNLABELLED, ev.CLEAN]


def test_screen_batch_one_bad_value() -> None:
    for bad in BAD_OR_NOTED:
        batch = [posting(event_id="a"), bad, posting(event_id="b")]
        assert SCREEN.screen_batch(batch) == [ev.CLEAN, ev.NEEDS_CHECK, ev.CLEAN]


def test_screen_batch_overflowing_sum() -> None:
    # The column's sum overflows to infinity, but every value is finite.
    batch = [posting(salary_year_avg=1.7e308), posting(salary_year_avg=1.7e308)]
    assert SCREEN.screen_batch(batch) == [ev.CLEAN] * 2
    # An int too large for a double is not a finite double.
    batch.append(posting(salary_year_avg=10**400))
    batch.append(posting(salary_year_avg=math.inf))
    assert SCREEN.screen_batch(batch) == [*[ev.CLEAN] * 2, *[ev.NEEDS_CHECK] * 2]


def test_screen_batch_empty_and_all_bad() -> None:
    assert SCREEN.screen_batch([]) == []
    assert SCREEN.screen_batch(["a", None, 3]) == [ev.NEEDS_CHECK] * 3


def test_screen_batch_agrees_on_real_stream(
    job_postings: list[dict[str, Any]],
) -> None:
    expected = [SCREEN.screen(event) for event in job_postings]
    assert SCREEN.screen_batch(job_postings) == expected


def test_screen_type_cache_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "MAX_TYPE_COMBINATIONS", 1)
    screen = EventScreen(SPEC)
    events = [
        posting(),
        posting(salary_year_avg=90000),
        posting(job_role=None),
        posting(salary_year_avg=math.nan),
        posting(salary_year_avg=90000, salary_hour_avg=math.inf),
    ]
    for _ in range(2):
        statuses = [screen.screen(event) for event in events]
        assert statuses[:3] == [ev.CLEAN, ev.CLEAN, ev.UNLABELLED]
        assert statuses[3:] == [ev.NEEDS_CHECK, ev.NEEDS_CHECK]
    assert len(screen._value_tests) == 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"salary_year_avg": 10**400}, ev.NON_FINITE_NUMBER),
        ({"salary_year_avg": -(10**400)}, ev.NON_FINITE_NUMBER),
        ({"event_time": 2**63}, ev.WRONG_TYPE),
        ({"event_time": -(2**63) - 1}, ev.WRONG_TYPE),
    ],
)
def test_integers_outside_avro_range(changes: dict[str, Any], reason: str) -> None:
    event = posting(**changes)
    screen = EventScreen(SPEC)

    assert reasons(event) == [reason]
    assert screen.screen(event) == ev.NEEDS_CHECK
    assert screen.screen_batch([posting(), event]) == [ev.CLEAN, ev.NEEDS_CHECK]


def test_integers_at_range_edges_pass() -> None:
    # Event times in milliseconds from 0001-01-01 to 9999-12-31 (UTC).
    events = [
        posting(event_time=-62_135_596_800_000),
        posting(event_time=253_402_300_799_999),
        posting(salary_year_avg=2**1000),
    ]
    screen = EventScreen(SPEC)

    assert [reasons(event) for event in events] == [[], [], []]
    assert screen.screen_batch(events) == [ev.CLEAN] * 3


@pytest.mark.parametrize(
    "event",
    [
        posting(event_time=-62_135_596_800_001),
        posting(event_time=253_402_300_800_000),
        posting(event_time=2**63 - 1),
        posting(salary_year_avg=int(sys.float_info.max) + 1),
    ],
)
def test_integers_past_range_rejected(event: dict[str, Any]) -> None:
    clean = posting(event_id="clean")
    problem = rejecting(check_event(event, SPEC))

    assert problem is not None
    assert SCREEN.screen(event) == ev.NEEDS_CHECK
    assert SCREEN.screen_batch([clean, event]) == [ev.CLEAN, ev.NEEDS_CHECK]
