"""Version names, manifests, the pointer history and list filters."""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from registry_helpers import make_fields

from rollback.backends.local import LocalStorage
from rollback.errors import (
    CorruptVersion,
    InvalidInput,
    InvalidVersionName,
    NotARegistry,
    RegistryError,
    RegistryNotFound,
    RegistryNotWritable,
)
from rollback.filters import compile_filter, flatten
from rollback.layout import parse_version_folder
from rollback.manifest import (
    FileEntry,
    Manifest,
    ManifestFields,
    _digest,
    compute_fingerprint,
)
from rollback.names import format_version, parse_version
from rollback.registry import open_registry
from rollback.state import PointerChange, ServingState


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("12", 12),
        ("v12", 12),
        ("V012", 12),
        (" v7 ", 7),
        (3, 3),
        ("v999999999", 999999999),
        ("v0000000003", 3),
        ("v" + "0" * 30 + "3", 3),  # 32 characters, the longest name
    ],
)
def test_version_name_accepted(name: str | int, number: int) -> None:
    assert parse_version(name) == number


@pytest.mark.parametrize(
    "name",
    [
        "v-1",
        "../x",
        "v12; rm",
        "v0",
        "0",
        "",
        "vv12",
        "v1.5",
        "12a",
        "v1234567890",
        "v" + "0" * 31 + "3",  # 33 characters
        "v\u00b2",
        1_000_000_000,
        True,
        -3,
    ],
)
def test_version_name_rejected(name: str | int) -> None:
    with pytest.raises(InvalidVersionName):
        parse_version(name)


def test_format_version() -> None:
    assert format_version(12) == "v12"


def _manifest() -> Manifest:
    return Manifest(
        version=4,
        parent=3,
        created_at=datetime(2026, 3, 1, 12, tzinfo=UTC),
        fields=make_fields(parent=3),
        files={"w.safetensors": FileEntry("w.safetensors", "ab" * 32, 10)},
    )


def test_manifest_round_trip() -> None:
    manifest = _manifest()

    parsed = Manifest.from_json(manifest.to_json(), 4)

    assert parsed.to_dict() == manifest.to_dict()
    assert parsed.fields.event_time_max == datetime(2026, 3, 1, tzinfo=UTC)


def test_manifest_of_other_version_rejected() -> None:
    with pytest.raises(CorruptVersion) as raised:
        Manifest.from_json(_manifest().to_json(), 5)
    assert "manifest.json names version v4" in str(raised.value)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"../../etc/hostname": {"sha256": "ab" * 32, "size_bytes": 1}}, "file name"),
        ({"a/b": {"sha256": "ab" * 32, "size_bytes": 1}}, "invalid file name 'a/b'"),
        ({"manifest.json": {"sha256": "ab" * 32, "size_bytes": 1}}, "file name"),
        ({}, "it lists no files"),
        ([], "it lists no files"),
        ({"w": {"sha256": "AB" * 32, "size_bytes": 1}}, "invalid SHA-256"),
        ({"w": {"sha256": "ab" * 32, "size_bytes": -1}}, "invalid size -1"),
        ({"w": {"sha256": "ab" * 32, "size_bytes": "1"}}, "invalid size '1'"),
    ],
)
def test_manifest_file_entries_checked(files: object, problem: str) -> None:
    body = _manifest().to_dict()
    body["files"] = files
    body["manifest_sha256"] = _digest(body)  # as a hand edit would redo it

    with pytest.raises(CorruptVersion) as raised:
        Manifest.from_json(json.dumps(body).encode(), 4)

    assert str(raised.value).startswith("version v4 is corrupt: manifest.json")
    assert problem in str(raised.value)


def test_state_format_stored_only_when_declared() -> None:
    plain = _manifest()
    declared = Manifest(
        version=4,
        parent=3,
        created_at=plain.created_at,
        fields=make_fields(parent=3, state_format="online-learner/1"),
        files=plain.files,
    )

    parsed = Manifest.from_json(declared.to_json(), 4)

    assert "state_format" not in plain.to_dict()
    assert parsed.fields.state_format == "online-learner/1"
    assert Manifest.from_json(plain.to_json(), 4).fields.state_format == ""


def test_truncated_manifest_rejected() -> None:
    data = _manifest().to_json()
    with pytest.raises(CorruptVersion) as raised:
        Manifest.from_json(data[: len(data) // 2], 4)
    assert str(raised.value).startswith("version v4 is corrupt: manifest.json")


@pytest.mark.parametrize(
    "overrides",
    [
        {"fingerprint": ""},
        {"events_count": -1},
        {"events_count": True},
        {"event_time_min": datetime(2026, 3, 2)},  # no time zone
        {"event_time_min": datetime(2026, 3, 2, tzinfo=UTC)},  # after the max
        {"holdout_metrics": {"accuracy": float("nan")}},
        {"holdout_metrics": {"accuracy": "high"}},
        {"label_vocabulary": "abc"},
        {"parent": 0},
        {"state_format": 1},
    ],
)
def test_invalid_manifest_fields(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        make_fields(**overrides)


def test_fields_from_mapping() -> None:
    fields = ManifestFields.from_mapping(
        {"fingerprint": "fp", "event_time_min": "2026-03-01T00:00:00+00:00"}
    )
    assert fields.event_time_min == datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput) as raised:
        ManifestFields.from_mapping({"fingerprint": "fp", "acuracy": 1})
    assert "unknown manifest fields ['acuracy']" in str(raised.value)


def test_fingerprint_ignores_key_order() -> None:
    first = compute_fingerprint({"a": 1, "b": [1, 2]}, {"lr": 0.1, "h": 8})
    second = compute_fingerprint({"b": [1, 2], "a": 1}, {"h": 8, "lr": 0.1})
    changed = compute_fingerprint({"a": 1, "b": [1, 2]}, {"lr": 0.2, "h": 8})

    assert first == second
    assert first != changed
    assert first.startswith("sha256:")


def _history(*moves: tuple[int | None, int, str]) -> ServingState:
    state = ServingState()
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for index, (source, target, kind) in enumerate(moves):
        state = state.with_change(
            PointerChange(
                seq=state.next_seq,
                change_id=str(index),
                time=start + timedelta(minutes=index),
                actor="job",
                kind=kind,
                from_version=source,
                to_version=target,
                reason="",
            )
        )
    return state


@pytest.mark.parametrize(
    ("moves", "previous"),
    [
        ([], None),
        ([(None, 1, "publish")], None),
        ([(None, 1, "publish"), (1, 2, "publish")], 1),
        # v3 was rolled back: going back from v2 skips it.
        (
            [
                (None, 1, "publish"),
                (1, 2, "publish"),
                (2, 3, "publish"),
                (3, 2, "auto_rollback"),
            ],
            1,
        ),
        # The number below the current one never served: v5 -> v3.
        ([(None, 3, "publish"), (3, 5, "publish")], 3),
        # v2 was rolled back, then promoted again and left by a publish.
        (
            [
                (None, 1, "publish"),
                (1, 2, "publish"),
                (2, 1, "rollback"),
                (1, 2, "promote"),
                (2, 4, "publish"),
            ],
            2,
        ),
        # Everything before the current one was rolled back.
        ([(None, 1, "publish"), (1, 2, "publish"), (2, 1, "rollback")], None),
    ],
)
def test_previous_version(
    moves: list[tuple[int | None, int, str]], previous: int | None
) -> None:
    assert _history(*moves).previous_version() == previous


def test_served_intervals() -> None:
    state = _history((None, 1, "publish"), (1, 2, "publish"), (2, 1, "rollback"))

    first = state.served_intervals(1)
    second = state.served_intervals(2)

    assert [(i.start.minute, i.end and i.end.minute, i.ended_by) for i in first] == [
        (0, 1, "publish"),
        (2, None, None),
    ]
    assert [(i.start.minute, i.end and i.end.minute, i.ended_by) for i in second] == [
        (1, 2, "rollback"),
    ]


@pytest.mark.parametrize(
    ("folder", "number"),
    [
        ("v000012", 12),
        ("v999999999", 999999999),
        ("v12", None),  # the registry writes six digits at least
        ("v0000012", None),
        ("v000000", None),
        ("v\u00b2", None),
        ("v00001\u0662", None),  # an Arabic-Indic digit
        ("x000012", None),
    ],
)
def test_parse_version_folder(folder: str, number: int | None) -> None:
    assert parse_version_folder(folder) == number


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "jump"}, "history entry 1 has unknown kind 'jump'"),
        ({"seq": "1"}, "a history entry has seq '1', expected an int >= 1"),
        ({"from_version": True}, "from_version True, expected an int >= 1"),
        ({"actor": None}, "history entry 1 has actor None, expected a string"),
        ({"details": []}, "history entry 1 has details [], expected an object"),
    ],
)
def test_damaged_history_entry_named(change: dict[str, Any], problem: str) -> None:
    body = json.loads(_history((None, 1, "publish")).to_json())
    body["history"][0].update(change)

    with pytest.raises(ValueError) as raised:
        ServingState.from_json(json.dumps(body).encode())

    assert problem in str(raised.value)


def test_state_with_gap_in_seq_rejected() -> None:
    body = json.loads(_history((None, 1, "publish"), (1, 2, "publish")).to_json())
    body["history"][1]["seq"] = 5

    with pytest.raises(ValueError, match="history entry 2 has seq 5"):
        ServingState.from_json(json.dumps(body).encode())


ROWS = [
    flatten(
        {
            "version": 12,
            "status": "serving",
            "metrics": {"holdout": {"accuracy": 0.91}},
            "code_version": "abc1234",
            "parent": 11,
        }
    ),
    flatten(
        {
            "version": 11,
            "status": "rolled back",
            "metrics": {"holdout": {"accuracy": 0.85}},
            "code_version": "abc1200",
            "parent": None,
        }
    ),
    flatten(
        {
            "version": 3,
            "status": "retired",
            "metrics": {"holdout": {"accuracy": 0.95}},
            "code_version": "ff00",
            "parent": None,
        }
    ),
]


@pytest.mark.parametrize(
    ("expression", "versions"),
    [
        ("version>=v11", [12, 11]),
        ("version=12", [12]),
        ("metrics.holdout.accuracy>0.9", [12, 3]),
        ("metrics.holdout.accuracy>0.9 AND version<10", [3]),
        ("metrics.holdout.accuracy>0.9 version<10", [3]),
        ("status=serving OR status='rolled back'", [12, 11]),
        ("NOT status=serving", [11, 3]),
        ("code_version:ABC12", [12, 11]),
        ("code_version~^abc12[0-9]{2}$", [12, 11]),
        ("(status=retired OR status=serving) AND metrics.holdout.accuracy<0.93", [12]),
        ("parent!=none", [12]),
        ("parent=none", [11, 3]),
        ("parent=NULL", [11, 3]),
        ("parent!=v11", [11, 3]),
        ("parent=v11", [12]),
    ],
)
def test_filter_selects(expression: str, versions: list[int]) -> None:
    matches = compile_filter(expression).matches
    assert [row["version"] for row in ROWS if matches(row)] == versions


@pytest.mark.parametrize(
    "expression",
    ["", "version", "version>", "(version=1", "version=1)", "a~[", "version=1 OR"],
)
def test_invalid_filter_rejected(expression: str) -> None:
    with pytest.raises(InvalidInput):
        compile_filter(expression)


def test_open_not_a_registry(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "registry.json").write_text('{"format": "mlflow"}')

    with pytest.raises(
        NotARegistry, match=r"contains other files but no registry\.json"
    ):
        open_registry(tmp_path, create=True)
    with pytest.raises(NotARegistry, match="is a file, not a folder"):
        open_registry(tmp_path / "file")
    with pytest.raises(NotARegistry, match="has format 'mlflow'"):
        open_registry(tmp_path / "other")


def test_open_missing_bucket(gcs_bucket: str) -> None:
    with pytest.raises(RegistryNotFound, match="gs://no-such-bucket/models"):
        open_registry("gs://no-such-bucket/models", create=True)


def test_open_unsupported_scheme() -> None:
    with pytest.raises(RegistryError, match="unsupported registry URL 's3://b/p'"):
        open_registry("s3://b/p")


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("versions/v000001/weights.bin", b"kept")

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RegistryNotWritable):
        storage.put("versions/v000001/weights.bin", b"x" * 1000)
    with pytest.raises(RegistryNotWritable):
        storage.create("versions/v000002/weights.bin", b"x" * 1000)

    left = sorted(path.name for path in tmp_path.rglob("*") if path.is_file())
    assert left == ["weights.bin"]
    assert (tmp_path / "versions/v000001/weights.bin").read_bytes() == b"kept"


@pytest.mark.parametrize(
    ("expression", "versions"),
    [
        ("created_at>'2026-12-05 08:00'", [2]),
        ("created_at>='2026-12-05'", [2, 1]),
        ("created_at<'2026-12-05T09:30+01:00'", [1]),
        ("created_at>'2026-12-05 23:59:59'", []),
    ],
)
def test_filter_compares_times(expression: str, versions: list[int]) -> None:
    rows = [
        {"version": 2, "created_at": "2026-12-05T08:54:50.628773+00:00"},
        {"version": 1, "created_at": "2026-12-05T07:10:00+00:00"},
    ]
    matches = compile_filter(expression).matches
    assert [row["version"] for row in rows if matches(row)] == versions
