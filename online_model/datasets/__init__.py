"""Real data sets as event streams: converters, the iterator API and Avro files.

>>> from online_model.datasets import iter_events, ConversionReport
>>> report = ConversionReport("electricity")
>>> first = next(iter_events("electricity", report=report))
>>> first["class"]
'UP'
"""

from __future__ import annotations

import itertools
import logging
import time
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
    source = Path(path) if path is not None else data_dir() / file_name
    if not source.is_file():
        raise FileNotFoundError(
            f"source file for dataset {dataset_name!r} not found: "
            f"{source}; set STREAMLEARN_DATA_DIR or pass a path"
        )
    if report is None:
        report = ConversionReport(dataset_name)
    report.source = str(source)
    for event in converter(source, report, keep_unlabelled=keep_unlabelled):
        report.events += 1
        yield event


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
    """Convert a data set to an Avro event file; return the conversion report."""
    report = ConversionReport(dataset_name)
    events: Iterable[Event] = iter_events(dataset_name, source, report)
    if limit is not None:
        events = itertools.islice(events, limit)
    started = time.perf_counter()
    with open(out_path, "wb") as out:
        write_events(events, dataset_name, out, progress)
    logger.info(
        "converted %s: %d events to %s in %.1f s",
        dataset_name,
        report.events,
        out_path,
        time.perf_counter() - started,
    )
    return report


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the events of an Avro object container file."""
    with open(path, "rb") as stream:
        for record in fastavro.reader(stream):
            if not isinstance(record, dict):
                raise ValueError(
                    f"Avro file {str(path)!r} contains a value that is not a record"
                )
            yield record
