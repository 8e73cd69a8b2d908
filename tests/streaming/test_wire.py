"""The wire format: good and bad messages, built by hand."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from streaming import wire
from streaming.schema_registry import (
    SchemaRegistry,
    SchemaRegistryError,
    schema_fingerprint,
)
from streaming.wire import (
    DETAIL_ATTRIBUTE,
    ENCODING_ATTRIBUTE,
    FINGERPRINT_ATTRIBUTE,
    MAX_KEPT_SCHEMAS,
    REASON_ATTRIBUTE,
    RECORD_INDEX_ATTRIBUTE,
    DeadLetter,
    DeadLetterReason,
    DecodeLimits,
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


def reader_schemas_used(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the reader schema of every fastavro container read."""
    used: list[Any] = []
    read = fastavro.reader

    def recording(stream: Any, reader_schema: Any = None, **options: Any) -> Any:
        used.append(reader_schema)
        return read(stream, reader_schema, **options)

    monkeypatch.setattr(fastavro, "reader", recording)
    return used


def test_container_reader_schema_not_resolved(
    decoder: MessageDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = reader_schemas_used(monkeypatch)
    events = [posting(i, country="DE") for i in range(3)]
    same = decoder.decode(encode_container(events, READER))
    older = decoder.decode(encode_container([posting(1)], OLDER_WRITER))
    assert same.events == events
    assert older.events[0]["country"] == "unknown"
    assert used[0] is None
    assert used[1] is decoder.reader_schema


def test_container_schema_other_doc_resolved(
    decoder: MessageDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = reader_schemas_used(monkeypatch)
    documented = {**READER, "doc": "the same fields"}
    result = decoder.decode(encode_container([posting(1, country="DE")], documented))
    assert result.events == [posting(1, country="DE")]
    assert used == [decoder.reader_schema]


def test_container_schema_results_bounded(decoder: MessageDecoder) -> None:
    for number in range(MAX_KEPT_SCHEMAS + 10):
        schema = {**READER, "doc": f"version {number}"}
        result = decoder.decode(encode_container([posting(number)], schema))
        assert result.events[0]["event_id"] == f"e{number}"
    assert len(decoder._container_schemas) <= MAX_KEPT_SCHEMAS


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
    assert count_reasons(result.dead_letters) == {"invalid-fields": 2}
    # Each letter carries its event alone, not a copy of the whole message.
    for letter, index in zip(result.dead_letters, [1, 3], strict=True):
        assert letter.record_index == 0
        assert letter.detail.startswith(f"record {index} of the message: ")
        assert "skills" in letter.detail
        assert letter.attributes["batch"] == "7"
        assert letter.attributes[ENCODING_ATTRIBUTE] == "container"
        assert list(fastavro.reader(io.BytesIO(letter.data))) == [events[index]]


def test_prescreen_skips_passed_events() -> None:
    validated: list[str] = []

    def validate(event: dict[str, Any]) -> list[str]:
        validated.append(event["event_id"])
        return no_empty_skills(event)

    def prescreen(events: list[dict[str, Any]]) -> list[bool]:
        return [int(event["event_id"][1:]) % 2 == 0 for event in events]

    decoder = MessageDecoder(READER, SchemaRegistry(), validate, prescreen=prescreen)
    events = [posting(i, country="US") for i in range(6)]
    events[3]["skills"] = []
    result = decoder.decode(encode_container(events, READER))
    assert validated == ["e1", "e3", "e5"]
    assert [e["event_id"] for e in result.events] == ["e0", "e1", "e2", "e4", "e5"]
    details = [letter.detail.split(":")[0] for letter in result.dead_letters]
    assert details == ["record 3 of the message"]


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


def test_dead_letter_detail_cut_to_bytes() -> None:
    # 300 characters of 4 bytes each: cut at 500 bytes, between characters.
    letter = DeadLetter(DeadLetterReason.UNDECODABLE, "\U0001f600" * 300, b"", {})

    detail = letter.to_attributes()[DETAIL_ATTRIBUTE]

    assert detail == "\U0001f600" * 125
    assert len(detail.encode("utf-8")) == 500


def test_every_truncation_is_dead_lettered(decoder: MessageDecoder) -> None:
    data = encode_container([posting(i, country="US") for i in range(20)], READER)
    stream = io.BytesIO(data)
    fastavro.block_reader(stream)
    header_end = stream.tell()
    for cut in range(len(data)):
        result = decoder.decode(data[:cut])
        assert result.events == [], cut
        assert len(result.dead_letters) == 1, cut
        if cut == header_end:
            assert result.dead_letters[0].reason is DeadLetterReason.EMPTY


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


def test_registry_from_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "older.avsc").write_text(json.dumps(OLDER_WRITER))

    registry = SchemaRegistry.from_folder("~/schemas")

    assert registry.fingerprints() == [schema_fingerprint(OLDER_WRITER)]


def _zigzag(value: int) -> bytes:
    """Encode a long as Avro does: zig-zag, then a base-128 varint."""
    number = (value << 1) ^ (value >> 63)
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _avro_bytes(value: bytes) -> bytes:
    return _zigzag(len(value)) + value


SYNC = b"S" * 16


def _container_header(schema_json: bytes | None, codec: bytes = b"null") -> bytes:
    """Build a container header by hand, so that its schema can be anything."""
    entries = [(b"avro.codec", codec)]
    if schema_json is not None:
        entries.append((b"avro.schema", schema_json))
    meta = b"".join(_avro_bytes(key) + _avro_bytes(value) for key, value in entries)
    return b"Obj\x01" + _zigzag(len(entries)) + meta + _zigzag(0) + SYNC


READER_JSON = json.dumps(READER).encode()


@pytest.mark.parametrize(
    ("name", "blocks", "reason"),
    [
        ("no block", b"", DeadLetterReason.EMPTY),
        ("count 0", _zigzag(0) + _zigzag(0) + SYNC, DeadLetterReason.EMPTY),
        ("count -1", _zigzag(-1) + _zigzag(0) + SYNC, DeadLetterReason.UNDECODABLE),
        (
            "count -3 and garbage",
            _zigzag(-3) + _zigzag(5) + b"abcde" + SYNC,
            DeadLetterReason.UNDECODABLE,
        ),
        (
            "wrong sync marker",
            _zigzag(1) + _zigzag(3) + b"abc" + b"T" * 16,
            DeadLetterReason.UNDECODABLE,
        ),
    ],
)
def test_container_without_events(
    decoder: MessageDecoder, name: str, blocks: bytes, reason: DeadLetterReason
) -> None:
    letter = _only_letter(decoder, _container_header(READER_JSON) + blocks)
    assert letter.reason is reason, (name, letter.detail)


@pytest.mark.parametrize(
    ("name", "schema_json"),
    [
        ("missing", None),
        ("not JSON", b"{{{"),
        ("empty", b""),
        ("not a schema", b'{"type": "no-such-type"}'),
        (
            "5000 levels deep",
            b'{"type":"array","items":' * 5000 + b'"string"' + b"}" * 5000,
        ),
        (
            "100 levels deep",
            b'{"type":"array","items":' * 100 + b'"string"' + b"}" * 100,
        ),
        (
            "recursive",
            json.dumps(
                {
                    **READER,
                    "fields": [
                        *READER["fields"],
                        {"name": "next", "type": ["null", "Posting"], "default": None},
                    ],
                }
            ).encode(),
        ),
    ],
)
def test_container_invalid_writer_schema(
    decoder: MessageDecoder, name: str, schema_json: bytes | None
) -> None:
    letter = _only_letter(decoder, _container_header(schema_json))
    assert letter.reason is DeadLetterReason.INVALID_SCHEMA, (name, letter.detail)


def test_container_unsupported_codec(decoder: MessageDecoder) -> None:
    letter = _only_letter(decoder, _container_header(READER_JSON, codec=b"snappy"))
    assert letter.reason is DeadLetterReason.UNDECODABLE
    assert "'snappy' is not supported" in letter.detail


def test_deflate_bomb_too_large() -> None:
    limits = DecodeLimits(max_decoded_bytes=100_000)
    decoder = MessageDecoder(READER, SchemaRegistry(), limits=limits)
    huge = posting(1, country="x" * 200_000)
    data = encode_container([huge], READER, codec="deflate")
    assert len(data) < 2_000
    letter = _only_letter(decoder, data)
    assert letter.reason is DeadLetterReason.TOO_LARGE
    assert "100000" in letter.detail


def test_decoded_size_summed_over_blocks() -> None:
    limits = DecodeLimits(max_decoded_bytes=150_000)
    decoder = MessageDecoder(READER, SchemaRegistry(), limits=limits)
    events = [posting(i, country="x" * 40_000) for i in range(6)]
    buffer = io.BytesIO()
    # sync_interval makes fastavro close a block after every event or so.
    fastavro.writer(buffer, fastavro.parse_schema(READER), events, sync_interval=1)
    assert decoder.decode(encode_container(events[:3], READER)).dead_letters == []
    letter = _only_letter(decoder, buffer.getvalue())
    assert letter.reason is DeadLetterReason.TOO_LARGE
    assert "block 4" in letter.detail


def test_container_too_many_events() -> None:
    limits = DecodeLimits(max_events_per_message=10)
    decoder = MessageDecoder(READER, SchemaRegistry(), limits=limits)
    ten = [posting(i, country="US") for i in range(10)]
    assert len(decoder.decode(encode_container(ten, READER)).events) == 10
    eleven = encode_container([*ten, posting(10)], READER)
    assert _only_letter(decoder, eleven).reason is DeadLetterReason.TOO_LARGE


def test_single_object_too_large() -> None:
    limits = DecodeLimits(max_decoded_bytes=1_000)
    decoder = MessageDecoder(READER, SchemaRegistry(), limits=limits)
    data = encode_single_object(posting(1, country="x" * 2_000), READER)
    assert _only_letter(decoder, data).reason is DeadLetterReason.TOO_LARGE


def test_decode_limits_reject_zero() -> None:
    with pytest.raises(ValueError, match="max_decoded_bytes 0"):
        DecodeLimits(max_decoded_bytes=0)
    with pytest.raises(ValueError, match="max_events_per_message -1"):
        DecodeLimits(max_events_per_message=-1)


TIMED: dict[str, Any] = {
    "type": "record",
    "name": "Timed",
    "fields": [
        {"name": "event_id", "type": "string"},
        {
            "name": "event_time",
            "type": {"type": "long", "logicalType": "timestamp-millis"},
        },
    ],
}


@pytest.mark.parametrize("millis", [2**62, -(2**62)])
def test_time_out_of_range_invalid_fields(millis: int) -> None:
    decoder = MessageDecoder(TIMED, SchemaRegistry())
    single = encode_single_object({"event_id": "a", "event_time": millis}, TIMED)
    container = encode_container([{"event_id": "a", "event_time": millis}], TIMED)
    for data in (single, container):
        letter = _only_letter(decoder, data)
        assert letter.reason is DeadLetterReason.INVALID_FIELDS, letter.detail
        assert "out of range" in letter.detail


def test_registry_rejects_recursive_schema() -> None:
    linked = {
        "type": "record",
        "name": "Node",
        "namespace": "test",
        "fields": [{"name": "next", "type": ["null", "test.Node"]}],
    }
    with pytest.raises(SchemaRegistryError, match=r"'test\.Node' contains itself"):
        SchemaRegistry([linked])


def test_registry_rejects_deep_schema() -> None:
    deep: Any = "string"
    for _ in range(70):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaRegistryError, match="more than 64 levels deep"):
        SchemaRegistry(
            [{"type": "record", "name": "D", "fields": [{"name": "d", "type": deep}]}]
        )


def test_registry_accepts_sibling_named_types() -> None:
    # A named type used twice side by side is a reference, not recursion.
    schema = {
        "type": "record",
        "name": "Pair",
        "fields": [
            {"name": "a", "type": {"type": "fixed", "name": "Id", "size": 2}},
            {"name": "b", "type": "Id"},
        ],
    }
    assert len(SchemaRegistry([schema]).fingerprints()) == 1


def test_dead_letter_keeps_within_attribute_limit() -> None:
    original = {f"key-{n:03d}": "v" for n in range(120)}
    original[FINGERPRINT_ATTRIBUTE] = "00" * 8
    original[ENCODING_ATTRIBUTE] = "schemaless"
    letter = DeadLetter(DeadLetterReason.UNDECODABLE, "bad", b"x", original, 3)

    attributes = letter.to_attributes()

    assert len(attributes) == 100
    assert attributes["dead-letter-dropped-attributes"] == "26"
    # Kept first, though other names sort before them: they decode the data.
    assert attributes[FINGERPRINT_ATTRIBUTE] == "00" * 8
    assert attributes[ENCODING_ATTRIBUTE] == "schemaless"
    assert attributes[REASON_ATTRIBUTE] == "undecodable"
    assert attributes[RECORD_INDEX_ATTRIBUTE] == "3"
    assert "key-093" in attributes
    assert "key-094" not in attributes


def test_unwritable_events_share_one_copy(
    decoder: MessageDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No decoded event has been seen that cannot be written alone, so the
    # writer is made to fail.
    monkeypatch.setattr(wire, "_single_container", lambda event, schema: None)
    events = [posting(i, country="US") for i in range(4)]
    for event in events[1:]:
        event["skills"] = []
    data = encode_container(events, READER)

    letters = decoder.decode(data).dead_letters

    assert [letter.record_index for letter in letters] == [1, 2, 3]
    assert letters[0].data == data
    assert [letter.data for letter in letters[1:]] == [b"", b""]
    assert "(the message is in the dead letter of record 1)" in letters[2].detail
