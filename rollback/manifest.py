"""The manifest the registry writes for every version.

A manifest records the lineage of a version: its parent and the events it
was trained on. It records the decision: its holdout metrics and the
champion's at that time. It records what the version needs to run: the
label vocabulary, the fingerprint of the feature spec and model
configuration, and the code version. It also stores the SHA-256 and size of
every file, and a SHA-256 of its own content, so that a damaged manifest is
detected like a damaged file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rollback.errors import CorruptVersion, InvalidInput
from rollback.names import format_version

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "streamlearn-manifest/1"

# File names stay flat and portable: no folders, no leading dot.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def compute_fingerprint(
    feature_spec: Mapping[str, Any], model_config: Mapping[str, Any]
) -> str:
    """Return ``sha256:<hex>`` of the feature spec and model config as JSON.

    Keys are sorted, so two equal configurations give the same fingerprint
    whatever order their keys were written in.
    """
    canonical = json.dumps(
        {"feature_spec": feature_spec, "model_config": model_config},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ManifestFields:
    """Facts the publisher states about a version; the registry adds the rest.

    ``parent`` is the version the candidate was trained from; None means
    the version serving at publish time. Event times must carry a time zone.
    """

    fingerprint: str
    events_count: int = 0
    event_time_min: datetime | None = None
    event_time_max: datetime | None = None
    holdout_metrics: Mapping[str, float] = field(default_factory=dict)
    champion_metrics: Mapping[str, float] | None = None
    label_vocabulary: Sequence[str] = ()
    code_version: str = ""
    parent: int | None = None
    # Format of the learner's state files, such as "online-learner/1"; empty
    # when the publisher declares none. Compared with the running job's on a
    # rollback, because weights are opaque bytes to the registry.
    state_format: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise InvalidInput(
                f"invalid fingerprint {self.fingerprint!r}: expected a non-empty "
                "string, such as compute_fingerprint(feature_spec, model_config)"
            )
        if isinstance(self.events_count, bool) or not isinstance(
            self.events_count, int
        ):
            raise InvalidInput(
                f"invalid events_count {self.events_count!r}: expected an int >= 0"
            )
        if self.events_count < 0:
            raise InvalidInput(
                f"invalid events_count {self.events_count}: expected an int >= 0"
            )
        for name in ("event_time_min", "event_time_max"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, datetime) or value.tzinfo is None
            ):
                raise InvalidInput(
                    f"invalid {name} {value!r}: expected a datetime with a time zone"
                )
        low, high = self.event_time_min, self.event_time_max
        if low is not None and high is not None and low > high:
            raise InvalidInput(
                f"invalid event-time range: event_time_min {low.isoformat()} is "
                f"after event_time_max {high.isoformat()}"
            )
        _check_metrics("holdout_metrics", self.holdout_metrics)
        if self.champion_metrics is not None:
            _check_metrics("champion_metrics", self.champion_metrics)
        if isinstance(self.label_vocabulary, str) or not all(
            isinstance(label, str) for label in self.label_vocabulary
        ):
            raise InvalidInput(
                f"invalid label_vocabulary {self.label_vocabulary!r}: expected a "
                "sequence of strings"
            )
        if not isinstance(self.state_format, str) or len(self.state_format) > 128:
            raise InvalidInput(
                f"invalid state_format {self.state_format!r}: expected a string of "
                "at most 128 characters, such as 'online-learner/1'"
            )
        if self.parent is not None and (
            isinstance(self.parent, bool)
            or not isinstance(self.parent, int)
            or self.parent < 1
        ):
            raise InvalidInput(
                f"invalid parent {self.parent!r}: expected a version number >= 1 "
                "or None"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ManifestFields:
        """Build from a dict; event times may be ISO 8601 strings."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"unknown manifest fields {unknown}: allowed are {sorted(known)}"
            )
        values = dict(data)
        for name in ("event_time_min", "event_time_max"):
            if isinstance(values.get(name), str):
                values[name] = _parse_time(name, values[name])
        return cls(**values)


@dataclass(frozen=True)
class FileEntry:
    """One stored file of a version: its name, SHA-256 (hex) and size."""

    name: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything the registry records about one immutable version."""

    version: int
    parent: int | None
    created_at: datetime
    fields: ManifestFields
    files: Mapping[str, FileEntry]

    @property
    def name(self) -> str:
        return format_version(self.version)

    def to_json(self) -> bytes:
        """Serialise, with a SHA-256 over the rest of the content."""
        return json.dumps(self.to_stored_dict(), indent=1, sort_keys=True).encode()

    def to_stored_dict(self) -> dict[str, Any]:
        """Return the stored form: the content plus its ``manifest_sha256``."""
        body = self._body()
        body["manifest_sha256"] = _digest(body)
        return body

    @classmethod
    def from_json(cls, data: bytes, version: int) -> Manifest:
        """Parse and check a stored manifest of ``version``.

        Raises CorruptVersion, naming the version and ``manifest.json``, when
        the content is not JSON, misses a field or fails its own SHA-256.
        """
        try:
            body = json.loads(data)
        except ValueError as error:
            raise _unreadable(version, error) from error
        return cls.from_stored_dict(body, version)

    @classmethod
    def from_stored_dict(cls, stored: Any, version: int) -> Manifest:
        """Check and build a manifest from its stored form, as ``from_json``."""
        try:
            body = dict(stored)
            stored_digest = body.pop("manifest_sha256")
            if stored_digest != _digest(body):
                raise ValueError("its SHA-256 does not match its content")
            manifest = cls._from_body(body)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise _unreadable(version, error) from error
        if manifest.version != version:
            raise CorruptVersion(
                f"version {format_version(version)} is corrupt: {MANIFEST_NAME} "
                f"names version {manifest.name}"
            )
        return manifest

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as plain JSON-ready data."""
        return self._body()

    def _body(self) -> dict[str, Any]:
        fields = self.fields
        body = {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "parent": self.parent,
            "created_at": self.created_at.isoformat(),
            "events": {
                "count": fields.events_count,
                "event_time_min": _format_time(fields.event_time_min),
                "event_time_max": _format_time(fields.event_time_max),
            },
            "metrics": {
                "holdout": dict(fields.holdout_metrics),
                "champion": (
                    None
                    if fields.champion_metrics is None
                    else dict(fields.champion_metrics)
                ),
            },
            "label_vocabulary": list(fields.label_vocabulary),
            "fingerprint": fields.fingerprint,
            "code_version": fields.code_version,
            "files": {
                entry.name: {"sha256": entry.sha256, "size_bytes": entry.size_bytes}
                for entry in self.files.values()
            },
        }
        # Stored only when declared, so manifests written before the field
        # existed keep their content and their SHA-256.
        if fields.state_format:
            body["state_format"] = fields.state_format
        return body

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Manifest:
        if body["format"] != MANIFEST_FORMAT:
            raise ValueError(f"unknown format {body['format']!r}")
        events, metrics = body["events"], body["metrics"]
        fields = ManifestFields(
            fingerprint=body["fingerprint"],
            events_count=events["count"],
            event_time_min=_parse_time("event_time_min", events["event_time_min"]),
            event_time_max=_parse_time("event_time_max", events["event_time_max"]),
            holdout_metrics=metrics["holdout"],
            champion_metrics=metrics["champion"],
            label_vocabulary=tuple(body["label_vocabulary"]),
            code_version=body["code_version"],
            parent=body["parent"],
            state_format=body.get("state_format", ""),
        )
        files = _files_from_body(body["files"])
        return cls(
            version=body["version"],
            parent=body["parent"],
            created_at=datetime.fromisoformat(body["created_at"]),
            fields=fields,
            files=files,
        )


def _files_from_body(stored: Any) -> dict[str, FileEntry]:
    """Check the stored file entries as strictly as ``publish`` checks names.

    A manifest whose SHA-256 matches can still have been written by hand, and
    its file names become storage keys, so a name such as ``../x`` must not
    pass.
    """
    if not isinstance(stored, dict) or not stored:
        raise ValueError("it lists no files; a version has at least one file")
    files = {}
    for name, entry in stored.items():
        check_file_name(name)
        sha256, size_bytes = entry["sha256"], entry["size_bytes"]
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"file {name} has an invalid SHA-256 {sha256!r}")
        if (
            isinstance(size_bytes, bool)
            or not isinstance(size_bytes, int)
            or size_bytes < 0
        ):
            raise ValueError(f"file {name} has an invalid size {size_bytes!r}")
        files[name] = FileEntry(name, sha256, size_bytes)
    return files


def _unreadable(version: int, error: Exception) -> CorruptVersion:
    return CorruptVersion(
        f"version {format_version(version)} is corrupt: {MANIFEST_NAME} "
        f"is unreadable ({error}); roll back to another version"
    )


def check_file_name(name: str) -> None:
    """Raise InvalidInput unless ``name`` is a flat, portable file name."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid file name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    if name == MANIFEST_NAME:
        raise InvalidInput(
            f"invalid file name {name!r}: the registry writes {MANIFEST_NAME} itself"
        )


def _check_metrics(name: str, metrics: Mapping[str, float]) -> None:
    for key, value in metrics.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(
                f"invalid {name} entry {key!r}: {value!r}; expected a string name "
                "and a finite number"
            )


def _digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _format_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise InvalidInput(
            f"invalid {name} {value!r}: expected an ISO 8601 time with a time zone"
        ) from error
    return parsed
