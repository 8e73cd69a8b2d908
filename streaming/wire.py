"""The wire format of event messages on Pub/Sub, and its decoder.

A message carries one Avro event or many. The decoder accepts three encodings
and recognises each by the payload's first bytes and the message attributes:

- many events: an Avro object container file (magic ``Obj\\x01``), which embeds
  its writer schema and may be compressed (``null`` or ``deflate`` codec);
- one event in Avro single-object encoding: ``C3 01``, the writer schema's
  8-byte CRC-64-AVRO fingerprint (little-endian), then the binary record;
- one schemaless binary record, with the writer schema's fingerprint as 16 hex
  digits in the ``avro-fingerprint`` attribute.

Every event is resolved against the job's reader schema (Avro schema
resolution, as fastavro implements it). A message that cannot be decoded as a
whole becomes one dead letter; an event that decodes but fails validation
becomes a dead letter of its own that carries the whole original message and
the event's index in it. Dead letters keep the original bytes and attributes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import fastavro
from fastavro.read import SchemaResolutionError

from streaming.schema_registry import (
    Schema,
    SchemaRegistry,
    parse_schema,
    schema_fingerprint,
)

logger = logging.getLogger(__name__)

CONTAINER_MAGIC = b"Obj\x01"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
FINGERPRINT_ATTRIBUTE = "avro-fingerprint"
ENCODING_ATTRIBUTE = "avro-encoding"
# Attributes the dead-letter topic adds to the original message's attributes.
REASON_ATTRIBUTE = "dead-letter-reason"
DETAIL_ATTRIBUTE = "dead-letter-detail"
RECORD_INDEX_ATTRIBUTE = "dead-letter-record-index"
_SYNC_MARKER_BYTES = 16
_MAX_DETAIL_CHARS = 500

Event = dict[str, Any]
EventValidator = Callable[[Event], list[str]]


class Encoding(StrEnum):
    """Encoding of the events in one message."""

    CONTAINER = "container"
    SINGLE_OBJECT = "single-object"
    SCHEMALESS = "schemaless"


class DeadLetterReason(StrEnum):
    """Reason code of a dead letter, sent in its attributes."""

    UNDECODABLE = "undecodable"
    TRUNCATED = "truncated"
    TRAILING_BYTES = "trailing-bytes"
    UNKNOWN_SCHEMA = "unknown-schema"
    INCOMPATIBLE_SCHEMA = "incompatible-schema"
    INVALID_FIELDS = "invalid-fields"


@dataclass(frozen=True)
class DeadLetter:
    """A rejected message or event, with the original message intact.

    ``record_index`` is the event's position in the message when one event of
    a message was rejected, and None when the whole message was.
    """

    reason: DeadLetterReason
    detail: str
    data: bytes
    attributes: Mapping[str, str]
    record_index: int | None = None

    def to_attributes(self) -> dict[str, str]:
        """Return the attributes for the dead-letter topic: the original ones
        plus the reason, the detail and the record index."""
        attributes = dict(self.attributes)
        attributes[REASON_ATTRIBUTE] = self.reason.value
        attributes[DETAIL_ATTRIBUTE] = self.detail[:_MAX_DETAIL_CHARS]
        if self.record_index is not None:
            attributes[RECORD_INDEX_ATTRIBUTE] = str(self.record_index)
        return attributes


@dataclass(frozen=True)
class DecodedMessage:
    """Result of decoding one message: valid events and dead letters."""

    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    encoding: Encoding | None = None


class _MessageError(Exception):
    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- encoding


def encode_container(
    events: Iterable[Mapping[str, Any]],
    schema: Mapping[str, Any],
    codec: str = "null",
) -> bytes:
    """Encode events as one Avro object container file."""
    parsed = parse_schema(schema)
    buffer = io.BytesIO()
    fastavro.writer(buffer, parsed, events, codec=codec)
    return buffer.getvalue()


def encode_single_object(event: Mapping[str, Any], schema: Mapping[str, Any]) -> bytes:
    """Encode one event in Avro single-object encoding."""
    parsed = parse_schema(schema)
    buffer = io.BytesIO()
    buffer.write(SINGLE_OBJECT_MAGIC)
    buffer.write(bytes.fromhex(schema_fingerprint(parsed)))
    fastavro.schemaless_writer(buffer, parsed, event)
    return buffer.getvalue()


def encode_schemaless(
    event: Mapping[str, Any], schema: Mapping[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """Encode one event as a bare binary record; return it with its attributes."""
    parsed = parse_schema(schema)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, event)
    attributes = {
        FINGERPRINT_ATTRIBUTE: schema_fingerprint(parsed),
        ENCODING_ATTRIBUTE: Encoding.SCHEMALESS.value,
    }
    return buffer.getvalue(), attributes


# ---------------------------------------------------------------- decoding


class MessageDecoder:
    """Decode message payloads into events resolved to the reader schema.

    ``validate`` returns a list of problems for a decoded event (empty when
    the event is valid); events with problems become ``invalid-fields`` dead
    letters.
    """

    def __init__(
        self,
        reader_schema: Mapping[str, Any],
        registry: SchemaRegistry,
        validate: EventValidator | None = None,
    ) -> None:
        self.reader_schema: Schema = parse_schema(reader_schema)
        self.registry = registry
        self.validate = validate
        # The reader schema is always a known writer schema.
        self.registry.add(self.reader_schema)

    def decode(
        self, data: bytes, attributes: Mapping[str, str] | None = None
    ) -> DecodedMessage:
        """Decode one message. A bad payload becomes a dead letter, not an error."""
        attributes = dict(attributes or {})
        encoding: Encoding | None = None
        try:
            encoding = self._detect_encoding(data, attributes)
            events = self._decode_events(encoding, data, attributes)
        except _MessageError as error:
            letter = DeadLetter(error.reason, error.detail, data, attributes)
            return DecodedMessage([], [letter], encoding)
        return self._validated(events, data, attributes, encoding)

    def _detect_encoding(self, data: bytes, attributes: Mapping[str, str]) -> Encoding:
        if data.startswith(CONTAINER_MAGIC):
            return Encoding.CONTAINER
        if data.startswith(SINGLE_OBJECT_MAGIC):
            return Encoding.SINGLE_OBJECT
        if FINGERPRINT_ATTRIBUTE in attributes:
            return Encoding.SCHEMALESS
        raise _MessageError(
            DeadLetterReason.UNDECODABLE,
            "payload is neither an Avro object container file nor single-object "
            f"encoded, and the {FINGERPRINT_ATTRIBUTE!r} attribute is missing "
            f"(first bytes {data[:8].hex()!r})",
        )

    def _decode_events(
        self, encoding: Encoding, data: bytes, attributes: Mapping[str, str]
    ) -> list[Event]:
        if encoding is Encoding.CONTAINER:
            return _read_container(data, self.reader_schema)
        if encoding is Encoding.SINGLE_OBJECT:
            header_bytes = len(SINGLE_OBJECT_MAGIC) + 8
            if len(data) < header_bytes:
                raise _MessageError(
                    DeadLetterReason.TRUNCATED,
                    f"single-object header needs {header_bytes} bytes, "
                    f"message has {len(data)}",
                )
            fingerprint_hex = data[2:header_bytes].hex()
            body = data[header_bytes:]
        else:
            fingerprint_hex = attributes[FINGERPRINT_ATTRIBUTE].strip().lower()
            body = data
        writer_schema = self.registry.get(fingerprint_hex)
        if writer_schema is None:
            raise _MessageError(
                DeadLetterReason.UNKNOWN_SCHEMA,
                f"writer schema fingerprint {fingerprint_hex!r} is not registered; "
                f"known: {', '.join(self.registry.fingerprints())}",
            )
        return [_read_record(body, writer_schema, self.reader_schema)]

    def _validated(
        self,
        events: list[Event],
        data: bytes,
        attributes: dict[str, str],
        encoding: Encoding,
    ) -> DecodedMessage:
        if self.validate is None:
            return DecodedMessage(events, [], encoding)
        valid: list[Event] = []
        letters: list[DeadLetter] = []
        for index, event in enumerate(events):
            problems = self.validate(event)
            if problems:
                letters.append(
                    DeadLetter(
                        DeadLetterReason.INVALID_FIELDS,
                        "; ".join(problems),
                        data,
                        attributes,
                        record_index=index,
                    )
                )
            else:
                valid.append(event)
        return DecodedMessage(valid, letters, encoding)


def _read_record(body: bytes, writer_schema: Schema, reader_schema: Schema) -> Event:
    stream = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(stream, writer_schema, reader_schema)
    except EOFError as error:
        raise _MessageError(
            DeadLetterReason.TRUNCATED,
            f"record ends early after {len(body)} bytes: {error}",
        ) from error
    except SchemaResolutionError as error:
        raise _MessageError(DeadLetterReason.INCOMPATIBLE_SCHEMA, str(error)) from error
    except Exception as error:  # corrupt bytes raise IndexError, ValueError, ...
        raise _MessageError(
            DeadLetterReason.UNDECODABLE, f"{type(error).__name__}: {error}"
        ) from error
    if stream.tell() != len(body):
        raise _MessageError(
            DeadLetterReason.TRAILING_BYTES,
            f"record ends at byte {stream.tell()} of {len(body)}",
        )
    if not isinstance(record, dict):
        raise _MessageError(
            DeadLetterReason.INCOMPATIBLE_SCHEMA,
            f"writer schema yields {type(record).__name__}, not a record",
        )
    return record


def _read_container(data: bytes, reader_schema: Schema) -> list[Event]:
    stream = io.BytesIO(data)
    try:
        blocks = fastavro.block_reader(stream, reader_schema)
    except Exception as error:  # the header is read eagerly
        raise _MessageError(
            DeadLetterReason.TRUNCATED,
            f"container header is incomplete or invalid: {error}",
        ) from error
    events: list[Event] = []
    block_end = stream.tell()
    try:
        for block in blocks:
            events.extend(cast(Iterable[Event], block))
            block_end = stream.tell()
    except SchemaResolutionError as error:
        raise _MessageError(DeadLetterReason.INCOMPATIBLE_SCHEMA, str(error)) from error
    except Exception as error:
        raise _MessageError(
            _classify_bad_block(data[block_end:]),
            f"container is invalid after byte {block_end} of {len(data)}: "
            f"{type(error).__name__}: {error}",
        ) from error
    return events


def _classify_bad_block(rest: bytes) -> DeadLetterReason:
    """Tell a cut-off block from bytes after the last block.

    A block starts with two zig-zag varints (record count, byte size). When
    they parse as a plausible header that promises more bytes than remain, the
    block was cut off. Anything else after a complete block is trailing bytes.
    NOTE: the two cannot always be told apart: trailing bytes that happen to
    read as such a header (an appended newline, for one) are called truncated.
    """
    stream = io.BytesIO(rest)
    try:
        count = _read_zigzag_long(stream)
        if count <= 0:
            return DeadLetterReason.TRAILING_BYTES
        size = _read_zigzag_long(stream)
    except EOFError:
        return DeadLetterReason.TRUNCATED
    if size < 0:
        return DeadLetterReason.TRAILING_BYTES
    remaining = len(rest) - stream.tell()
    if size + _SYNC_MARKER_BYTES > remaining:
        return DeadLetterReason.TRUNCATED
    return DeadLetterReason.UNDECODABLE


def _read_zigzag_long(stream: io.BytesIO) -> int:
    shift = 0
    value = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise EOFError("varint ends early")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
        if shift > 63:
            return -1


def count_reasons(letters: Sequence[DeadLetter]) -> dict[str, int]:
    """Return how many dead letters there are per reason."""
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.reason.value] = counts.get(letter.reason.value, 0) + 1
    return counts
