"""``streamlearn publish``: what it sends, and one-line errors on bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from streaming_jobs import pull_events

from online_model.datasets import iter_events, write_events
from online_model.event_files import InputFileError, read_sources
from online_model.spec import load_spec
from streaming import publish
from streaming.topics import (
    DEFAULT_PROJECT,
    JobTopics,
    TopicSetupError,
    delete_topics,
    ensure_topics,
)

HEADER = (
    "job_title_short,job_title,job_location,job_via,job_schedule_type,"
    "job_work_from_home,search_location,job_posted_date,job_no_degree_mention,"
    "job_health_insurance,job_country,salary_rate,salary_year_avg,"
    "salary_hour_avg,company_name,job_skills"
)


def _row(role: str, posted: str) -> str:
    return (
        f"{role},title,Berlin,via LinkedIn,Full-time,False,Germany,{posted},"
        "True,False,Germany,year,90000.0,,Acme,\"['sql', 'python']\""
    )


GOOD_ROWS = [
    _row("Data Engineer", "2023-01-02 10:00:00"),
    _row("Data Analyst", "2023-01-03 10:00:00"),
    _row("Data Scientist", "2023-01-04 10:00:00"),
]


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run publish; return the exit code and stderr."""
    try:
        code = publish.main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


# ------------------------------------------------------------ reading sources


def test_files_replace_the_dataset(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "only,three,columns", _row("Data Engineer", "yesterday")]
    csv_file = _write_csv(tmp_path / "postings.csv", rows)
    reports: list[Any] = []
    events = list(read_sources([str(csv_file)], "job_postings", reports))
    assert [event["job_role"] for event in events] == [
        "Data Engineer",
        "Data Analyst",
        "Data Scientist",
    ]
    assert [event["event_id"] for event in events] == [
        "postings:1",
        "postings:2",
        "postings:3",
    ]
    assert len(reports) == 1
    assert reports[0].rows_read == 5
    assert dict(reports[0].skipped) == {"wrong_column_count": 1, "invalid_time": 1}


def test_avro_and_csv_files_in_order(tmp_path: Path) -> None:
    csv_file = _write_csv(tmp_path / "a.csv", GOOD_ROWS[:1])
    first = list(read_sources([str(csv_file)], "job_postings"))
    avro_file = tmp_path / "b.avro"
    with open(avro_file, "wb") as stream:
        write_events([dict(first[0], event_id="from-avro")], "job_postings", stream)
    events = list(read_sources([str(csv_file), str(avro_file)], "job_postings"))
    assert [event["event_id"] for event in events] == ["a:1", "from-avro"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.csv", (HEADER + "\n").encode() + "Caf\xe9".encode("latin-1"), "UTF-8"),
        ("fake.csv.gz", b"\x1f\x8b" + b"not gzip at all", "gzip"),
        (
            "long.csv",
            (HEADER + "\n" + "x" * 140_000 + "\n").encode(),
            "field larger than field limit",
        ),
    ],
)
def test_unreadable_csv_names_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=message) as raised:
        list(read_sources([str(path)], "job_postings"))
    assert name in str(raised.value)


# ------------------------------------------------------------ command errors


def _avro_of(path: Path, schema: dict[str, Any], records: list[Any]) -> Path:
    with open(path, "wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(schema), records)
    return path


def _bad_inputs(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    (tmp_path / "empty.avro").write_bytes(b"")
    (tmp_path / "text.avro").write_bytes(b"not avro")
    (tmp_path / "folder.avro").mkdir()
    (tmp_path / "events.json").write_text("{}")
    (tmp_path / "fake.csv.gz").write_text(HEADER)
    other = {
        "type": "record",
        "name": "Other",
        "fields": [{"name": "x", "type": "int"}],
    }
    _avro_of(tmp_path / "other.avro", other, [{"x": 1}])
    spec = ["--spec", "job_postings"]
    return [
        ("missing file", [*spec, str(tmp_path / "nosuch.avro")], "not found"),
        ("empty avro", [*spec, str(tmp_path / "empty.avro")], "cannot read its header"),
        ("text avro", [*spec, str(tmp_path / "text.avro")], "cannot read its header"),
        ("folder", [*spec, str(tmp_path / "folder.avro")], "is not a file"),
        ("suffix", [*spec, str(tmp_path / "events.json")], "unsupported file"),
        (
            "not gzip",
            ["--dataset", "job_postings", str(tmp_path / "fake.csv.gz")],
            "is not gzip-compressed",
        ),
        (
            "csv without dataset",
            [*spec, str(tmp_path / "fake.csv.gz")],
            "needs --dataset",
        ),
        (
            "unrelated schema",
            [*spec, str(tmp_path / "other.avro")],
            "lacks the fields event_id, event_time, skills",
        ),
        ("unknown spec", ["--spec", "nosuch", str(tmp_path / "other.avro")], "nosuch"),
        ("unknown dataset", ["--dataset", "nosuch"], "invalid choice: 'nosuch'"),
        ("negative limit", ["--dataset", "electricity", "--limit", "-5"], "'-5'"),
        ("bad burst", ["--dataset", "electricity", "--wrong-labels", "abc"], "'abc'"),
        (
            "negative burst",
            ["--dataset", "electricity", "--wrong-labels=-1:5"],
            "0 or more",
        ),
        (
            "zero per message",
            ["--dataset", "electricity", "--events-per-message", "0"],
            "'0'",
        ),
        ("fraction", ["--dataset", "electricity", "--unlabelled-fraction", "2"], "'2'"),
        (
            "bad job name",
            ["--dataset", "electricity", "--job-name", "bad name!"],
            "job name 'bad name!' cannot prefix Pub/Sub ids",
        ),
        (
            "bad topic path",
            ["--dataset", "electricity", "--topic", "not-a-topic"],
            "invalid topic 'not-a-topic': expected projects/PROJECT/topics/TOPIC",
        ),
    ]


def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, argv, message in _bad_inputs(tmp_path):
        code, err = _run(argv, capsys)
        assert code == 2, name
        assert message in err, (name, err)
        assert "Traceback" not in err, name
        assert "streamlearn publish" in err.splitlines()[-1], name


# ------------------------------------------------------------ emulator


@pytest.fixture
def topics(pubsub_emulator: str) -> Any:
    job = JobTopics(DEFAULT_PROJECT, f"publish-{os.getpid()}-{time.time_ns()}")
    delete_topics(job)
    ensure_topics(job)
    yield job
    delete_topics(job)


def test_publish_sends_only_file_rows(
    tmp_path: Path, topics: JobTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*GOOD_ROWS, "only,three,columns", "short,row"]
    csv_file = tmp_path / "postings.csv.gz"
    with gzip.open(csv_file, "wt", encoding="utf-8") as stream:
        stream.write("\n".join([HEADER, *rows]) + "\n")
    argv = ["--dataset", "job_postings", "--topic", topics.events_topic]
    argv += ["--format", "json", str(csv_file)]
    assert publish.main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["events"] == 3
    assert stats["messages"] == 1
    assert stats["skipped_rows"] == {"wrong_column_count": 2}

    events = pull_events(topics.events_subscription, 3)
    assert sorted(event["event_id"] for event in events) == [
        "postings:1",
        "postings:2",
        "postings:3",
    ]


def test_publish_text_reports_skipped_rows(
    tmp_path: Path, topics: JobTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*GOOD_ROWS, "only,three,columns"]
    csv_file = _write_csv(tmp_path / "postings.csv", rows)
    argv = ["--dataset", "job_postings", "--topic", topics.events_topic]
    assert publish.main([*argv, str(csv_file)]) == 0
    out = capsys.readouterr().out
    assert "published 3 events in 1 message " in out
    assert "rows skipped: 1 (wrong_column_count 1)" in out


def test_publish_to_missing_topic_fails_in_one_line(
    topics: JobTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"projects/{DEFAULT_PROJECT}/topics/{topics.job_name}-missing"
    argv = ["--dataset", "electricity", "--limit", "10", "--topic", missing]

    code, err = _run(argv, capsys)

    assert code == 1
    assert err.strip().splitlines() == [
        f"streamlearn publish: publishing to {missing} failed: Topic not found "
        "(stopped after reading 10 events, of which the topic may have fewer)"
    ]


def test_publish_sends_unlabelled_rows_as_requests(
    tmp_path: Path, topics: JobTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [_row("", "2023-01-05 10:00:00"), *GOOD_ROWS]
    csv_file = _write_csv(tmp_path / "postings.csv", rows)
    argv = ["--dataset", "job_postings", "--topic", topics.events_topic]
    assert publish.main([*argv, str(csv_file)]) == 0
    assert "published 4 events in 1 message " in capsys.readouterr().out

    events = pull_events(topics.events_subscription, 4)
    labels = {event["event_id"]: event["job_role"] for event in events}
    assert labels == {
        "postings:1": None,
        "postings:2": "Data Engineer",
        "postings:3": "Data Analyst",
        "postings:4": "Data Scientist",
    }


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("localhost", "expected HOST:PORT"),
        ("127.0.0.1:1", "no Pub/Sub emulator responds at PUBSUB_EMULATOR_HOST="),
    ],
)
def test_unusable_emulator_address_one_line(
    host: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    code, err = _run(["--dataset", "electricity", "--job-name", "j1"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert message in err


@pytest.mark.parametrize("manage", [ensure_topics, delete_topics])
def test_topics_only_on_emulator(
    manage: Callable[[JobTopics], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)

    with pytest.raises(TopicSetupError, match="PUBSUB_EMULATOR_HOST is not set"):
        manage(JobTopics(DEFAULT_PROJECT, "never-created"))


def test_publish_wrongly_typed_avro_fails_in_one_line(
    tmp_path: Path, topics: JobTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec("job_postings")
    schema = json.loads(json.dumps(spec.schema))
    for field in schema["fields"]:
        if field["name"] == "salary_year_avg":
            field["type"] = ["null", "string"]
    events = [
        dict(event, salary_year_avg="n/a")
        for event in itertools.islice(iter_events("job_postings"), 3)
    ]
    avro_file = tmp_path / "typed.avro"
    with open(avro_file, "wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(schema), events)
    argv = ["--spec", "job_postings", "--topic", topics.events_topic, str(avro_file)]

    code, err = _run(argv, capsys)

    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "an event does not match the job_postings schema: " in lines[0]
    assert "salary_year_avg" in lines[0]
