"""The wire format: good and bad messages, built by hand."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from streaming.schema_registry import SchemaRegistry, schema_fingerprint
from streaming.wire import (
    DETAIL_ATTRIBUTE,
    FINGERPRINT_ATTRIBUTE,
    REASON_ATTRIBUTE,
    RECORD_INDEX_ATTRIBUTE,
    DeadLetterReason,
    Encoding,
    MessageDecoder,
    count_reasons,
    encode_container,
    encode_schemaless,
    encode_single_object,
)

READER: dict[str, Any] = {
    "type": "record",
    "name": "Posting",
    "namespace": "test",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "skills", "type": {"type": "array", "items": "string"}},
        {"name": "salary", "type": ["null", "double"], "default": None},
        {"name": "country", "type": "string", "default": "unknown"},
    ],
}
# An older producer: no country field (the reader fills in its default).
OLDER_WRITER: dict[str, Any] = {
    "type": "record",
    "name": "Posting",
    "namespace": "test",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "skills", "type": {"type": "array", "items": "string"}},
        {"name": "salary", "type": ["null", "double"], "default": None},
    ],
}
# A newer producer: an extra field the reader ignores.
NEWER_WRITER: dict[str, Any] = {
    **READER,
    "fields": [*READER["fields"], {"name": "remote", "type": "boolean"}],
}
# Incompatible: event_id became a long.
INCOMPATIBLE_WRITER: dict[str, Any] = {
    **OLDER_WRITER,
    "fields": [{"name": "event_id", "type": "long"}, *OLDER_WRITER["fields"][1:]],
}


def posting(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "skills": ["sql", "python"],
        "salary": 1.0 * i,
        **extra,
    }


def no_empty_skills(event: dict[str, Any]) -> list[str]:
    return [] if event["skills"] else ["skills: empty list, expected at least one"]


@pytest.fixture
def decoder() -> MessageDecoder:
    registry = SchemaRegistry([OLDER_WRITER, NEWER_WRITER, INCOMPATIBLE_WRITER])
    return MessageDecoder(READER, registry, validate=no_empty_skills)


def test_container_many_events(decoder: MessageDecoder) -> None:
    events = [posting(i, country="DE") for i in range(300)]
    result = decoder.decode(encode_container(events, READER, codec="deflate"))
    assert result.encoding is Encoding.CONTAINER
    assert result.dead_letters == []
    assert [e["event_id"] for e in result.events] == [f"e{i}" for i in range(300)]
    assert result.events[299]["salary"] == 299.0


def test_container_older_writer_resolved(decoder: MessageDecoder) -> None:
    result = decoder.decode(encode_container([posting(1)], OLDER_WRITER))
    assert result.dead_letters == []
    assert result.events[0]["country"] == "unknown"


def test_single_object_newer_writer(decoder: MessageDecoder) -> None:
    data = encode_single_object(posting(7, country="FR", remote=True), NEWER_WRITER)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10].hex() == schema_fingerprint(NEWER_WRITER)
    result = decoder.decode(data)
    assert result.encoding is Encoding.SINGLE_OBJECT
    assert result.events == [
        {"event_id": "e7", "skills": ["sql", "python"], "salary": 7.0, "country": "FR"}
    ]


def test_schemaless_with_fingerprint(decoder: MessageDecoder) -> None:
    data, attributes = encode_schemaless(posting(3), OLDER_WRITER)
    assert attributes[FINGERPRINT_ATTRIBUTE] == schema_fingerprint(OLDER_WRITER)
    result = decoder.decode(data, attributes)
    assert result.encoding is Encoding.SCHEMALESS
    assert result.events[0]["event_id"] == "e3"
    assert result.events[0]["country"] == "unknown"


def _only_letter(decoder: MessageDecoder, data: bytes, attributes: Any = None) -> Any:
    result = decoder.decode(data, attributes)
    assert result.events == []
    assert len(result.dead_letters) == 1
    letter = result.dead_letters[0]
    assert letter.data == data
    assert letter.record_index is None
    return letter


CONTAINER = encode_container([posting(i, country="US") for i in range(50)], READER)
SINGLE = encode_single_object(posting(1, country="US"), READER)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("garbage", b"hello, world", DeadLetterReason.UNDECODABLE),
        ("empty", b"", DeadLetterReason.UNDECODABLE),
        ("container cut in block", CONTAINER[:-30], DeadLetterReason.TRUNCATED),
        ("container cut in sync", CONTAINER[:-3], DeadLetterReason.TRUNCATED),
        ("container cut in header", CONTAINER[:20], DeadLetterReason.TRUNCATED),
        (
            "container plus text",
            CONTAINER + b"\x01trail",
            DeadLetterReason.TRAILING_BYTES,
        ),
        ("container plus zero", CONTAINER + b"\x00", DeadLetterReason.TRAILING_BYTES),
        ("single cut in header", SINGLE[:6], DeadLetterReason.TRUNCATED),
        ("single cut in body", SINGLE[:-2], DeadLetterReason.TRUNCATED),
        ("single plus bytes", SINGLE + b"\x01\x02", DeadLetterReason.TRAILING_BYTES),
        (
            "single unknown schema",
            SINGLE[:2] + b"\x00" * 8 + SINGLE[10:],
            DeadLetterReason.UNKNOWN_SCHEMA,
        ),
        (
            "single incompatible",
            encode_single_object({**posting(1), "event_id": 5}, INCOMPATIBLE_WRITER),
            DeadLetterReason.INCOMPATIBLE_SCHEMA,
        ),
        (
            "container incompatible",
            encode_container([{**posting(1), "event_id": 5}], INCOMPATIBLE_WRITER),
            DeadLetterReason.INCOMPATIBLE_SCHEMA,
        ),
    ],
)
def test_bad_message_reason(
    decoder: MessageDecoder, name: str, data: bytes, reason: DeadLetterReason
) -> None:
    letter = _only_letter(decoder, data, {"origin": name})
    assert letter.reason is reason, letter.detail
    assert letter.attributes == {"origin": name}


def test_schemaless_unknown_fingerprint(decoder: MessageDecoder) -> None:
    data, _ = encode_schemaless(posting(1), OLDER_WRITER)
    letter = _only_letter(decoder, data, {FINGERPRINT_ATTRIBUTE: "00" * 8})
    assert letter.reason is DeadLetterReason.UNKNOWN_SCHEMA
    assert "0000000000000000" in letter.detail


def test_schemaless_corrupt_body(decoder: MessageDecoder) -> None:
    attributes = {FINGERPRINT_ATTRIBUTE: schema_fingerprint(READER)}
    letter = _only_letter(decoder, b"\xff" * 12, attributes)
    assert letter.reason is DeadLetterReason.UNDECODABLE


def test_invalid_event_in_container(decoder: MessageDecoder) -> None:
    events = [posting(i, country="US") for i in range(5)]
    events[1]["skills"] = []
    events[3]["skills"] = []
    data = encode_container(events, READER)
    result = decoder.decode(data, {"batch": "7"})
    assert [e["event_id"] for e in result.events] == ["e0", "e2", "e4"]
    assert [letter.record_index for letter in result.dead_letters] == [1, 3]
    for letter in result.dead_letters:
        assert letter.reason is DeadLetterReason.INVALID_FIELDS
        assert letter.data == data
        assert "skills" in letter.detail
    assert count_reasons(result.dead_letters) == {"invalid-fields": 2}


def test_dead_letter_attributes(decoder: MessageDecoder) -> None:
    events = [posting(0, country="US")]
    events[0]["skills"] = []
    letter = decoder.decode(encode_container(events, READER), {"k": "v"}).dead_letters[
        0
    ]
    attributes = letter.to_attributes()
    assert attributes["k"] == "v"
    assert attributes[REASON_ATTRIBUTE] == "invalid-fields"
    assert attributes[RECORD_INDEX_ATTRIBUTE] == "0"
    assert "skills" in attributes[DETAIL_ATTRIBUTE]


def test_every_truncation_is_dead_lettered(decoder: MessageDecoder) -> None:
    data = encode_container([posting(i, country="US") for i in range(20)], READER)
    stream = io.BytesIO(data)
    fastavro.block_reader(stream)
    header_end = stream.tell()
    for cut in range(len(data)):
        result = decoder.decode(data[:cut])
        assert result.events == [], cut
        if cut == header_end:
            # A container header with no block is a valid file of no events.
            assert result.dead_letters == []
        else:
            assert len(result.dead_letters) == 1, cut


def test_fingerprint_matches_avro_spec() -> None:
    # The CRC-64-AVRO fingerprint of the schema "null", as a 64-bit integer.
    assert (
        schema_fingerprint("null") == (0x63DD24E7CC258F8A).to_bytes(8, "little").hex()
    )


def test_registry_from_folder(tmp_path: Any) -> None:
    buffer = io.StringIO()
    import json

    json.dump(OLDER_WRITER, buffer)
    (tmp_path / "older.avsc").write_text(buffer.getvalue())
    registry = SchemaRegistry.from_folder(tmp_path)
    assert registry.fingerprints() == [schema_fingerprint(OLDER_WRITER)]
    assert registry.get(schema_fingerprint(OLDER_WRITER)) == fastavro.parse_schema(
        OLDER_WRITER, _write_hint=False
    )
