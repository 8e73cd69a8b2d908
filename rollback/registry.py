"""The versioned weight registry.

Weights are bytes here: a version is a set of named files plus a manifest
the registry writes. Loading returns bytes whose SHA-256 has been checked;
the registry never unpickles anything, and the learner deserialises its
state from safetensors or JSON.

The API the streaming job uses::

    from rollback.registry import open_registry, ManifestFields

    registry = open_registry("gs://bucket/models", create=True)   # or a path
    registry.set_running_fingerprint(fingerprint, actor="job",
                                     state_format="online-learner/1")  # at start
    version = registry.publish(
        {"model.safetensors": weights, "learner.json": learner},
        ManifestFields(fingerprint=fingerprint, events_count=4096, ...),
        actor="job", reason="holdout accuracy 0.91 > champion 0.89",
    )                                 # -> 13; also moves the pointer to v13
    registry.serving()                # -> 13, or None before any version
    registry.read(13)                 # -> LoadedVersion, SHA-256 checked
    registry.set_serving(12, actor="job", reason="accuracy fell to 0.61",
                         kind="auto_rollback", details={"accuracy": 0.61},
                         expected=13)  # compare-and-swap on the pointer
    registry.versions(); registry.describe(12); registry.history()
    registry.pause(actor="ops:ana", reason="incident"); registry.is_paused()
    registry.resume(actor="ops:ana")

To announce every change on Pub/Sub, and to follow them without polling::

    from rollback.announce import PubSubAnnouncer, follow

    registry = open_registry(url, announcer=PubSubAnnouncer(
        "projects/p/topics/serving-changes"))
    future = follow("projects/p/subscriptions/job", on_change,
                    last_seq=len(registry.history()))  # on_change(Announcement)

Guarantees, for both backends (a local folder and ``gs://bucket/prefix``):

- A version appears whole or not at all. Its files are written first and
  its manifest last, with a create-only write, and readers treat a version
  without a manifest as absent.
- Version numbers are never reused: each publish takes its number from a
  counter advanced by compare-and-swap, also after a rollback or a crash
  (a crashed publish leaves a gap).
- The pointer, the pause flag and the pointer history form one object that
  is only replaced by compare-and-swap (see rollback/state.py), so racing
  changes are applied one after the other, never lost. With ``expected``
  a caller instead gets PointerConflict if the pointer moved since it read
  it.
- ``set_serving`` and ``rollback`` move the pointer only to a version whose
  files all match their SHA-256 and whose fingerprint matches the running
  job's (or, if no job recorded one, the serving version's). When both the
  version's manifest and that reference declare a ``state_format``, the two
  must match as well. ``publish`` moves it to the version it has just
  written, without these checks.
- While automatic promotion is paused, ``publish`` stores the version,
  leaves the pointer and raises PromotionPaused (a PointerConflict) with the
  stored number, and ``set_serving`` with the kind "promote" or
  "auto_rollback" raises PromotionPaused: a pause holds back every move of
  the job's own. An operator's rollback still moves the pointer.

Every pointer change and pause is sent to the announcer, if one is given
(rollback/announce.py sends them to a Pub/Sub topic). An announcement that
fails is logged and kept in ``last_announce_error``, and the change remains
in effect.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from rollback.backends.base import Blob, Storage
from rollback.errors import (
    AlreadyInPauseState,
    AlreadyServing,
    AnnounceError,
    ContentionError,
    CorruptVersion,
    IncompatibleVersion,
    InvalidInput,
    NoPreviousVersion,
    PointerConflict,
    PromotionPaused,
    RegistryError,
    VersionNotFound,
)
from rollback.layout import (
    COUNTER_KEY,
    DEFAULT_REGISTRY,
    RUNNING_KEY,
    STATE_KEY,
    VERSIONS_PREFIX,
    check_marker,
    index_key,
    open_storage,
    parse_counter,
    parse_version_folder,
    version_key,
    version_prefix,
)
from rollback.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    ManifestFields,
    check_file_name,
    compute_fingerprint,
)
from rollback.names import MAX_VERSION, format_version, parse_version
from rollback.state import (
    PAUSED_KINDS,
    POINTER_KINDS,
    PointerChange,
    ServingState,
)

if TYPE_CHECKING:
    import random

__all__ = [
    "ANY",
    "Announcer",
    "LoadedVersion",
    "ManifestFields",
    "Registry",
    "compute_fingerprint",
    "open_registry",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
INDEX_FORMAT = "streamlearn-index/1"


class _AnyVersion:
    """Type of ANY: ``expected=ANY`` skips the compare of the pointer."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _AnyVersion()
Expected = int | str | None | _AnyVersion


class Announcer(Protocol):
    """Receives every committed pointer change and pause."""

    def announce(self, change: PointerChange, serving: int | None, url: str) -> None:
        """Send ``change``; raise AnnounceError on failure."""
        ...


@dataclass(frozen=True)
class LoadedVersion:
    """A version's manifest and its files, every SHA-256 checked."""

    manifest: Manifest
    files: Mapping[str, bytes]


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_registry(
    url: str | Path | None = None,
    *,
    create: bool = False,
    announcer: Announcer | None = None,
    clock: Clock = utc_now,
    rng: random.Random | None = None,
) -> Registry:
    """Open the registry at ``url`` (default ``./runs/registry``).

    With ``create=True`` a missing local folder, or an empty folder or
    bucket prefix, becomes a new registry; a GCS bucket must exist. Raises
    RegistryNotFound or NotARegistry with the URL and what to do.
    """
    storage = open_storage(DEFAULT_REGISTRY if url is None else url)
    check_marker(storage, create)
    return Registry(storage, announcer=announcer, clock=clock, rng=rng)


class Registry:
    """Numbered, immutable versions and a serving pointer; see the module."""

    def __init__(
        self,
        storage: Storage,
        *,
        announcer: Announcer | None = None,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        max_attempts: int = 200,
    ) -> None:
        self.storage = storage
        self.announcer = announcer
        self.clock = clock
        self.max_attempts = max_attempts
        self.last_announce_error: AnnounceError | None = None
        # Why the last compatibility check was skipped, or None.
        self.last_check_skipped: str | None = None
        self._rng = rng  # created on the first retry: random is slow to import
        # (generation, parsed state): a large history costs more to parse
        # than to read, and one command reads the state several times.
        self._parsed_state: tuple[str, ServingState] | None = None

    @property
    def url(self) -> str:
        return self.storage.url

    # Reading

    def versions(self) -> list[int]:
        """Return the numbers of all complete versions, oldest first."""
        folders = self.storage.folders_containing(VERSIONS_PREFIX, MANIFEST_NAME)
        numbers = (parse_version_folder(folder) for folder in folders)
        return sorted(number for number in numbers if number is not None)

    def describe(self, version: int | str) -> Manifest:
        """Return the manifest of ``version`` without reading its files."""
        number = parse_version(version)
        blob = self.storage.read(version_key(number, MANIFEST_NAME))
        if blob is None:
            raise VersionNotFound(self._not_found_message(number))
        return Manifest.from_json(blob.data, number)

    def read(self, version: int | str) -> LoadedVersion:
        """Return a version's manifest and files after checking every SHA-256.

        Raises CorruptVersion, naming the version and the file, when a file
        is missing, truncated or altered.
        """
        manifest = self.describe(version)
        files = {
            entry.name: self._read_file(manifest, entry)
            for entry in manifest.files.values()
        }
        return LoadedVersion(manifest=manifest, files=files)

    def verify(self, version: int | str) -> Manifest:
        """Check every file of ``version`` as ``read`` does; return its manifest.

        A ``*.safetensors`` file must also parse as one, so that a rollback
        does not point at weights that are something else, such as a pickle,
        even though their SHA-256 matches the manifest. Tensor names and
        shapes are not checked. Parsing reads the tensors as plain bytes and
        runs no code from the file.
        """
        loaded = self.read(version)
        for name, data in loaded.files.items():
            if name.endswith(".safetensors"):
                _check_safetensors(loaded.manifest.version, name, data)
        return loaded.manifest

    def manifests(self, versions: list[int]) -> dict[int, Manifest | RegistryError]:
        """Return the manifest of each of ``versions``, or the error reading it.

        Reads the index shards (one request per 1,000 versions), whose
        entries carry the manifest's own SHA-256, and reads the manifest file
        only of a version the index lacks or contains damaged. So a damaged
        manifest or weights file shows only in ``describe``, ``read`` or
        ``verify``. The error is a CorruptVersion for a damaged manifest,
        VersionNotFound for a missing one, and a RegistryError when the
        manifest cannot be read at all (such as a folder without permissions).
        """
        shards: dict[str, dict[str, Any]] = {}
        found: dict[int, Manifest | RegistryError] = {}
        for number in versions:
            key = index_key(number)
            if key not in shards:
                shards[key] = self._read_index(key)
            stored = shards[key].get(str(number))
            try:
                if stored is not None:
                    try:
                        found[number] = Manifest.from_stored_dict(stored, number)
                        continue
                    except CorruptVersion:
                        logger.warning("index entry of v%d is damaged", number)
                found[number] = self.describe(number)
            except RegistryError as error:
                found[number] = error
        return found

    def serving(self) -> int | None:
        """Return the serving version, or None if no version serves."""
        return self._state().serving

    def history(self) -> list[PointerChange]:
        """Return every pointer change and pause, oldest first."""
        return list(self._state().history)

    def state(self) -> ServingState:
        """Return the pointer, pause flag and history as one consistent read."""
        return self._state()

    def is_paused(self) -> bool:
        return self._state().paused

    def running_fingerprint(self) -> str | None:
        """Return the fingerprint the job last recorded, or None."""
        running = self._running()
        return None if running is None else running[0]

    def running_state_format(self) -> str:
        """Return the state format the job last recorded; empty if none."""
        running = self._running()
        return "" if running is None else running[1]

    def previous_version(self) -> int:
        """Return the version that served before the current one.

        Taken from the pointer history, skipping versions that a rollback
        moved away from; raises NoPreviousVersion if there is none.
        """
        return _previous_or_raise(self.url, self._state())

    # Writing

    def publish(
        self,
        files: Mapping[str, bytes],
        manifest_fields: ManifestFields | Mapping[str, Any],
        actor: str,
        reason: str,
        *,
        move_pointer: bool = True,
        expected: Expected = ANY,
    ) -> int:
        """Store a new immutable version and return its number.

        With ``move_pointer`` the pointer then moves to it (kind "publish").
        If it cannot, the version stays stored and the call raises a
        PointerConflict whose ``version`` is the stored number: the subclass
        PromotionPaused while promotion is paused, PointerConflict itself
        when ``expected`` is given and the pointer no longer points there.
        """
        fields = _manifest_fields(manifest_fields)
        _check_files(files)
        _check_actor(actor)
        serving = self.serving()
        expected_number = _expected_number(expected)
        if move_pointer and expected_number is not ANY and expected_number != serving:
            # Checked again when the pointer moves; this early check only
            # avoids storing a version that could not serve.
            raise PointerConflict(
                f"the pointer moved: {_name(serving)} serves, not "
                f"{_name(expected_number)} as expected; nothing was published"
            )
        parent = fields.parent if fields.parent is not None else serving
        if parent is not None and fields.parent is not None:
            self.describe(parent)  # raises VersionNotFound for a bad parent

        number = self._allocate_number()
        entries = {}
        for name, data in files.items():
            self._create_new(number, name, bytes(data))
            entries[name] = FileEntry(name, _sha256(data), len(data))
        manifest = Manifest(
            version=number,
            parent=parent,
            created_at=self.clock(),
            fields=replace(fields, parent=parent),
            files=entries,
        )
        self._create_new(number, MANIFEST_NAME, manifest.to_json())
        logger.info("published %s to %s", manifest.name, self.url)
        self._add_to_index(manifest)

        if move_pointer:
            try:
                self._move_pointer(number, actor, reason, "publish", expected, {})
            except PromotionPaused as paused:
                logger.warning(
                    "stored %s but left the pointer: automatic promotion is paused",
                    manifest.name,
                )
                raise PromotionPaused(str(paused), version=number) from paused
            except AlreadyServing:
                # A racing rollback pointed at the new version first.
                logger.info("%s serves already; pointer left as is", manifest.name)
            except PointerConflict as conflict:
                raise PointerConflict(str(conflict), version=number) from conflict
        return number

    def set_serving(
        self,
        version: int | str,
        actor: str,
        reason: str,
        *,
        expected: Expected = ANY,
        kind: str = "rollback",
        details: Mapping[str, Any] | None = None,
    ) -> PointerChange:
        """Point serving at ``version`` and record why; return the change.

        Checks that the version exists, is intact and is compatible first.
        ``expected`` makes it a compare-and-swap: PointerConflict if the
        pointer does not point at ``expected`` (a version, or None for "no
        version serves"). ``kind`` is one of publish, promote, rollback,
        auto_rollback; ``details`` contains the numbers behind an automatic
        rollback.
        """
        number = parse_version(version)
        if kind not in POINTER_KINDS:
            raise InvalidInput(
                f"invalid kind {kind!r}: expected one of {', '.join(POINTER_KINDS)}"
            )
        _check_actor(actor)
        clean_details = _clean_details(details or {})
        manifest = self.verify(number)
        self._check_compatible(manifest, self.serving())
        return self._move_pointer(number, actor, reason, kind, expected, clean_details)

    def plan_rollback(self, to: int | str | None = None) -> tuple[int | None, int]:
        """Return (serving, target) of a rollback after every check.

        ``to=None`` means the previous version from the history. Raises
        AlreadyServing, VersionNotFound, CorruptVersion, IncompatibleVersion
        or NoPreviousVersion; changes nothing. A serving version that is
        damaged raises CorruptVersion, not AlreadyServing.
        """
        if to is None:
            state = self._state()
            target = _previous_or_raise(self.url, state)
        else:
            target = parse_version(to)
            state = self._state()
        current = state.serving
        if target == current:
            try:
                self.verify(target)
            except (CorruptVersion, VersionNotFound) as error:
                raise type(error)(
                    f"{error}. It serves already: move serving to an intact "
                    "version with 'rollback --to', or publish a new one"
                ) from error
            raise AlreadyServing(
                f"version {format_version(target)} serves already; nothing to do"
            )
        manifest = self.verify(target)
        self._check_compatible(manifest, current)
        return current, target

    def rollback(self, to: int | str | None, actor: str, reason: str) -> PointerChange:
        """Move the pointer back (or to ``to``) as an operator's rollback.

        Fails with PointerConflict if the pointer moves between the checks
        and the write, so an operator never overrides a change unseen.
        """
        _check_actor(actor)
        current, target = self.plan_rollback(to)
        return self._move_pointer(target, actor, reason, "rollback", current, {})

    def pause(self, actor: str, reason: str) -> PointerChange:
        """Pause automatic promotion; the job keeps training and validating."""
        return self._set_paused(True, actor, reason)

    def resume(self, actor: str, reason: str = "") -> PointerChange:
        """Resume automatic promotion."""
        return self._set_paused(False, actor, reason)

    def set_running_fingerprint(
        self, fingerprint: str, actor: str, *, state_format: str = ""
    ) -> None:
        """Record what the job runs with, for the checks before a rollback.

        ``state_format`` is the format of learner state files the job can
        load, as publishers declare it in ``ManifestFields.state_format``;
        empty skips that check.
        """
        if not isinstance(fingerprint, str) or not fingerprint:
            raise InvalidInput(
                f"invalid fingerprint {fingerprint!r}: expected a non-empty string"
            )
        if not isinstance(state_format, str):
            raise InvalidInput(
                f"invalid state_format {state_format!r}: expected a string"
            )
        _check_actor(actor)
        body = {
            "fingerprint": fingerprint,
            "state_format": state_format,
            "actor": actor,
            "time": self.clock().isoformat(),
        }
        self.storage.put(RUNNING_KEY, json.dumps(body).encode())

    # Internals

    def _running(self) -> tuple[str, str] | None:
        """Return the running job's (fingerprint, state format), or None."""
        blob = self.storage.read(RUNNING_KEY)
        if blob is None:
            return None
        try:
            body = json.loads(blob.data)
            fingerprint = body["fingerprint"]
            state_format = body.get("state_format", "")
            if not isinstance(fingerprint, str) or not isinstance(state_format, str):
                raise TypeError("fingerprint and state_format must be strings")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise RegistryError(
                f"{RUNNING_KEY} in registry {self.url} is damaged ({error}); the "
                "job rewrites it with set_running_fingerprint at its next start"
            ) from error
        return fingerprint, state_format

    def _state_blob(self) -> tuple[ServingState, Blob | None]:
        blob = self.storage.read(STATE_KEY)
        if blob is None:
            return ServingState(), None
        cached = self._parsed_state
        if cached is not None and cached[0] == blob.generation:
            return cached[1], blob  # unchanged since the last read
        try:
            state = ServingState.from_json(blob.data)
        except (ValueError, TypeError) as error:
            raise RegistryError(
                f"registry state is damaged: {STATE_KEY} in registry {self.url}: "
                f"{error}. The registry only writes it whole, so restore it from "
                "a backup"
            ) from error
        self._parsed_state = (blob.generation, state)
        return state, blob

    def _state(self) -> ServingState:
        return self._state_blob()[0]

    def _move_pointer(
        self,
        number: int,
        actor: str,
        reason: str,
        kind: str,
        expected: Expected,
        details: Mapping[str, Any],
    ) -> PointerChange:
        expected_number = _expected_number(expected)

        def build(state: ServingState, change_id: str) -> PointerChange:
            current = state.serving
            # Checked first, because a racing request for the same version
            # has already made the change this one requests.
            if current == number:
                raise AlreadyServing(
                    f"version {format_version(number)} serves already; nothing to do"
                )
            if expected_number is not ANY and expected_number != current:
                raise PointerConflict(
                    f"the pointer moved: {_name(current)} serves, not "
                    f"{_name(expected_number)} as expected; check "
                    "'rollback --dry-run' and retry"
                )
            if state.paused and kind in PAUSED_KINDS:
                moved = "rolled back to" if kind == "auto_rollback" else "promoted"
                raise PromotionPaused(
                    f"automatic promotion is paused; {format_version(number)} was "
                    f"not {moved}"
                )
            return self._change(
                state, change_id, actor, kind, current, number, reason, details
            )

        change = self._update_state(build)
        logger.info("serving %s in %s", change.describe(), self.url)
        return change

    def _set_paused(self, paused: bool, actor: str, reason: str) -> PointerChange:
        _check_actor(actor)
        kind = "pause" if paused else "resume"

        def build(state: ServingState, change_id: str) -> PointerChange:
            if state.paused == paused:
                raise AlreadyInPauseState(_unchanged_pause(state, reason))
            return self._change(
                state, change_id, actor, kind, state.serving, state.serving, reason, {}
            )

        change = self._update_state(build)
        logger.info("%s automatic promotion in %s: %s", kind, self.url, reason)
        return change

    def _change(
        self,
        state: ServingState,
        change_id: str,
        actor: str,
        kind: str,
        from_version: int | None,
        to_version: int | None,
        reason: str,
        details: Mapping[str, Any],
    ) -> PointerChange:
        return PointerChange(
            seq=state.next_seq,
            change_id=change_id,
            time=self.clock(),
            actor=actor,
            kind=kind,
            from_version=from_version,
            to_version=to_version,
            reason=reason,
            details=dict(details),
        )

    def _update_state(
        self, build: Callable[[ServingState, str], PointerChange]
    ) -> PointerChange:
        change_id = os.urandom(8).hex()
        for attempt in range(self.max_attempts):
            state, blob = self._state_blob()
            # A write whose response was lost and then retried by the client
            # fails its precondition although it was applied: find it.
            for recorded in state.history[-20:]:
                if recorded.change_id == change_id:
                    return recorded
            change = build(state, change_id)
            new_state = state.with_change(change)
            generation = None if blob is None else blob.generation
            if self.storage.swap(STATE_KEY, new_state.to_json(), generation):
                self._announce(change, new_state.serving)
                return change
            self._back_off(attempt)
        raise ContentionError(
            f"could not update {STATE_KEY} in {self.url}: other writers won "
            f"{self.max_attempts} times in a row; retry"
        )

    def _create_new(self, number: int, name: str, data: bytes) -> None:
        """Write one file of a new version without ever replacing one.

        Create-only, so that a number handed out twice (a counter edited by
        hand) cannot overwrite a stored version's files.
        """
        key = version_key(number, name)
        if self.storage.create(key, data):
            return
        stored = self.storage.read(key)
        # A create whose response was lost and then retried by the client
        # finds its own bytes; any other content is another version's.
        if stored is None or stored.data != data:
            raise RegistryError(
                f"version {format_version(number)} already has a file {name} in "
                f"{self.url} although {COUNTER_KEY} had just handed out the "
                "number, so the counter was edited by hand: set next_version "
                "above every version folder"
            )

    def _read_index(self, key: str) -> dict[str, Any]:
        return self._parse_index(key, self.storage.read(key))

    def _parse_index(self, key: str, blob: Blob | None) -> dict[str, Any]:
        if blob is None:
            return {}
        try:
            manifests = json.loads(blob.data)["manifests"]
            if not isinstance(manifests, dict):
                raise TypeError(f"manifests is a {type(manifests).__name__}")
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("ignored damaged index %s in %s: %s", key, self.url, error)
            return {}
        return manifests

    def _add_to_index(self, manifest: Manifest) -> None:
        # The index is a cache of the manifests: a version it lacks is read
        # from its manifest file, so a failed update is logged, not raised.
        key = index_key(manifest.version)
        for attempt in range(self.max_attempts):
            blob = self.storage.read(key)
            manifests = self._parse_index(key, blob)
            manifests[str(manifest.version)] = manifest.to_stored_dict()
            body = json.dumps({"format": INDEX_FORMAT, "manifests": manifests})
            generation = None if blob is None else blob.generation
            if self.storage.swap(key, body.encode(), generation):
                return
            self._back_off(attempt)
        logger.warning(
            "%s is missing from the index %s: other writers won %d times",
            manifest.name,
            key,
            self.max_attempts,
        )

    def _allocate_number(self) -> int:
        for attempt in range(self.max_attempts):
            blob = self.storage.read(COUNTER_KEY)
            if blob is None:
                existing = self.versions()
                number = existing[-1] + 1 if existing else 1
            else:
                number = parse_counter(self.url, blob)
            if number > MAX_VERSION:
                raise RegistryError(
                    f"registry {self.url} has used every version number up to "
                    f"{format_version(MAX_VERSION)}, the largest a version name "
                    "can have, so nothing was published; publish to a new registry"
                )
            body = json.dumps({"next_version": number + 1}).encode()
            generation = None if blob is None else blob.generation
            if self.storage.swap(COUNTER_KEY, body, generation):
                return number
            self._back_off(attempt)
        raise ContentionError(
            f"could not take a version number from {COUNTER_KEY} in {self.url}: "
            f"other publishers won {self.max_attempts} times in a row; retry"
        )

    def _back_off(self, attempt: int) -> None:
        if self._rng is None:
            import random

            self._rng = random.Random()
        time.sleep(self._rng.uniform(0.0, min(0.05, 0.001 * 2**attempt)))

    def _read_file(self, manifest: Manifest, entry: FileEntry) -> bytes:
        blob = self.storage.read(version_key(manifest.version, entry.name))
        where = f"version {manifest.name} is corrupt: file {entry.name}"
        if blob is None:
            raise CorruptVersion(f"{where} is missing")
        if len(blob.data) != entry.size_bytes:
            raise CorruptVersion(
                f"{where} has {len(blob.data)} bytes, the manifest records "
                f"{entry.size_bytes}"
            )
        if _sha256(blob.data) != entry.sha256:
            raise CorruptVersion(
                f"{where} does not match its SHA-256 {entry.sha256[:12]}..."
            )
        return blob.data

    def _check_compatible(self, manifest: Manifest, serving: int | None) -> None:
        running = self._running()
        source = "the running job's"
        if running is None:
            if serving is None or serving == manifest.version:
                return
            try:
                fields = self.describe(serving).fields
            except (CorruptVersion, VersionNotFound) as error:
                # Nothing to compare with, and refusing would leave no way
                # off the damaged version.
                self.last_check_skipped = (
                    f"did not check that {manifest.name} is compatible: no job "
                    "recorded its fingerprint, and the serving version's "
                    f"manifest cannot be read ({error})"
                )
                logger.warning("%s", self.last_check_skipped)
                return
            running = (fields.fingerprint, fields.state_format)
            source = f"the serving version {format_version(serving)}'s"
        reference, state_format = running
        if manifest.fields.fingerprint != reference:
            raise IncompatibleVersion(
                f"version {manifest.name} is incompatible: its fingerprint "
                f"{manifest.fields.fingerprint} differs from {source} {reference}"
                f"{self._compatible_choices(reference)}"
            )
        # Checked only when both sides declare one: older manifests and jobs
        # do not, and the registry cannot read the weights to tell.
        declared = manifest.fields.state_format
        if declared and state_format and declared != state_format:
            raise IncompatibleVersion(
                f"version {manifest.name} is incompatible: its learner state "
                f"format {declared!r} differs from {source} {state_format!r}, so "
                "the job could not load it; pick a version with the same format"
            )

    def _compatible_choices(self, fingerprint: str) -> str:
        compatible = []
        for number in reversed(self.versions()):
            try:
                if self.describe(number).fields.fingerprint == fingerprint:
                    compatible.append(format_version(number))
            except RegistryError:
                continue  # damaged or unreadable: not a choice to offer
            if len(compatible) == 5:
                break
        if not compatible:
            return "; no stored version is compatible"
        return f"; compatible versions, newest first: {', '.join(compatible)}"

    def _not_found_message(self, number: int) -> str:
        folder = version_prefix(number)
        if self.storage.list_keys(folder):
            return (
                f"version {format_version(number)} is incomplete: {folder} in "
                f"registry {self.url} contains files but no {MANIFEST_NAME}, so "
                "its publish was killed or the manifest was removed by hand; "
                "roll back to another version"
            )
        existing = self.versions()
        if not existing:
            return (
                f"unknown version {format_version(number)!r}: the registry "
                f"{self.url} contains no versions yet"
            )
        if len(existing) == 1:
            return (
                f"unknown version {format_version(number)!r}: the registry holds "
                f"only {format_version(existing[0])}"
            )
        return (
            f"unknown version {format_version(number)!r}: the registry holds "
            f"{format_version(existing[0])}..{format_version(existing[-1])} "
            f"({len(existing)} versions)"
        )

    def _announce(self, change: PointerChange, serving: int | None) -> None:
        if self.announcer is None:
            return
        try:
            self.announcer.announce(change, serving, self.url)
        except AnnounceError as error:
            self.last_announce_error = error
            logger.error(
                "could not announce change %d (%s) of %s: %s",
                change.seq,
                change.describe(),
                self.url,
                error,
            )


def _previous_or_raise(url: str, state: ServingState) -> int:
    previous = state.previous_version()
    if previous is None:
        raise NoPreviousVersion(
            f"no earlier version to return to in registry {url}: the history "
            f"contains no served version older than {_name(state.serving)} that was "
            "not rolled back; pass --to vN"
        )
    return previous


def _manifest_fields(fields: ManifestFields | Mapping[str, Any]) -> ManifestFields:
    if isinstance(fields, ManifestFields):
        return fields
    return ManifestFields.from_mapping(fields)


def _check_files(files: Mapping[str, bytes]) -> None:
    if not files:
        raise InvalidInput("no files to publish: a version needs at least one file")
    for name, data in files.items():
        check_file_name(name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput(
                f"invalid content of file {name!r}: {type(data).__name__}; "
                "expected bytes"
            )


def _clean_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``details`` as strict JSON data; NaN and infinities become text.

    A NaN metric must not block an automatic rollback, and strict JSON has
    no NaN, so it is stored as the string "nan".
    """
    clean = {
        str(key): str(value)
        if isinstance(value, float) and not math.isfinite(value)
        else value
        for key, value in details.items()
    }
    try:
        json.dumps(clean, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(
            f"invalid details {details!r}: {error}; use strings, numbers and "
            "booleans, such as {'accuracy': 0.61}"
        ) from error
    return clean


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidInput(
            f"invalid actor {actor!r}: name who acts, such as 'job' or 'ops:ana'"
        )


def _expected_number(expected: Expected) -> int | _AnyVersion | None:
    if isinstance(expected, _AnyVersion) or expected is None:
        return expected
    return parse_version(expected)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _name(version: int | _AnyVersion | None) -> str:
    if isinstance(version, int):
        return format_version(version)
    return "no version" if version is None else "any version"


def _unchanged_pause(state: ServingState, reason: str) -> str:
    """Return the message for a pause or resume that changes nothing."""
    last = state.last_pause()
    when = "" if last is None else f"{last.actor} at {last.time:%Y-%m-%d %H:%M:%S %Z}"
    if state.paused:
        text = "automatic promotion is already paused"
        if last is not None:
            text += f" by {when}" + (f" ({last.reason})" if last.reason else "")
    else:
        text = "automatic promotion is not paused"
        if last is not None:
            text += f" (resumed by {when})"
    if reason:
        text += f"; the reason {reason!r} was not recorded"
    return text + "; nothing to do"


def _check_safetensors(version: int, name: str, data: bytes) -> None:
    """Raise CorruptVersion unless ``data`` is a well-formed safetensors file."""
    import safetensors

    try:
        safetensors.deserialize(data)
    except safetensors.SafetensorError as error:
        raise CorruptVersion(
            f"version {format_version(version)} is corrupt: file {name} is not "
            f"a valid safetensors file ({error})"
        ) from None
