from __future__ import annotations

from pathlib import Path
from typing import Any

import fastavro
import pytest

from online_model.event_files import _plain_default, read_sources

RECORD = {"type": "record", "name": "R", "fields": []}


@pytest.mark.parametrize(
    ("field_type", "default", "filled"),
    [
        (["null", "double"], None, True),
        ("string", "x", True),
        ("long", 3, True),
        ("boolean", True, True),
        ("int", True, False),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, "a", True),
        ({"type": "array", "items": "string"}, [], True),
        ({"type": "array", "items": "string"}, ["a"], True),
        ("bytes", "\u00ff", False),
        ({"type": "fixed", "name": "F", "size": 1}, "a", False),
        ({"type": "long", "logicalType": "timestamp-millis"}, 0, False),
        (RECORD, {}, False),
    ],
)
def test_plain_default_kinds(field_type: Any, default: Any, filled: bool) -> None:
    assert _plain_default(field_type, default) is filled


def test_older_writer_gets_plain_defaults_only(tmp_path: Path) -> None:
    writer = {
        "type": "record",
        "name": "E",
        "fields": [{"name": "id", "type": "string"}],
    }
    reader = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "id", "type": "string"},
            {
                "name": "tags",
                "type": {"type": "array", "items": "string"},
                "default": [],
            },
            {"name": "note", "type": ["null", "string"], "default": None},
            {"name": "blob", "type": "bytes", "default": "\u00ff"},
        ],
    }
    path = tmp_path / "older.avro"
    with open(path, "wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(writer), [{"id": "a"}])

    events = list(read_sources([str(path)], None, schema=reader))

    assert events == [{"id": "a", "tags": [], "note": None}]
