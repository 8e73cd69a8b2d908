"""Real data sets as event streams: converters, the iterator API and Avro files.

>>> from online_model.datasets import iter_events, ConversionReport
>>> report = ConversionReport("electricity")
>>> first = next(iter_events("electricity", report=report))
>>> first["class"]
'UP'
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import itertools
import logging
import os
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fastavro

from online_model.datasets import sources
from online_model.datasets.base import (
    ConversionReport,
    Event,
    RowError,
    data_dir,
)
from online_model.spec import load_schema

__all__ = [
    "DATASETS",
    "ConversionReport",
    "Event",
    "RowError",
    "convert",
    "iter_events",
    "read_events",
    "write_events",
]

logger = logging.getLogger(__name__)

Converter = Callable[..., Iterator[Event]]

# Dataset name (also the name of its Avro schema and feature spec) ->
# (default source file under the data folder, converter).
DATASETS: dict[str, tuple[str, Converter]] = {
    "job_postings": (sources.JOB_POSTINGS_FILE, sources.job_postings),
    "so_survey_2016": (sources.SURVEY_FILE, sources.so_survey_2016),
    "aijobs_salaries": (sources.AIJOBS_FILE, sources.aijobs_salaries),
    "electricity": (sources.ELECTRICITY_FILE, sources.electricity),
}


def iter_events(
    dataset_name: str,
    path: str | Path | None = None,
    report: ConversionReport | None = None,
    keep_unlabelled: bool = False,
) -> Iterator[Event]:
    """Yield the events of a real data set in stream order.

    ``path`` overrides the source file (default: the data folder's copy).
    Rows that cannot be converted are counted in ``report`` by reason; pass a
    :class:`ConversionReport` to read the counts once the iterator is spent.
    Rows without a label are skipped (reason ``no_label``) unless
    ``keep_unlabelled`` is true, in which case they become prediction
    requests with a null label. Event times are UTC-aware datetimes, as
    fastavro decodes ``timestamp-millis``.
    """
    if dataset_name not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset_name!r}; choose from: {', '.join(DATASETS)}"
        )
    file_name, converter = DATASETS[dataset_name]
    if path is None:
        source = data_dir() / file_name
        if not source.is_file():
            raise FileNotFoundError(
                f"source file for dataset {dataset_name!r} not found: "
                f"{source}; set STREAMLEARN_DATA_DIR or pass a path"
            )
    else:
        source = Path(path)
        _check_source_path(source, dataset_name, file_name)
    if report is None:
        report = ConversionReport(dataset_name)
    report.source = str(source)
    for event in converter(source, report, keep_unlabelled=keep_unlabelled):
        report.events += 1
        yield event


def _check_source_path(source: Path, dataset_name: str, file_name: str) -> None:
    if not source.exists():
        raise FileNotFoundError(
            f"source file {str(source)!r} not found; check the path"
        )
    if not source.is_file():
        raise IsADirectoryError(
            f"source {str(source)!r} is not a file; pass the {dataset_name} "
            f"source file itself, such as {file_name}"
        )


def write_events(
    events: Iterable[Event],
    schema_name: str,
    out: IO[bytes],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write events to an Avro object container file; return how many were written."""
    parsed = fastavro.parse_schema(load_schema(schema_name))
    written = 0

    def counted() -> Iterator[Event]:
        nonlocal written
        for event in events:
            written += 1
            if progress is not None and written % 10_000 == 0:
                progress(written)
            yield event

    fastavro.writer(out, parsed, counted(), codec="deflate")
    return written


def convert(
    dataset_name: str,
    out_path: str | Path,
    source: str | Path | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ConversionReport:
    """Convert a data set to an Avro event file; return the conversion report.

    The file is written under a temporary name in the same folder and renamed
    to ``out_path`` only when the conversion succeeds, so a failed conversion
    leaves an existing file unchanged. A source file that cannot be read
    raises ValueError or OSError with the file's name in the message.
    """
    out = Path(out_path)
    _check_out_path(out, source)
    report = ConversionReport(dataset_name)
    events: Iterable[Event] = iter_events(dataset_name, source, report)
    if limit is not None:
        events = itertools.islice(events, limit)
    started = time.perf_counter()
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            write_events(events, dataset_name, stream, progress)
        os.replace(temporary, out)
    except (
        UnicodeDecodeError,
        gzip.BadGzipFile,
        EOFError,
        zlib.error,
        csv.Error,
    ) as error:
        raise ValueError(_source_error_message(report, error)) from error
    finally:
        # After a successful rename the temporary name no longer exists.
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    logger.info(
        "converted %s: %d events to %s in %.1f s",
        dataset_name,
        report.events,
        out_path,
        time.perf_counter() - started,
    )
    return report


def _check_out_path(out: Path, source: str | Path | None) -> None:
    if out.is_dir():
        raise IsADirectoryError(
            f"output {str(out)!r} is a folder; pass the path of the Avro file to write"
        )
    if out.is_symlink() or (out.exists() and not out.is_file()):
        # The temporary file would replace the link, pipe or device itself.
        raise ValueError(
            f"output {str(out)!r} is not a regular file; pass the path of a file"
        )
    if not out.parent.is_dir():
        raise FileNotFoundError(
            f"output folder {str(out.parent)!r} not found; create it first"
        )
    if source is not None and out.resolve() == Path(source).resolve():
        raise ValueError(
            f"output {str(out)!r} is the source file; write the events elsewhere"
        )


def _source_error_message(report: ConversionReport, error: Exception) -> str:
    """Return a one-line message that names the source file and the fix."""
    name = repr(report.source)
    if isinstance(error, UnicodeDecodeError):
        return (
            f"source file {name} is not UTF-8 text ({error.reason}); save it as UTF-8"
        )
    if isinstance(error, gzip.BadGzipFile):
        return (
            f"source file {name} is not a valid gzip file ({error}); remove the .gz "
            "suffix from a plain text file, or get a fresh copy"
        )
    if isinstance(error, EOFError | zlib.error):
        return (
            f"source file {name} is truncated or corrupt after {report.rows_read} "
            f"rows ({error}); get a fresh copy"
        )
    row_number = report.rows_read + 1
    return (
        f"source file {name} is not valid CSV at data row {row_number} ({error}); "
        "check the quoting in that row"
    )


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the events of an Avro object container file."""
    with open(path, "rb") as stream:
        for record in fastavro.reader(stream):
            if not isinstance(record, dict):
                raise ValueError(
                    f"Avro file {str(path)!r} contains a value that is not a record"
                )
            yield record
