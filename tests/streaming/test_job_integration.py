"""The real job on the DirectRunner against the Pub/Sub emulator, on real data.

Each test checks that the counts add up: every event published is learned,
held out, given a prediction, dead-lettered or counted as a duplicate.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import signal
from pathlib import Path
from typing import Any

import fastavro
import grpc
import pytest
from google.api_core.exceptions import NotFound
from google.cloud.pubsub_v1 import PublisherClient
from streaming_jobs import (
    decisions,
    finish,
    fresh_topics,
    job_postings,
    publish,
    publish_raw,
    pull_all,
    start_job,
    wait_for,
)

from online_model.events import check_event, rejecting
from online_model.spec import load_schema, load_spec
from rollback.announce import PubSubAnnouncer
from rollback.registry import open_registry
from streaming import demo, job, report
from streaming.pipeline import (
    CONTROL_ATTRIBUTE,
    INVALID_CONTROL_REASON,
    JobSettings,
    build_decoder,
    shared_decoder,
)
from streaming.topics import allow_large_emulator_messages
from streaming.wire import (
    DETAIL_ATTRIBUTE,
    REASON_ATTRIBUTE,
    RECORD_INDEX_ATTRIBUTE,
    encode_container,
)

SCHEMA = load_schema("job_postings")


def _unlabel_every(events: list[dict[str, Any]], step: int) -> int:
    for event in events[::step]:
        event["job_role"] = None
    return len(events[::step])


def _adds_up(summary: dict[str, Any]) -> None:
    outcomes = (
        summary["learned"]
        + summary["held_out"]
        + summary["predictions"]
        + summary["duplicates"]
        + summary["pending"]
        + summary["refused_non_finite"]
        + summary["over_label_limit"]
    )
    assert outcomes == summary["events_read"]
    assert summary["pending"] == 0


@pytest.mark.usefixtures("pubsub_emulator")
def test_stream_with_bad_messages(tmp_path: Path) -> None:
    topics = fresh_topics("e2e")
    events = job_postings(2400)
    requests = _unlabel_every(events, 20)
    bad_event = dict(job_postings(1, skip=5000)[0], salary_year_avg=math.nan)
    good_pair = job_postings(2, skip=5001)
    container = encode_container(events[:50], SCHEMA)
    bad_messages = {
        "undecodable": b"not avro at all",
        "truncated": container[:-40],
        "trailing-bytes": container + b"\x01\x02\x03",
        "unknown-schema": b"\xc3\x01" + b"\x00" * 8 + b"\x02",
    }
    mixed = encode_container([good_pair[0], bad_event, good_pair[1]], SCHEMA)
    # Messages with the control attribute that the job did not send: one
    # carries real events, one has no data but no run token either.
    forged_tick = encode_container(job_postings(2, skip=5003), SCHEMA)

    run_dir = tmp_path / "run"
    process = start_job(topics, run_dir, stop_after=2400 + 300 + 3 + 4 + 2)
    publish(topics, events)
    publish(topics, events[:300])  # the same ids again: duplicates
    publish_raw(topics, mixed, origin="mixed")
    for reason, data in bad_messages.items():
        publish_raw(topics, data, origin=reason)
    publish_raw(
        topics, forged_tick, origin="forged-tick", **{CONTROL_ATTRIBUTE: "tick"}
    )
    publish_raw(topics, b"", origin="forged-pointer", **{CONTROL_ATTRIBUTE: "pointer"})
    summary = finish(process, run_dir)
    log = (run_dir / "job.log").read_text(encoding="utf-8")

    assert "stopping the DirectRunner" in log
    assert summary["events_read"] == 2400 + 300 + 2
    assert summary["duplicates"] == 300
    assert summary["predictions"] == requests
    assert summary["learned"] + summary["held_out"] == 2400 - requests + 2
    assert 0.05 < summary["held_out"] / (2400 - requests) < 0.15
    _adds_up(summary)
    assert summary["dead_lettered"] == {
        "undecodable": 1,
        "truncated": 1,
        "trailing-bytes": 1,
        "unknown-schema": 1,
        "invalid-fields": 1,
        INVALID_CONTROL_REASON: 2,
    }
    assert summary["versions_published"] >= 1
    assert summary["control_messages"] > 0

    letters = pull_all(topics.dead_letter_subscription, expected=7)
    assert len(letters) == 7
    by_origin = {m.attributes["origin"]: m for m in letters}
    for reason, data in bad_messages.items():
        assert by_origin[reason].data == data
        assert by_origin[reason].attributes[REASON_ATTRIBUTE] == reason
    # The invalid event of a container comes back alone, with its position.
    mixed_letter = by_origin["mixed"]
    (returned,) = fastavro.reader(io.BytesIO(mixed_letter.data))
    assert isinstance(returned, dict)
    assert returned["event_id"] == bad_event["event_id"]
    assert math.isnan(returned["salary_year_avg"])
    assert mixed_letter.attributes[RECORD_INDEX_ATTRIBUTE] == "0"
    assert mixed_letter.attributes[DETAIL_ATTRIBUTE].startswith(
        "record 1 of the message: "
    )
    for origin in ("forged-tick", "forged-pointer"):
        letter = by_origin[origin]
        assert letter.attributes[REASON_ATTRIBUTE] == INVALID_CONTROL_REASON
    assert by_origin["forged-tick"].data == forged_tick

    answers = pull_all(topics.predictions_subscription, expected=requests)
    assert len(answers) == requests
    request_ids = {e["event_id"] for e in events if e["job_role"] is None}
    assert {m.attributes["event_id"] for m in answers} == request_ids
    for message in answers:
        body = json.loads(message.data)
        assert body["event_id"] == message.attributes["event_id"]
        # Before the first version, a request gets an empty list of labels.
        expected = 5 if message.attributes["model_version"] else 0
        assert len(body["top"]) == expected


@pytest.mark.usefixtures("pubsub_emulator")
def test_labels_over_limit_dead_lettered(tmp_path: Path) -> None:
    topics = fresh_topics("labels")
    events = job_postings(1500)
    run_dir = tmp_path / "run"
    process = start_job(topics, run_dir, 1500, "--max-labels", "3")
    publish(topics, events)
    summary = finish(process, run_dir)

    over = summary["over_label_limit"]
    assert over > 0
    _adds_up(summary)
    letters = pull_all(topics.dead_letter_subscription, expected=over)
    assert len(letters) == over
    rejected = []
    for letter in letters:
        assert letter.attributes[REASON_ATTRIBUTE] == "label-limit"
        assert letter.attributes[RECORD_INDEX_ATTRIBUTE] == "0"
        assert letter.attributes["dead-letter-detail"].endswith("--max-labels 3")
        records = list(fastavro.reader(io.BytesIO(letter.data)))
        assert len(records) == 1
        rejected.append(records[0])
    by_id = {e["event_id"]: e for e in events}
    assert all(by_id[r["event_id"]]["job_role"] == r["job_role"] for r in rejected)
    registry = open_registry(str(tmp_path / "registry"))
    serving = registry.read(registry.serving())
    learned_labels = json.loads(serving.files["learner.json"])["labels"]
    assert len(learned_labels) == 3
    assert not {r["job_role"] for r in rejected} & set(learned_labels)


@pytest.mark.usefixtures("pubsub_emulator")
def test_messages_over_4_mib_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC receives 4 MiB by default; Pub/Sub allows 10 MB. One container of
    # 30,000 events (about 4.4 MB) and 4.5 MB of garbage. The wrapper is
    # undone after the test, for this process's own pull of the dead letter.
    monkeypatch.setattr(grpc, "insecure_channel", grpc.insecure_channel)
    allow_large_emulator_messages()
    topics = fresh_topics("large")
    events = job_postings(30_000)
    container = encode_container(events, SCHEMA)
    garbage = b"\x00" * 4_500_000
    assert len(container) > 4 * 1024 * 1024

    run_dir = tmp_path / "run"
    process = start_job(topics, run_dir, stop_after=30_000 + 1)
    publish_raw(topics, container, origin="large")
    publish_raw(topics, garbage, origin="garbage")
    summary = finish(process, run_dir)

    assert summary["events_read"] == 30_000
    assert summary["dead_lettered"] == {"undecodable": 1}
    _adds_up(summary)
    letters = pull_all(topics.dead_letter_subscription, expected=1)
    assert len(letters) == 1
    assert letters[0].data == garbage


@pytest.mark.usefixtures("pubsub_emulator")
def test_operator_rollback_adopted(tmp_path: Path) -> None:
    topics = fresh_topics("oprb")
    events = job_postings(3000)
    run_dir = tmp_path / "run"
    process = start_job(
        topics, run_dir, 3000, "--gate-every-s", "0.5", "--gate-tolerance", "0.05"
    )
    publish(topics, events[:1800])
    registry_url = str(tmp_path / "registry")
    wait_for(
        lambda: len([d for d in decisions(run_dir) if d["kind"] == "promotion"]) >= 2,
        "two published versions",
    )

    announcer = PubSubAnnouncer(topics.model_versions_topic)
    registry = open_registry(registry_url, announcer=announcer)
    highest = max(registry.versions())
    registry.rollback(1, actor="ops:test", reason="test operator rollback")
    wait_for(
        lambda: any(
            d["kind"] == "adopted" and d["version"] == 1 for d in decisions(run_dir)
        ),
        "the job to adopt v1",
    )
    publish(topics, events[1800:])
    summary = finish(process, run_dir)

    _adds_up(summary)
    assert summary["events_read"] == 3000
    adopted = next(d for d in decisions(run_dir) if d["kind"] == "adopted")
    assert adopted["reason"] == "rollback by ops:test: test operator rollback"
    records = decisions(run_dir)
    adopted_at = next(
        i for i, d in enumerate(records) if d["kind"] == "adopted" and d["version"] == 1
    )
    # The first gate after the adoption compares a candidate with v1.
    gates = [d for d in records[adopted_at:] if d["kind"] in ("promotion", "rejection")]
    assert gates
    if gates[0]["kind"] == "promotion":
        assert gates[0]["parent"] == 1
        assert gates[0]["version"] > highest
    else:
        assert gates[0]["serving_version"] == 1
    learned_after = [
        d for d in records[adopted_at:] if d["kind"] == "learned_from_adopted"
    ]
    assert learned_after
    assert learned_after[0]["version"] == 1


@pytest.mark.usefixtures("pubsub_emulator")
def test_restart_after_sigkill(tmp_path: Path) -> None:
    topics = fresh_topics("kill")
    events = job_postings(3600)
    run_dir = tmp_path / "run"
    first = start_job(topics, run_dir, stop_after=10**9)
    publish(topics, events[:2400])

    def checkpoint_with_learning() -> bool:
        return any(
            d["kind"] == "checkpoint" and d["learned"] > 1000
            for d in decisions(run_dir)
        )

    wait_for(checkpoint_with_learning, "a checkpoint after 1000 learned events")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = decisions(run_dir)
    last_checkpoint = [d for d in before if d["kind"] == "checkpoint"][-1]

    # The restarted job stops once no new event came for 75 s (the number it
    # reads is not known in advance: the lost events are never redelivered).
    # That is longer than the subscription's 60 s ack deadline, because
    # messages the emulator hands to the killed job's open pull are
    # redelivered only after it. With 25 s the job sometimes stopped first.
    second = start_job(topics, run_dir, 0, "--idle-timeout-s", "75")
    publish(topics, events[2400:])
    summary = finish(second, run_dir)

    restored = [d for d in decisions(run_dir) if d["kind"] == "restored"]
    assert restored[0]["number"] == last_checkpoint["number"]
    assert restored[0]["learned"] == last_checkpoint["learned"]
    _adds_up(summary)
    # Nothing is read (so nothing learned) twice: the restored seen ids and
    # the acknowledged messages keep every event to one pass.
    assert summary["duplicates"] == 0
    assert summary["events_read"] <= 3600
    # Events acknowledged after the last checkpoint and before the kill are
    # lost; everything published after the restart is read.
    assert summary["events_read"] >= last_checkpoint["events_read"] + 1200


@pytest.mark.usefixtures("pubsub_emulator")
def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    topics = fresh_topics("term")
    events = job_postings(1500)
    run_dir = tmp_path / "run"
    process = start_job(topics, run_dir, stop_after=10**9)
    publish(topics, events)

    def all_read() -> bool:
        account = run_dir / "account.json"
        return account.exists() and json.loads(account.read_text())[
            "events_read"
        ] == len(events)

    wait_for(all_read, "every event read")
    process.send_signal(signal.SIGTERM)
    summary = finish(process, run_dir)

    # The open micro-batch is learned, a last gate runs and a checkpoint is
    # saved, as when the job stops by itself.
    assert summary["pending"] == 0
    _adds_up(summary)
    kinds = [d["kind"] for d in decisions(run_dir)]
    assert "checkpoint" in kinds
    assert summary["candidates_validated"] >= 1


@pytest.mark.usefixtures("pubsub_emulator")
def test_wrong_labels_burst_caught(tmp_path: Path) -> None:
    topics = fresh_topics("burst")
    events = job_postings(6000)
    labels = sorted({e["job_role"] for e in events})
    for event in events[3000:4200]:
        position = labels.index(event["job_role"])
        event["job_role"] = labels[(position + 3) % len(labels)]
    run_dir = tmp_path / "run"
    process = start_job(topics, run_dir, 6000)
    publish(topics, events)
    summary = finish(process, run_dir)

    _adds_up(summary)
    assert summary["events_read"] == 6000
    records = decisions(run_dir)
    caught = summary["candidates_rejected"] + summary["rollbacks_automatic"]
    assert caught >= 1
    # Clean candidates are sometimes rejected by a hair; the burst must cause
    # a rejection by a wide margin (log loss in nats).
    worse = [
        d
        for d in records
        if d["kind"] == "rejection" and d["candidate_value"] > d["serving_value"] + 0.1
    ]
    assert worse, "no candidate was rejected for a clearly worse log loss"


@pytest.mark.usefixtures("pubsub_emulator")
def test_demo_removes_only_old_runs(tmp_path: Path) -> None:
    names = [f"demo-20260101-00000{n}" for n in range(1, 5)]
    for name in [*names, "demo-mine", "other"]:
        (tmp_path / name).mkdir()
    removed = demo.remove_old_runs(tmp_path, keep=2)
    assert removed == [tmp_path / names[0], tmp_path / names[1]]
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted([*names[2:], "demo-mine", "other"])


@pytest.mark.usefixtures("pubsub_emulator")
def test_demo_finish_prints_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = fresh_topics("demofinish")
    run_dir = tmp_path / "demo-20260101-000000"
    (run_dir / "registry").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_bytes(b"x" * 3_000_000)
    demo.finish_demo(topics, run_dir)
    out = capsys.readouterr().out

    registry = (run_dir / "registry").resolve()
    assert f"registry: {registry}\n" in out
    assert f"  export STREAMLEARN_REGISTRY={registry}\n" in out
    assert "  .venv/bin/streamlearn versions list\n" in out
    assert f"run folder: {run_dir} (3 MB); remove it with: rm -r {run_dir}" in out
    publisher = PublisherClient()
    for topic, _ in topics.pairs():
        with pytest.raises(NotFound):
            publisher.get_topic(topic=topic)


def test_run_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        job.parse_args(["--help"])
    options = capsys.readouterr().out.split("options:", 1)[1]
    out = " ".join(options.split())
    # "--name METAVAR help" or "--name {a,b} help", one after the other.
    parts = re.split(r" (--[a-z-]+) (?:[A-Z_]+|\{[^}]*\}) ", out.split("example:")[0])
    help_by_option = dict(
        zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True)
    )
    for option, default in [
        ("--progress-interval-s", "2.0"),
        ("--tick-interval-s", "0.5"),
        ("--micro-batch-size", "512"),
        ("--micro-batch-max-wait-s", "2.0"),
        ("--holdout-fraction", "0.1"),
        ("--holdout-window-size", "2000"),
        ("--holdout-min-events", "200"),
        ("--gate-every-micro-batches", "10"),
        ("--gate-every-s", "30.0"),
        ("--gate-min-interval-s", "2.0"),
        ("--checkpoint-every-s", "5.0"),
        ("--format", "text"),
    ]:
        assert help_by_option[option].endswith(f"(default: {default})"), option
    assert "(default: None)" not in out
    assert "runs/demo/registry" not in out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--gate-min-interval-s", "nan", "--gate-min-interval-s must be >= 0"),
        ("--gate-min-interval-s", "-1", "--gate-min-interval-s must be >= 0"),
        ("--gate-min-interval-s", "1e400", "--gate-min-interval-s must be finite"),
        ("--gate-every-s", "-1", "--gate-every-s must be >= 0"),
        ("--holdout-fraction", "1", "--holdout-fraction must be in (0, 1)"),
        ("--holdout-fraction", "0", "--holdout-fraction must be in (0, 1)"),
        ("--gate-tolerance", "inf", "--gate-tolerance must be finite"),
        ("--micro-batch-size", "-5", "--micro-batch-size must be an int >= 1"),
        (
            "--holdout-min-events",
            "3000",
            "--holdout-min-events (3000) must not exceed --holdout-window-size",
        ),
        ("--spec", "nosuch", "feature spec 'nosuch' not found"),
        ("--schema-folder", "/nonexistent", "schema folder '/nonexistent' does"),
        ("--job-name", "bad/name", "job name 'bad/name' cannot prefix Pub/Sub"),
        ("--job-name", "top_k/seed", "job name 'top_k/seed' cannot prefix Pub/Sub"),
        (
            "--kswin-feature",
            "job_role",
            "--kswin-feature 'job_role' is not a numeric field of the job_postings "
            "events; numeric fields: salary_hour_avg, salary_year_avg",
        ),
        ("--kswin-sample-every", "0", "--kswin-sample-every must be an int >= 1"),
    ],
)
def test_run_rejects_invalid_setting(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    argv = ["--registry", str(tmp_path / "r"), "--run-dir", str(tmp_path / "d")]
    assert job.main([*argv, f"{option}={value}"]) == 2
    error = capsys.readouterr().err
    assert f"streamlearn run: invalid setting: {message}" in error
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--device", "cuda:9", "device 'cuda:9'"),
        ("--device", "gpu", "invalid device 'gpu': expected cpu, cuda or cuda:N"),
        ("--stop-after", "-5", "invalid value '-5': expected 0 or more"),
        ("--idle-timeout-s", "nan", "invalid value 'nan': expected a finite"),
    ],
)
def test_run_rejects_invalid_argument(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    argv = ["--registry", str(tmp_path / "r"), "--run-dir", str(tmp_path / "d")]
    with pytest.raises(SystemExit) as raised:
        job.main([*argv, f"{option}={value}"])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.usefixtures("pubsub_emulator")
def test_run_dir_in_use_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job._lock_run_dir(run_dir)
    try:
        argv = ["--registry", str(tmp_path / "r"), "--run-dir", str(run_dir)]
        assert job.main(argv) == 2
    finally:
        job._RUN_DIR_LOCKS.pop().close()

    error = capsys.readouterr().err
    assert f"another run uses the run folder {run_dir} (process {os.getpid()})" in (
        error
    )
    assert not (run_dir / "checkpoints").exists()
    job._lock_run_dir(run_dir)
    job._RUN_DIR_LOCKS.pop().close()


def test_report_missing_names_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main([str(tmp_path / "nosuch")]) == 1
    error = capsys.readouterr().err
    assert "streamlearn run --run-dir" in error
    assert "TelemetryConfig" not in error


def test_job_decoder_rejects_as_check_event(tmp_path: Path) -> None:
    # The decoder screens whole messages and validates only the events the
    # screen does not pass, so it must reject exactly what check_event does.
    decoder = build_decoder(
        JobSettings("screen", "p", "job_postings", "unused", str(tmp_path))
    )
    events = job_postings(300)
    events[5]["salary_year_avg"] = math.nan
    events[9]["job_role"] = ""
    events[20]["skills"] = []
    events[31]["salary_hour_avg"] = -math.inf
    spec = load_spec("job_postings")
    rejected = [
        index
        for index, event in enumerate(events)
        if rejecting(check_event(event, spec)) is not None
    ]
    result = decoder.decode(encode_container(events, SCHEMA))
    assert rejected == [5, 9, 31]
    # Each letter carries its event alone; the detail names its position.
    positions = [int(letter.detail.split()[1]) for letter in result.dead_letters]
    assert positions == rejected
    assert [letter.record_index for letter in result.dead_letters] == [0, 0, 0]
    assert len(result.events) == 297


def test_job_decoder_rejects_time_past_year_9999(tmp_path: Path) -> None:
    # A writer that declares the event time a plain long passes ints through
    # schema resolution, so the checks must bound them to real times.
    decoder = build_decoder(
        JobSettings("times", "p", "job_postings", "unused", str(tmp_path))
    )
    writer = json.loads(json.dumps(SCHEMA))
    for field in writer["fields"]:
        if field["name"] == "event_time":
            field["type"] = "long"
    events = job_postings(3)
    for event in events:
        event["event_time"] = int(event["event_time"].timestamp() * 1000)
    events[1]["event_time"] = 2**62
    message = encode_container(events, writer)
    result = decoder.decode(message)
    assert [e["event_id"] for e in result.events] == [
        events[0]["event_id"],
        events[2]["event_id"],
    ]
    # The time does not fit the reader schema's timestamp, so the event goes
    # alone in a container of the reader schema without logical types.
    (letter,) = result.dead_letters
    assert letter.record_index == 0
    assert letter.detail.startswith("record 1 of the message: ")
    assert "event_time" in letter.detail
    (returned,) = fastavro.reader(io.BytesIO(letter.data))
    assert isinstance(returned, dict)
    assert returned["event_time"] == 2**62
    assert len(letter.data) < len(message)


def test_decoder_built_once_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "job_postings.avsc").write_text(json.dumps(SCHEMA))
    settings = JobSettings(
        "once",
        "p",
        "job_postings",
        "unused",
        str(tmp_path),
        schema_folder=str(tmp_path),
    )
    with caplog.at_level(logging.INFO, logger="streaming.schema_registry"):
        first = shared_decoder(settings)
        second = shared_decoder(settings)
    assert second is first
    loaded = [r for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert len(loaded) == 1


def test_run_rejects_repeated_kswin_feature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--registry", str(tmp_path / "r"), "--run-dir", str(tmp_path / "d")]
    argv += ["--kswin-feature", "salary_year_avg"] * 2

    assert job.main(argv) == 2

    error = capsys.readouterr().err
    assert (
        "invalid setting: --kswin-feature names salary_year_avg more than once" in error
    )
