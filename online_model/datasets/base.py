"""The contract every dataset converter follows, and the conversion report.

A converter reads one real source file and yields events as plain dicts
shaped by the dataset's Avro schema, in stream order. A row that cannot be
converted raises :class:`RowError`; the caller counts it in the
:class:`ConversionReport` under the error's reason and goes on.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATA_DIR_VARIABLE = "STREAMLEARN_DATA_DIR"
REPOSITORY_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
# Longer values are cut to this many characters in skip reasons and examples.
MAX_SHOWN_VALUE_CHARS = 80

Event = dict[str, Any]


class RowError(ValueError):
    """A source row that cannot become an event; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class ConversionReport:
    """Counts of one conversion: rows read, events produced, rows skipped by reason.

    ``examples`` keeps the first skipped row number and detail per reason, so
    a report can show what a reason means in the data.
    """

    dataset: str
    source: str = ""
    rows_read: int = 0
    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, row_number: int, error: RowError) -> None:
        """Count one skipped row under its reason."""
        self.skipped[error.reason] += 1
        self.examples.setdefault(error.reason, f"row {row_number}: {error.detail}")

    @property
    def skipped_total(self) -> int:
        """The number of rows skipped for any reason."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Return a one-paragraph, human-readable account of the conversion."""
        lines = [
            f"{self.dataset}: read {self.rows_read} rows from {self.source}, "
            f"wrote {self.events} events, skipped {self.skipped_total}"
        ]
        for reason, count in self.skipped.most_common():
            lines.append(f"  skipped {count} ({reason}), e.g. {self.examples[reason]}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible data."""
        return {
            "dataset": self.dataset,
            "source": self.source,
            "rows_read": self.rows_read,
            "events": self.events,
            "skipped": dict(self.skipped),
            "examples": dict(self.examples),
        }


RowParser = Callable[[dict[str, str], int], Event]


def data_dir() -> Path:
    """Return the folder that contains the source files.

    ``$STREAMLEARN_DATA_DIR`` when set, else the repository's ``data/``.
    """
    configured = os.environ.get(DATA_DIR_VARIABLE)
    return Path(configured) if configured else REPOSITORY_DATA_DIR


def open_text(path: Path) -> io.TextIOWrapper:
    """Open a plain or gzip-compressed UTF-8 text file for reading.

    A leading byte order mark is dropped, because spreadsheet programs write
    one and it would otherwise become part of the first column's name.
    """
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def check_header(
    path: Path, header: Sequence[str] | None, required: Collection[str]
) -> None:
    """Raise ValueError unless a CSV header names each column once and has ``required``.

    Runs before the first row is converted, so that a wrong file fails with
    one error instead of a skip count for every row.
    """
    if not header:
        raise ValueError(
            f"CSV file {str(path)!r} is empty: expected a header row with the "
            f"columns {', '.join(required)}"
        )
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise ValueError(
            f"CSV file {str(path)!r} repeats the header column(s) "
            f"{', '.join(map(repr, repeated))}; rename or remove the copies"
        )
    missing = [column for column in required if column not in header]
    if missing:
        raise ValueError(
            f"CSV file {str(path)!r} lacks the required column(s) "
            f"{', '.join(map(repr, missing))}; check that it is the right file "
            "and that its first line is the header"
        )


def shown_value(text: str) -> str:
    """Return ``repr(text)``, cut to the first 80 characters and '...' when longer."""
    if len(text) <= MAX_SHOWN_VALUE_CHARS:
        return repr(text)
    return repr(text[:MAX_SHOWN_VALUE_CHARS]) + "..."


def parse_rows(
    rows: Iterator[tuple[int, dict[str, str]]],
    parse: RowParser,
    report: ConversionReport,
) -> Iterator[tuple[int, Event]]:
    """Parse numbered source rows, counting failures in ``report``."""
    for row_number, row in rows:
        report.rows_read += 1
        try:
            _check_columns(row)
            event = parse(row, row_number)
        except RowError as error:
            report.skip(row_number, error)
            continue
        yield row_number, event


def _check_columns(row: dict[str, str]) -> None:
    # csv.DictReader gives a short row's missing columns the value None and
    # puts a long row's extra values under the key None.
    missing = [column for column, value in row.items() if value is None]
    if missing:
        raise RowError(
            "wrong_column_count", f"{len(missing)} columns missing, from {missing[0]}"
        )
    if None in row:
        raise RowError("wrong_column_count", "more values than header columns")


def parse_utc_time(text: str, fmt: str) -> datetime:
    """Parse a naive UTC timestamp and return it as an aware datetime."""
    try:
        parsed = datetime.strptime(text, fmt)
    except ValueError:
        raise RowError(
            "invalid_time", f"{shown_value(text)} does not match {fmt}"
        ) from None
    return parsed.replace(tzinfo=UTC)


def optional_float(row: dict[str, str], column: str) -> float | None:
    """Return a column as a finite float, None when empty; raise RowError otherwise."""
    text = row.get(column, "")
    if text == "" or text == "NA":
        return None
    try:
        value = float(text)
    except ValueError:
        raise RowError("invalid_number", f"{column}={shown_value(text)}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise RowError("invalid_number", f"{column}={shown_value(text)} is not finite")
    return value


def optional_str(row: dict[str, str], column: str) -> str | None:
    """Return a column's text, None when empty."""
    text = row.get(column, "")
    return text if text != "" else None


def label_or_skip(row: dict[str, str], column: str) -> str:
    """Return the label column; raise RowError('no_label') when it is empty."""
    text = row.get(column, "")
    if text == "":
        raise RowError("no_label", f"{column} is empty")
    return text
