"""Events from Avro and CSV files, for the publish, predict and learn commands.

Every input file is checked before the first event is sent or scored: it
exists, has a supported suffix, and an Avro file has a readable header whose
writer schema has the fields the event schema needs. Errors found while
reading, once events flow, are raised as :class:`InputFileError` with the
file's name, so that a command can print one line and exit.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import fastavro

if TYPE_CHECKING:
    from online_model.datasets import ConversionReport

Event = dict[str, Any]

AVRO_SUFFIX = ".avro"
CSV_SUFFIXES = (".csv", ".csv.gz")
_GZIP_MAGIC = b"\x1f\x8b"


class InputFileError(ValueError):
    """An input file that cannot be read as events; the message names it."""


def check_input_files(
    files: Sequence[str],
    dataset: str | None,
    schema: Mapping[str, Any] | None = None,
) -> None:
    """Raise InputFileError for the first file that cannot be read as events.

    CSV files need ``dataset`` to name their converter. When ``schema`` is
    given, an Avro file's writer schema must have every field of ``schema``
    that has no default.
    """
    for name in files:
        path = Path(name)
        if not path.exists():
            raise InputFileError(f"input file {name!r} not found")
        if not path.is_file():
            raise InputFileError(
                f"input {name!r} is not a file; pass .avro, .csv or .csv.gz files"
            )
        if path.name.endswith(AVRO_SUFFIX):
            _check_avro_file(path, schema)
        elif path.name.endswith(CSV_SUFFIXES):
            _check_csv_file(path, dataset)
        else:
            raise InputFileError(
                f"unsupported file {name!r}: expected .avro, .csv or .csv.gz"
            )


def _check_avro_file(path: Path, schema: Mapping[str, Any] | None) -> None:
    try:
        with open(path, "rb") as stream:
            writer_schema = fastavro.reader(stream).writer_schema
    except Exception as error:  # fastavro raises several unrelated types
        raise InputFileError(
            f"{str(path)!r} is not an Avro object container file: cannot read its "
            f"header ({type(error).__name__}: {error})"
        ) from error
    if schema is None:
        return
    missing = missing_fields(writer_schema, schema)
    if missing:
        raise InputFileError(
            f"Avro file {str(path)!r} lacks the fields {', '.join(missing)} of the "
            f"event schema {schema.get('name')!r}"
        )


def _missing_defaults(
    writer_schema: Any, reader_schema: Mapping[str, Any] | None
) -> Event:
    """Return the defaults of the reader's fields that the writer lacks.

    Only defaults that decode to themselves are filled in: null, booleans,
    numbers, strings of string or enum fields, and lists of those. A field
    whose default needs decoding, such as bytes or a record, is left for the
    event checks to report as missing.
    """
    if reader_schema is None:
        return {}
    written = _field_names(writer_schema)
    return {
        field["name"]: field["default"]
        for field in reader_schema.get("fields", [])
        if "default" in field
        and field["name"] not in written
        and _plain_default(field["type"], field["default"])
    }


def _plain_default(field_type: Any, default: Any) -> bool:
    """Return whether a field's JSON default is already its decoded value."""
    if isinstance(field_type, list):
        # A union's default belongs to its first branch.
        field_type = field_type[0] if field_type else None
    if isinstance(field_type, dict):
        kind = field_type.get("type")
        if kind == "array":
            return isinstance(default, list) and all(
                _plain_default(field_type.get("items"), item) for item in default
            )
        if kind == "enum":
            return isinstance(default, str)
        # A logical type (such as timestamp-millis) decodes its default.
        if "logicalType" in field_type:
            return False
        field_type = kind
    if default is None:
        return field_type == "null"
    if isinstance(default, bool):
        return field_type == "boolean"
    if isinstance(default, int | float):
        return field_type in ("int", "long", "float", "double")
    if isinstance(default, str):
        return field_type == "string"
    return False


def _field_names(schema: Any) -> set[str]:
    if isinstance(schema, dict) and schema.get("type") == "record":
        return {field["name"] for field in schema.get("fields", [])}
    return set()


def missing_fields(writer_schema: Any, reader_schema: Mapping[str, Any]) -> list[str]:
    """Return the reader's fields without a default that the writer lacks."""
    written = _field_names(writer_schema)
    return [
        field["name"]
        for field in reader_schema.get("fields", [])
        if "default" not in field and field["name"] not in written
    ]


def _check_csv_file(path: Path, dataset: str | None) -> None:
    if dataset is None:
        raise InputFileError(
            f"CSV file {str(path)!r} needs --dataset to name its converter"
        )
    if path.name.endswith(".gz"):
        with open(path, "rb") as stream:
            if stream.read(len(_GZIP_MAGIC)) != _GZIP_MAGIC:
                raise InputFileError(
                    f"{str(path)!r} is not gzip-compressed; rename a plain CSV file "
                    "to .csv"
                )


def read_sources(
    files: Sequence[str],
    dataset: str | None,
    reports: list[ConversionReport] | None = None,
    keep_unlabelled: bool = False,
    schema: Mapping[str, Any] | None = None,
) -> Iterator[Event]:
    """Yield the events of ``files`` in order, or of the shipped ``dataset``.

    With files, ``dataset`` only names the converter of the CSV files, and the
    shipped data set itself is not read. Each converted source appends its
    :class:`ConversionReport` (rows skipped, by reason) to ``reports``. CSV
    rows without a label are skipped unless ``keep_unlabelled`` is true. With
    the event ``schema``, an Avro file's events get the schema's default for
    each field their writer schema lacks, as Avro schema resolution would.
    """
    from online_model.datasets import ConversionReport, iter_events

    if reports is None:
        reports = []
    if not files:
        if dataset is None:
            raise InputFileError("missing input: pass files or a dataset")
        report = ConversionReport(dataset)
        reports.append(report)
        yield from iter_events(dataset, report=report, keep_unlabelled=keep_unlabelled)
        return
    for name in files:
        path = Path(name)
        try:
            if path.name.endswith(AVRO_SUFFIX):
                yield from _read_avro(path, schema)
            else:
                report = ConversionReport(dataset or "")
                reports.append(report)
                yield from iter_events(
                    cast(str, dataset), path, report, keep_unlabelled
                )
        except InputFileError:
            raise
        except UnicodeDecodeError as error:
            raise InputFileError(
                f"{name!r} is not UTF-8 text ({error.reason}); save it as UTF-8"
            ) from error
        except gzip.BadGzipFile as error:
            raise InputFileError(
                f"{name!r} is not a valid gzip file: {error}"
            ) from error
        except EOFError as error:
            raise InputFileError(f"{name!r} ends early: {error}") from error
        except zlib.error as error:
            raise InputFileError(
                f"{name!r} is corrupt ({error}); get a fresh copy"
            ) from error
        except csv.Error as error:
            raise InputFileError(f"{name!r} is not valid CSV: {error}") from error
        except (OSError, ValueError) as error:
            # The converters' own errors name the file already.
            message = (
                str(error) if name in str(error) else f"cannot read {name!r}: {error}"
            )
            raise InputFileError(message) from error


def _read_avro(path: Path, schema: Mapping[str, Any] | None) -> Iterator[Event]:
    with open(path, "rb") as stream:
        records = fastavro.reader(stream)
        defaults = _missing_defaults(records.writer_schema, schema)
        count = 0
        try:
            for record in records:
                if defaults:
                    record = {**defaults, **cast(Event, record)}
                yield cast(Event, record)
                count += 1
        except Exception as error:  # corrupt bytes raise IndexError, ValueError, ...
            raise InputFileError(
                f"Avro file {str(path)!r} is invalid after {count} records: "
                f"{type(error).__name__}: {error}"
            ) from error
