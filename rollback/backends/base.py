"""The contract every storage backend meets.

Keys are ``/``-separated relative paths such as ``versions/v000012/
manifest.json``. The registry needs only four write primitives, each atomic:
a whole object appears or none does, and a reader never sees a torn one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Blob:
    """An object's bytes and the generation they were read at."""

    data: bytes
    # Opaque token that changes on every write of the key. GCS returns its
    # object generation; the local folder uses a SHA-256 of the content.
    generation: str


class Storage(Protocol):
    """An object store with create-only and compare-and-swap writes."""

    @property
    def url(self) -> str:
        """The registry URL this store was opened with."""
        ...

    def exists(self) -> bool:
        """Return whether the folder or bucket itself exists."""
        ...

    def read(self, key: str) -> Blob | None:
        """Return the object at ``key``, or None if there is none."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; return False if it did."""
        ...

    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        """Replace ``key`` if its generation is still ``expected``.

        ``expected=None`` means the key must not exist yet. Returns False,
        writing nothing, when another writer changed the key first.
        """
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` unconditionally, replacing any earlier object."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``, in no fixed order."""
        ...

    def folders_containing(self, prefix: str, name: str) -> list[str]:
        """Return the child folders of ``prefix`` that hold an object ``name``.

        For ``("versions/", "manifest.json")`` returns names like
        ``v000012``, in no fixed order.
        """
        ...

    def is_empty(self) -> bool:
        """Return whether the folder or prefix contains no object at all."""
        ...
