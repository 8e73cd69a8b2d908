"""Decode limits from the job's options, down to the decoding DoFn."""

from __future__ import annotations

import itertools
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from online_model.datasets import iter_events
from online_model.spec import load_schema
from streaming import deploy, job
from streaming.job_config import (
    JobConfig,
    decode_limits_from,
    format_byte_size,
    parse_byte_size,
)
from streaming.pipeline import DEAD_LETTER_TAG, DecodeEvents, JobSettings
from streaming.runtime import EventBatch
from streaming.wire import REASON_ATTRIBUTE, DecodeLimits, encode_container

SCHEMA = load_schema("job_postings")
EVENTS = list(itertools.islice(iter_events("job_postings"), 4))
RUN_ARGS = ["--registry", "registry", "--run-dir", "run"]
OVER_MAX = "the maximum is 1024GiB (1099511627776 bytes)"
DEPLOY_ARGS = [
    "--project",
    "demo-project",
    "--region",
    "us-central1",
    "--temp-location",
    "gs://demo-bucket/tmp",
    "--registry",
    "gs://demo-bucket/models",
]


def decode_with(limits: DecodeLimits, data: bytes) -> tuple[list[Any], list[Any]]:
    """Run DecodeEvents with ``limits`` on one message; return its two outputs."""
    settings = JobSettings(
        "limits",
        "streamlearn-local",
        "job_postings",
        "unused",
        "unused",
        config=JobConfig(decode_limits=limits),
    )
    decode = DecodeEvents(settings)
    decode.setup()
    batches: list[Any] = []
    letters: list[Any] = []
    for output in decode.process(PubsubMessage(data, {"origin": "test"})):
        if isinstance(output, beam.pvalue.TaggedOutput):
            assert output.tag == DEAD_LETTER_TAG
            letters.append(output.value)
        else:
            batches.append(output)
    return batches, letters


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4194304", 4194304),
        ("1KiB", 1024),
        ("4MiB", 4 * 1024**2),
        ("16 MiB", 16 * 1024**2),
        ("2GiB", 2 * 1024**3),
    ],
)
def test_byte_size_parsed(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["0", "0MiB", "-1", "", "4MB", "1.5MiB", "MiB"])
def test_byte_size_invalid(text: str) -> None:
    with pytest.raises(ValueError, match=f"invalid size {text!r}: expected"):
        parse_byte_size(text)


def test_byte_size_formatted() -> None:
    assert format_byte_size(16 * 1024**2) == "16MiB"
    assert format_byte_size(3 * 1024) == "3KiB"
    assert format_byte_size(1000) == "1000"


def test_run_options_default_limits() -> None:
    args = job.parse_args(RUN_ARGS)
    assert decode_limits_from(args) == DecodeLimits()


def test_run_options_set_limits() -> None:
    argv = [*RUN_ARGS, "--max-decoded-bytes", "4MiB", "--max-events-per-message", "3"]
    limits = decode_limits_from(job.parse_args(argv))
    assert limits.max_decoded_bytes == 4 * 1024**2
    assert limits.max_events_per_message == 3


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-decoded-bytes", "4MB", "invalid size '4MB'"),
        ("--max-decoded-bytes", "0", "invalid size '0'"),
        ("--max-events-per-message", "0", "invalid count '0'"),
        ("--max-events-per-message", "ten", "invalid count 'ten'"),
        ("--max-decoded-bytes", "1_000", "invalid size '1_000': expected"),
        ("--max-events-per-message", "1_000", "invalid count '1_000': expected"),
        ("--max-events-per-message", "9" * 5000, f"invalid count '{'9' * 5000}'"),
        ("--max-decoded-bytes", "1025GiB", f"invalid size '1025GiB': {OVER_MAX}"),
        (
            "--max-decoded-bytes",
            "8589934592GiB",
            f"invalid size '8589934592GiB': {OVER_MAX}",
        ),
        (
            "--max-decoded-bytes",
            "9223372036854775807",
            f"invalid size '9223372036854775807': {OVER_MAX}",
        ),
        ("--max-decoded-bytes", "9" * 5000, f"invalid size '{'9' * 5000}': {OVER_MAX}"),
    ],
)
def test_run_options_reject_invalid_limit(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        job.parse_args([*RUN_ARGS, option, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: {message}" in error


def test_deploy_passes_limits_to_job() -> None:
    argv = [
        *DEPLOY_ARGS,
        "--max-decoded-bytes",
        "1MiB",
        "--max-events-per-message",
        "7",
    ]
    settings = deploy.job_settings(deploy.parse_args(argv))
    assert settings.config.decode_limits == DecodeLimits(1024**2, 7)


def test_config_rejects_non_limits() -> None:
    with pytest.raises(ValueError, match="decode_limits must be a DecodeLimits"):
        JobConfig(decode_limits=1000)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, True, 2.5])
def test_limits_reject_non_positive_int(value: Any) -> None:
    with pytest.raises(ValueError, match="expected an int >= 1"):
        DecodeLimits(max_events_per_message=value)


def test_event_limit_dead_letters_message() -> None:
    data = encode_container(EVENTS, SCHEMA)

    batches, letters = decode_with(DecodeLimits(), data)
    assert letters == []
    assert len(batches[0].events) == 4

    batches, letters = decode_with(DecodeLimits(max_events_per_message=3), data)
    assert len(letters) == 1
    assert letters[0].data == data
    assert letters[0].attributes[REASON_ATTRIBUTE] == "too-large"
    assert letters[0].attributes["origin"] == "test"
    assert batches == [EventBatch([], {"too-large": 1}, 1, batches[0].publish_time_s)]


def test_size_limit_dead_letters_message() -> None:
    data = encode_container(EVENTS, SCHEMA, codec="deflate")
    decoded_bytes = len(encode_container(EVENTS, SCHEMA))

    batches, letters = decode_with(DecodeLimits(max_decoded_bytes=decoded_bytes), data)
    assert letters == []
    assert len(batches[0].events) == 4

    batches, letters = decode_with(DecodeLimits(max_decoded_bytes=200), data)
    assert len(letters) == 1
    assert letters[0].attributes[REASON_ATTRIBUTE] == "too-large"
    assert "200 bytes" in letters[0].attributes["dead-letter-detail"]
    assert batches[0].events == []


def test_run_accepts_max_decoded_bytes() -> None:
    args = job.parse_args([*RUN_ARGS, "--max-decoded-bytes", "1024GiB"])
    assert args.max_decoded_bytes == 1024**4


def test_limits_reject_over_max_bytes() -> None:
    assert DecodeLimits(max_decoded_bytes=1024**4).max_decoded_bytes == 1024**4
    with pytest.raises(ValueError, match="the maximum is 1099511627776"):
        DecodeLimits(max_decoded_bytes=1024**4 + 1)
