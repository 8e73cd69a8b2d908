"""Checkpoints of the learner stage, in a local folder or under a gs:// prefix.

The store keeps its objects with the registry's storage backends
(rollback/backends), whose single-object writes are atomic. A checkpoint
is a set of named files::

    CURRENT          JSON: the current checkpoint's number and slot, and the
                     size and SHA-256 of each of its files
    slot-N/<file>    the files of one checkpoint, in one of three slots
                     (slot-0, slot-1, slot-2)

``save`` first claims a slot: it replaces CURRENT, with a compare-and-swap
on the generation that this store last read or wrote, by a claim that still
describes the current checkpoint and adds ``"writing": SLOT``. Only the
writer whose claim succeeded writes files, into that slot, and then swaps
CURRENT from the claim's generation to the new checkpoint. So:

- a process killed at any moment leaves a CURRENT that loads the previous
  checkpoint, whose slot nobody writes;
- a second writer that read the same CURRENT, or an older one, loses the
  claim and gets CheckpointConflict before it writes any file;
- a store that read a claim, such as a job restarted after a crash between
  claim and final swap, takes the claim over and writes into the third
  slot, the one that neither the checkpoint nor the old claim names.

Before each file, the writer checks that CURRENT still contains its claim and
stops with CheckpointConflict otherwise. NOTE: the storage cannot delete,
so slots are reused. A writer that lost its claim while stalled in the
middle of one write can still finish that write late, into a slot that a
later checkpoint uses. ``load`` then rejects the file because it no longer
matches its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rollback.backends.base import Blob, Storage
from rollback.backends.local import LocalStorage
from rollback.errors import RegistryError

logger = logging.getLogger(__name__)

_CURRENT = "CURRENT"
_FORMAT = "streamlearn-checkpoint/1"
_SLOTS = ("slot-0", "slot-1", "slot-2")
# The pointer of checkpoints written before slots: the name of a folder
# ckpt-NNNNNNNNN, as plain text. Such a checkpoint is still loaded.
_LEGACY_NAME = re.compile(r"ckpt-(\d{9})")
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")
# A Cloud Storage bucket name as Beam's option validator accepts it (and
# streamlearn deploy checks its gs:// options), so run and deploy accept the
# same checkpoint locations.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or written; the message names it."""


class CheckpointConflict(CheckpointError):
    """Another writer replaced CURRENT since this store last read it."""


@dataclass(frozen=True)
class _Pointer:
    """The parsed content of CURRENT."""

    number: int
    folder: str
    # name -> (size in bytes, SHA-256); None for a legacy checkpoint, whose
    # files are the folder's contents.
    files: dict[str, tuple[int, str]] | None


@dataclass(frozen=True)
class _Current:
    """The parsed content of CURRENT: the checkpoint and any slot claim."""

    pointer: _Pointer | None
    # The slot that a writer has claimed and may be writing, or None.
    writing: str | None
    # The JSON fields that describe the checkpoint, without the claim's.
    base: dict[str, object]


class CheckpointStore:
    """Numbered checkpoints at one location; only the newest can be loaded.

    ``location`` is a local folder, created if missing, or a
    ``gs://bucket/prefix`` URL in an existing bucket (Google Cloud Storage
    with the application default credentials, or the emulator named by
    ``STORAGE_EMULATOR_HOST``).
    """

    def __init__(self, location: str | Path) -> None:
        self.url, self._storage = _open_storage(location)
        # Once _pointer_seen is set, the generation of CURRENT when this store
        # last read or wrote it, or None if there was no CURRENT then.
        self._pointer_seen = False
        self._generation: str | None = None

    def latest(self) -> int | None:
        """Return the number of the current checkpoint, or None."""
        blob = self._read(_CURRENT, "read the checkpoint pointer")
        self._pointer_seen = True
        self._generation = None if blob is None else blob.generation
        pointer = None if blob is None else self._parse(blob).pointer
        return None if pointer is None else pointer.number

    def save(self, number: int, files: Mapping[str, bytes]) -> None:
        """Write checkpoint ``number`` and make it current.

        Raises CheckpointConflict, before writing a file, when CURRENT
        changed since this store last read or wrote it, and also after some
        files when another writer takes over the claim during the save.
        """
        for name in files:
            _check_file_name(name)
        blob = self._read(_CURRENT, "read the checkpoint pointer")
        generation = None if blob is None else blob.generation
        if self._pointer_seen and generation != self._generation:
            raise self._conflict(number)
        current = _Current(None, None, {"format": _FORMAT})
        if blob is not None:
            current = self._parse(blob)
        slot, claim = self._claim(current, generation, number)
        if isinstance(self._storage, LocalStorage):
            # A writer killed during an earlier save of this slot left its
            # temporary files, about the size of the learner each.
            self._storage.remove_stale_temporaries(slot)

        entries = {}
        for name, data in files.items():
            content = bytes(data)
            if self._read_generation() != claim:
                raise self._conflict(number)
            self._write(f"{slot}/{name}", content, number)
            entries[name] = {"size_bytes": len(content), "sha256": _sha256(content)}

        body = _dump(
            {"format": _FORMAT, "number": number, "slot": slot, "files": entries}
        )
        if not self._swap_pointer(body, claim, number):
            raise self._conflict(number)
        self._generation = self._read_back(body, number)

    def _claim(
        self, current: _Current, generation: str | None, number: int
    ) -> tuple[str, str]:
        """Claim a free slot in CURRENT; return the slot and the claim's generation."""
        in_use = {
            current.writing,
            None if current.pointer is None else current.pointer.folder,
        }
        slot = next(slot for slot in _SLOTS if slot not in in_use)
        # The random token makes every claim's content unique, so a claim
        # never returns to a generation that an earlier writer expects (the
        # local folder's generation is the SHA-256 of the content).
        claim = {**current.base, "writing": slot, "writer": secrets.token_hex(8)}
        body = _dump(claim)
        if not self._swap_pointer(body, generation, number):
            raise self._conflict(number)
        # From here on CURRENT contains this claim, so if the save fails later,
        # its next save takes its own claim over.
        self._generation = self._read_back(body, number)
        return slot, self._generation

    def _read_back(self, body: bytes, number: int) -> str:
        """Return the generation of CURRENT after this store swapped it to ``body``."""
        # swap() returns no generation, so read it back; content other than
        # ours means another writer replaced CURRENT right after us.
        written = self._read(_CURRENT, "read the checkpoint pointer")
        if written is None or written.data != body:
            raise self._conflict(number)
        self._pointer_seen = True
        return written.generation

    def _read_generation(self) -> str | None:
        blob = self._read(_CURRENT, "read the checkpoint pointer")
        return None if blob is None else blob.generation

    def load(self, number: int) -> dict[str, bytes]:
        """Return the files of checkpoint ``number``, which must be the current one.

        Raises FileNotFoundError when another checkpoint is current, and
        CheckpointError when a file is missing or does not match its SHA-256.
        """
        blob = self._read(_CURRENT, "read the checkpoint pointer")
        pointer = None if blob is None else self._parse(blob).pointer
        if pointer is None or pointer.number != number:
            current = "none" if pointer is None else str(pointer.number)
            raise FileNotFoundError(
                f"checkpoint {number} not found in {self.url}: the current "
                f"checkpoint is {current}"
            )
        if pointer.files is None:
            return self._load_legacy(pointer)
        return {
            name: self._load_file(pointer, name, size, sha256)
            for name, (size, sha256) in pointer.files.items()
        }

    def _load_file(self, pointer: _Pointer, name: str, size: int, sha256: str) -> bytes:
        key = f"{pointer.folder}/{name}"
        blob = self._read(key, f"read checkpoint {pointer.number}")
        where = f"checkpoint {pointer.number} in {self.url} is damaged: file {key}"
        if blob is None:
            raise CheckpointError(f"{where} is missing; {_RESTART_HINT}")
        if len(blob.data) != size or _sha256(blob.data) != sha256:
            raise CheckpointError(
                f"{where} does not match the size and SHA-256 that {_CURRENT} "
                "records, so it was overwritten after the checkpoint was made "
                f"(by another writer or by hand); {_RESTART_HINT}"
            )
        return blob.data

    def _load_legacy(self, pointer: _Pointer) -> dict[str, bytes]:
        try:
            # No trailing "/": LocalStorage.list_keys("x/") returns "x//name".
            keys = self._storage.list_keys(pointer.folder)
        except RegistryError as error:
            raise CheckpointError(
                f"failed to list checkpoint {pointer.number}: {error}"
            ) from error
        files = {}
        for key in keys:
            folder, _, name = key.partition("/")
            if folder != pointer.folder or not _FILE_NAME.fullmatch(name):
                continue
            blob = self._read(key, f"read checkpoint {pointer.number}")
            if blob is not None:
                files[name] = blob.data
        if not files:
            raise FileNotFoundError(
                f"checkpoint {pointer.number} not found in {self.url}: "
                f"{pointer.folder} contains no files"
            )
        return files

    def _parse(self, blob: Blob) -> _Current:
        text = blob.data.decode("utf-8", errors="replace").strip()
        legacy = _LEGACY_NAME.fullmatch(text)
        if legacy is not None:
            pointer = _Pointer(int(legacy.group(1)), text, None)
            return _Current(pointer, None, {"format": _FORMAT, "legacy": text})
        try:
            return _parse_json(text)
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,  # from json.loads, on deeply nested brackets
        ) as error:
            raise CheckpointError(
                f"invalid checkpoint pointer {_CURRENT} in {self.url}: {error}; "
                f"{_RESTART_HINT}"
            ) from error

    def _conflict(self, number: int) -> CheckpointConflict:
        return CheckpointConflict(
            f"checkpoint {number} was not made current: {_CURRENT} in {self.url} "
            "was replaced by another writer since this job last read it; give "
            "each job its own checkpoint location and restart this one"
        )

    # NOTE: the backends' messages, which these errors include, call the
    # location a "registry" and may suggest --registry, the registry's option.

    def _read(self, key: str, action: str) -> Blob | None:
        try:
            return self._storage.read(key)
        except RegistryError as error:
            raise CheckpointError(f"failed to {action}: {error}") from error

    def _write(self, key: str, data: bytes, number: int) -> None:
        try:
            self._storage.put(key, data)
        except RegistryError as error:
            raise CheckpointError(
                f"failed to write checkpoint {number}: {error}"
            ) from error

    def _swap_pointer(self, body: bytes, generation: str | None, number: int) -> bool:
        try:
            return self._storage.swap(_CURRENT, body, generation)
        except RegistryError as error:
            raise CheckpointError(
                f"failed to make checkpoint {number} current: {error}"
            ) from error


_RESTART_HINT = (
    f"move the location aside, or delete {_CURRENT}, to start without a checkpoint"
)


def check_location(location: str) -> str:
    """Return ``location`` if it is a local path or a gs://bucket/prefix URL.

    Raises ValueError, naming the value and the accepted forms, otherwise.
    """
    problem = location_problem(location)
    if problem is not None:
        raise ValueError(f"invalid checkpoint location {location!r}: {problem}")
    return location


def location_problem(location: str) -> str | None:
    """Return why ``location`` cannot hold checkpoints, or None if it can."""
    if location.startswith("gs://"):
        bucket = location[len("gs://") :].partition("/")[0]
        if not bucket:
            return "the bucket name is missing; expected gs://BUCKET/PREFIX"
        if not _BUCKET_NAME.fullmatch(bucket):
            return (
                f"invalid bucket name {bucket!r}: expected 3-63 lowercase letters, "
                "digits, '-', '_' or '.', starting and ending with a letter or digit"
            )
        return None
    if "://" in location or not location.strip():
        return "expected a local folder or gs://BUCKET/PREFIX"
    path = Path(location).expanduser()
    for folder in (path, *path.parents):
        try:
            if folder.exists() and not folder.is_dir():
                return f"{folder} is a file, not a folder; pass a folder"
        except OSError:
            return None  # the store's own error then names the cause
    return None


def _open_storage(location: str | Path) -> tuple[str, Storage]:
    text = check_location(str(location))
    if text.startswith("gs://"):
        from rollback.backends.gcs import GcsStorage  # loads google-cloud-storage

        return text, GcsStorage(text)
    folder = Path(text).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    storage = LocalStorage(folder)
    return storage.url, storage


def _parse_json(text: str) -> _Current:
    """Parse a JSON CURRENT: a checkpoint, a claim, or both."""
    body = json.loads(text)
    if body["format"] != _FORMAT:
        raise ValueError(f"unknown format {body['format']!r}, expected {_FORMAT!r}")

    writing = body.pop("writing", None)
    body.pop("writer", None)
    if writing is not None and writing not in _SLOTS:
        raise ValueError(f"invalid claimed slot {writing!r}, expected one of {_SLOTS}")
    if "legacy" in body:
        # A claim made over a pointer of the earlier layout.
        legacy = _LEGACY_NAME.fullmatch(body["legacy"])
        if legacy is None:
            raise ValueError(f"invalid legacy folder name {body['legacy']!r}")
        pointer = _Pointer(int(legacy.group(1)), body["legacy"], None)
        return _Current(pointer, writing, body)
    if "number" not in body and writing is not None:
        return _Current(None, writing, body)  # a claim at an empty location

    if body["slot"] not in _SLOTS:
        raise ValueError(f"invalid slot {body['slot']!r}, expected one of {_SLOTS}")
    number = body["number"]
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"number {number!r} is not an int")
    if number < 0:
        raise ValueError(f"number {number} is negative")

    for name in body["files"]:
        _check_file_name(name)  # so that a file key cannot leave the location
    files = {
        str(name): (int(entry["size_bytes"]), str(entry["sha256"]))
        for name, entry in body["files"].items()
    }
    return _Current(_Pointer(number, body["slot"], files), writing, body)


def _dump(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True).encode("utf-8")


def _check_file_name(name: str) -> None:
    if not _FILE_NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(
            f"invalid checkpoint file name {name!r}: expected letters, digits, "
            "'.', '_' or '-', not starting with '.'"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
