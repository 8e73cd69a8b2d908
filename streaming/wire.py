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
whole becomes one dead letter. An event that decodes but fails validation
becomes a dead letter of its own, which carries the whole original message
and the event's index in it. Dead letters keep the original bytes and attributes.
Every message yields at least one event or one dead letter.

A container is checked block by block before fastavro decodes it, because
fastavro inflates a whole block in memory whatever its size, reads a block of
zero or negative records as no events, and parses the embedded writer schema
by recursion. :class:`DecodeLimits` bounds the decompressed size and the
event count of one message (16 MiB and 50,000 events by default).
"""

from __future__ import annotations

import bz2
import io
import json
import logging
import lzma
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import fastavro
from fastavro.read import SchemaResolutionError

from streaming.schema_registry import (
    Schema,
    SchemaRegistry,
    SchemaRegistryError,
    check_schema_structure,
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
DROPPED_ATTRIBUTE = "dead-letter-dropped-attributes"
# Pub/Sub takes at most 100 attributes per message.
MAX_ATTRIBUTES = 100
_SYNC_MARKER_BYTES = 16
# Pub/Sub takes attribute values of at most 1,024 bytes, so the detail is
# cut to this many bytes of UTF-8, at a character boundary.
_MAX_DETAIL_BYTES = 500
# The largest DecodeLimits.max_decoded_bytes: 1 TiB. The decompressors take
# budget + 1 as max_length, a C ssize_t, and raise OverflowError above
# 2**63 - 1 (CPython 3.11 zlib, bz2 and lzma), so any cap far below that
# works. 1 TiB is far above a worker's memory, so no useful setting is lost.
MAX_DECODED_BYTES = 1024**4
# The header of an Avro object container file (Avro specification 1.11,
# "Object Container Files").
_CONTAINER_HEADER_SCHEMA = parse_schema(
    {
        "type": "record",
        "name": "org.apache.avro.file.Header",
        "fields": [
            {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": 4}},
            {"name": "meta", "type": {"type": "map", "values": "bytes"}},
            {
                "name": "sync",
                "type": {"type": "fixed", "name": "Sync", "size": _SYNC_MARKER_BYTES},
            },
        ],
    }
)
# Container codecs that fastavro reads without optional packages.
SUPPORTED_CODECS = ("null", "deflate", "bzip2", "xz")
# Maximum number of container writer schemas whose check a decoder keeps.
MAX_KEPT_SCHEMAS = 64

Event = dict[str, Any]
EventValidator = Callable[[Event], list[str]]
EventPrescreen = Callable[[list[Event]], list[bool]]


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
    EMPTY = "empty"
    TOO_LARGE = "too-large"
    INVALID_SCHEMA = "invalid-schema"
    UNKNOWN_SCHEMA = "unknown-schema"
    INCOMPATIBLE_SCHEMA = "incompatible-schema"
    INVALID_FIELDS = "invalid-fields"
    # Set by the learner stage, not the decoder: see JobConfig.max_labels.
    LABEL_LIMIT = "label-limit"


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on what one message may decode to.

    A message over a limit becomes one ``too-large`` dead letter before its
    events are built. ``max_decoded_bytes`` bounds the record bytes after
    decompression: the default of 16 MiB is above Pub/Sub's 10 MB message
    limit, so only a compressed container can reach it. The default
    ``max_events_per_message`` is 100 times what ``streamlearn publish``
    sends per message. ``streamlearn run`` and ``streamlearn deploy`` set both
    with ``--max-decoded-bytes`` and ``--max-events-per-message``.
    """

    max_decoded_bytes: int = 16 * 1024 * 1024
    max_events_per_message: int = 50_000

    def __post_init__(self) -> None:
        for name in ("max_decoded_bytes", "max_events_per_message"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid {name} {value!r}: expected an int >= 1")
        if self.max_decoded_bytes > MAX_DECODED_BYTES:
            raise ValueError(
                f"invalid max_decoded_bytes {self.max_decoded_bytes}: the maximum "
                f"is {MAX_DECODED_BYTES} (1 TiB)"
            )


@dataclass(frozen=True)
class DeadLetter:
    """A rejected message or event.

    ``data`` is the original message, or for one rejected event of a
    container of several, that event alone in a container of its own.
    ``record_index`` is the event's position in ``data`` when one event was
    rejected, and None when the whole message was.
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
        # Room for the reason, the detail, the record index and the count of
        # attributes left out. The ones needed to decode the message again
        # come first, then the others by name.
        room = MAX_ATTRIBUTES - 4
        if len(attributes) > room:
            needed = [
                name
                for name in (FINGERPRINT_ATTRIBUTE, ENCODING_ATTRIBUTE)
                if name in attributes
            ]
            others = sorted(name for name in attributes if name not in needed)
            kept_names = [*needed, *others][:room]
            dropped = len(attributes) - room
            attributes = {name: attributes[name] for name in kept_names}
            attributes[DROPPED_ATTRIBUTE] = str(dropped)
        attributes[REASON_ATTRIBUTE] = self.reason.value
        detail = self.detail.encode("utf-8")[:_MAX_DETAIL_BYTES]
        attributes[DETAIL_ATTRIBUTE] = detail.decode("utf-8", errors="ignore")
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
    letters. ``prescreen``, when given, marks the events of a message that
    ``validate`` would pass, as a list of booleans, so that only the others
    are validated one by one. ``limits`` bounds the size of one message's
    events.
    """

    def __init__(
        self,
        reader_schema: Mapping[str, Any],
        registry: SchemaRegistry,
        validate: EventValidator | None = None,
        limits: DecodeLimits | None = None,
        prescreen: EventPrescreen | None = None,
    ) -> None:
        self.reader_schema: Schema = parse_schema(reader_schema)
        self._reader = reader_schema
        self._plain_schema: Schema | None = None
        self.registry = registry
        self.validate = validate
        self.prescreen = prescreen
        self.limits = limits if limits is not None else DecodeLimits()
        # The reader schema is always a known writer schema.
        self.registry.add(self.reader_schema)
        # Container writer schemas seen valid, as raw header bytes, each with
        # whether it equals the reader schema.
        self._container_schemas: dict[bytes, bool] = {}

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
            same = _check_container(data, self.limits, self._writes_as_reader)
            # With a reader schema fastavro resolves every field, even for an
            # identical writer. That halved the rate on job postings (1.13.1).
            return _read_container(data, None if same else self.reader_schema)
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
        if len(body) > self.limits.max_decoded_bytes:
            raise _MessageError(
                DeadLetterReason.TOO_LARGE,
                f"record has {len(body)} bytes; the maximum is "
                f"{self.limits.max_decoded_bytes}",
            )
        writer_schema = self.registry.get(fingerprint_hex)
        if writer_schema is None:
            raise _MessageError(
                DeadLetterReason.UNKNOWN_SCHEMA,
                f"writer schema fingerprint {fingerprint_hex!r} is not registered; "
                f"known: {', '.join(self.registry.fingerprints())}",
            )
        return [_read_record(body, writer_schema, self.reader_schema)]

    def _writes_as_reader(self, schema_bytes: bytes | None) -> bool:
        """Check a container's writer schema; return whether it is the reader's."""
        if schema_bytes is not None and schema_bytes in self._container_schemas:
            return self._container_schemas[schema_bytes]
        writer = _check_writer_schema(schema_bytes)
        same = writer == self.reader_schema
        if len(self._container_schemas) >= MAX_KEPT_SCHEMAS:
            self._container_schemas.clear()
        self._container_schemas[cast(bytes, schema_bytes)] = same
        return same

    def _validated(
        self,
        events: list[Event],
        data: bytes,
        attributes: dict[str, str],
        encoding: Encoding,
    ) -> DecodedMessage:
        if self.validate is None:
            return DecodedMessage(events, [], encoding)
        if self.prescreen is None:
            passed = [False] * len(events)
        else:
            passed = self.prescreen(events)
            if all(passed):
                return DecodedMessage(events, [], encoding)
        valid: list[Event] = []
        letters: list[DeadLetter] = []
        # The index of the event whose letter carries the whole message.
        carried_by: list[int] = []
        for index, event in enumerate(events):
            problems = [] if passed[index] else self.validate(event)
            if not problems:
                valid.append(event)
                continue
            detail = "; ".join(problems)
            if len(events) == 1:
                letters.append(
                    DeadLetter(
                        DeadLetterReason.INVALID_FIELDS,
                        detail,
                        data,
                        attributes,
                        record_index=index,
                    )
                )
            else:
                letters.append(
                    self._event_letter(
                        event, index, detail, data, attributes, carried_by
                    )
                )
        return DecodedMessage(valid, letters, encoding)

    def _event_letter(
        self,
        event: Event,
        index: int,
        detail: str,
        data: bytes,
        attributes: dict[str, str],
        carried_by: list[int],
    ) -> DeadLetter:
        """Return the dead letter of one invalid event of a container.

        It carries the event alone, in a container of the reader schema,
        because a copy of the whole message for each invalid event would
        multiply a bad producer's traffic by the events per message. The
        detail names the event's position in the original message.

        An event that does not read back from that container, such as an
        event time past the year 9999 from a writer that declared it a plain
        long, is written with the reader schema's logical types left out.
        If that fails too, the first such event's letter carries the whole
        message (``carried_by`` then contains its index), and later ones
        carry no data and name that event.
        """
        position = f"record {index} of the message: {detail}"
        container_attributes = {**attributes, ENCODING_ATTRIBUTE: "container"}
        for schema in (self.reader_schema, self._plain_reader_schema()):
            single = _single_container(event, schema)
            if single is not None:
                return DeadLetter(
                    DeadLetterReason.INVALID_FIELDS,
                    position,
                    single,
                    container_attributes,
                    record_index=0,
                )
        if carried_by:
            return DeadLetter(
                DeadLetterReason.INVALID_FIELDS,
                f"{position} (the message is in the dead letter of record "
                f"{carried_by[0]})",
                b"",
                attributes,
                record_index=index,
            )
        carried_by.append(index)
        logger.warning(
            "invalid record %d cannot be written alone, so its dead letter "
            "carries the whole message",
            index,
        )
        return DeadLetter(
            DeadLetterReason.INVALID_FIELDS,
            detail,
            data,
            attributes,
            record_index=index,
        )

    def _plain_reader_schema(self) -> Schema:
        """Return the reader schema without its logical types (parsed once)."""
        if self._plain_schema is None:
            self._plain_schema = parse_schema(_without_logical_types(self._reader))
        return self._plain_schema


def _single_container(event: Event, schema: Schema) -> bytes | None:
    """Return ``event`` alone in a container of ``schema`` if it reads back."""
    try:
        single = encode_container([event], schema)
        list(fastavro.reader(io.BytesIO(single)))
    except (ValueError, TypeError, OverflowError):
        return None
    return single


def _without_logical_types(schema: Any) -> Any:
    """Return a copy of a schema's JSON with every ``logicalType`` left out."""
    if isinstance(schema, Mapping):
        return {
            key: _without_logical_types(value)
            for key, value in schema.items()
            if key != "logicalType"
        }
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


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
    except OverflowError as error:
        raise _out_of_range(error) from error
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


def _out_of_range(error: OverflowError) -> _MessageError:
    # A valid Avro long can be out of range for its logical type: fastavro
    # raises OverflowError for a timestamp-millis of 2**62.
    return _MessageError(
        DeadLetterReason.INVALID_FIELDS,
        f"a value is out of range for its logical type: {error}",
    )


def _read_container(data: bytes, reader_schema: Schema | None) -> list[Event]:
    """Decode a container that ``_check_container`` accepted.

    Without ``reader_schema`` the records are read with the writer schema.
    """
    try:
        records = list(fastavro.reader(io.BytesIO(data), reader_schema))
    except SchemaResolutionError as error:
        raise _MessageError(DeadLetterReason.INCOMPATIBLE_SCHEMA, str(error)) from error
    except OverflowError as error:
        raise _out_of_range(error) from error
    except Exception as error:  # corrupt bytes raise IndexError, ValueError, ...
        raise _MessageError(
            DeadLetterReason.UNDECODABLE,
            f"container records are invalid: {type(error).__name__}: {error}",
        ) from error
    return cast(list[Event], records)


def _check_container(
    data: bytes, limits: DecodeLimits, check_schema: Callable[[bytes | None], bool]
) -> bool:
    """Raise _MessageError unless the container's header and blocks are sound.

    ``check_schema`` checks the writer schema's bytes from the header, raising
    _MessageError when it is invalid, and its result is returned. Each block
    needs a positive record count, a byte size that fits the message and the
    header's sync marker, and all blocks together must stay within
    ``limits`` once decompressed. The records themselves are left to
    fastavro.
    """
    stream = io.BytesIO(data)
    codec, sync_marker, schema_bytes = _read_container_header(stream)
    result = check_schema(schema_bytes)
    events = 0
    decoded_bytes = 0
    block_number = 0
    while stream.tell() < len(data):
        block_number += 1
        count, size = _read_block_header(stream, data, block_number)
        events += count
        if events > limits.max_events_per_message:
            raise _MessageError(
                DeadLetterReason.TOO_LARGE,
                f"container has more than {limits.max_events_per_message} events "
                f"by block {block_number}",
            )
        block = stream.read(size)
        if stream.read(_SYNC_MARKER_BYTES) != sync_marker:
            raise _MessageError(
                DeadLetterReason.UNDECODABLE,
                f"container block {block_number} does not end with the header's "
                "sync marker",
            )
        budget = limits.max_decoded_bytes - decoded_bytes
        decoded_bytes += _decompressed_size(codec, block, budget, block_number)
    if block_number == 0:
        raise _MessageError(
            DeadLetterReason.EMPTY, "container has a header but no block of events"
        )
    return result


def _read_container_header(stream: io.BytesIO) -> tuple[str, bytes, bytes | None]:
    """Read the header; return the codec, the sync marker and the writer schema."""
    try:
        header = fastavro.schemaless_reader(stream, _CONTAINER_HEADER_SCHEMA)
    except EOFError as error:
        raise _MessageError(
            DeadLetterReason.TRUNCATED, f"container header ends early: {error}"
        ) from error
    except Exception as error:  # corrupt bytes raise IndexError, ValueError, ...
        raise _MessageError(
            DeadLetterReason.UNDECODABLE,
            f"container header is invalid: {type(error).__name__}: {error}",
        ) from error
    fields = cast(dict[str, Any], header)
    metadata = fields["meta"]
    schema_bytes = metadata.get("avro.schema")
    codec_bytes = metadata.get("avro.codec", b"null")
    codec = codec_bytes.decode("utf-8", errors="replace")
    if codec not in SUPPORTED_CODECS:
        raise _MessageError(
            DeadLetterReason.UNDECODABLE,
            f"container codec {codec!r} is not supported; expected one of "
            f"{', '.join(SUPPORTED_CODECS)}",
        )
    return codec, cast(bytes, fields["sync"]), schema_bytes


def _check_writer_schema(schema_bytes: bytes | None) -> Schema:
    """Parse a container's writer schema; raise _MessageError when invalid."""
    if schema_bytes is None:
        raise _MessageError(
            DeadLetterReason.INVALID_SCHEMA,
            "container header has no 'avro.schema' entry",
        )
    try:
        schema = json.loads(schema_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise _MessageError(
            DeadLetterReason.INVALID_SCHEMA,
            f"container writer schema is not valid JSON: {type(error).__name__}: "
            f"{error}",
        ) from error
    try:
        check_schema_structure(schema)
        return parse_schema(schema)
    except SchemaRegistryError as error:
        raise _MessageError(
            DeadLetterReason.INVALID_SCHEMA, f"container writer schema: {error}"
        ) from error
    except Exception as error:  # fastavro raises several unrelated types
        raise _MessageError(
            DeadLetterReason.INVALID_SCHEMA,
            f"container writer schema is invalid: {type(error).__name__}: {error}",
        ) from error


def _read_block_header(
    stream: io.BytesIO, data: bytes, block_number: int
) -> tuple[int, int]:
    """Read a block's record count and byte size; raise unless plausible."""
    start = stream.tell()
    try:
        count = _read_zigzag_long(stream)
        size = _read_zigzag_long(stream)
    except EOFError:
        count = size = -1
        complete = False
    else:
        complete = True
    fits = size + _SYNC_MARKER_BYTES <= len(data) - stream.tell()
    if complete and count > 0 and size >= 0 and fits:
        return count, size
    if block_number > 1:
        raise _MessageError(
            _classify_bad_block(data[start:]),
            f"container is invalid after byte {start} of {len(data)}, the end of "
            f"block {block_number - 1}",
        )
    if not complete or (count > 0 and size >= 0):
        raise _MessageError(
            DeadLetterReason.TRUNCATED,
            f"container block 1 ends early: the message has {len(data)} bytes",
        )
    if count == 0:
        raise _MessageError(
            DeadLetterReason.EMPTY, "container block 1 has a record count of 0"
        )
    raise _MessageError(
        DeadLetterReason.UNDECODABLE,
        f"container block 1 has record count {count} and byte size {size}; "
        "both must be positive",
    )


def _decompressed_size(codec: str, block: bytes, budget: int, block_number: int) -> int:
    """Return the block's size once decompressed; raise if it exceeds ``budget``."""
    try:
        if codec == "deflate":
            # Avro's deflate is raw deflate (RFC 1951): no zlib header.
            decoded = zlib.decompressobj(-15).decompress(block, budget + 1)
        elif codec == "bzip2":
            decoded = bz2.BZ2Decompressor().decompress(block, budget + 1)
        elif codec == "xz":
            decoded = lzma.LZMADecompressor().decompress(block, budget + 1)
        else:
            decoded = block
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as error:
        raise _MessageError(
            DeadLetterReason.UNDECODABLE,
            f"container block {block_number} cannot be decompressed with "
            f"{codec}: {error}",
        ) from error
    if len(decoded) > budget:
        raise _MessageError(
            DeadLetterReason.TOO_LARGE,
            f"container decompresses to more than the maximum of "
            f"{budget} bytes left by block {block_number}",
        )
    return len(decoded)


def _classify_bad_block(rest: bytes) -> DeadLetterReason:
    """Tell a cut-off block from bytes after the last block.

    A block starts with two zig-zag varints (record count, byte size). When
    they parse as a plausible header that promises more bytes than remain, the
    block was cut off. Anything else after a complete block is trailing bytes.
    NOTE: the two cannot always be distinguished. Trailing bytes that happen
    to read as such a header (an appended newline, for one) are classed as
    truncated.
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
