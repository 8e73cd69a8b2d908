"""Exceptions raised by the registry and its commands.

Every error the registry raises on purpose is a ``RegistryError``, so that a
caller (the streaming job, the ``rollback`` command) can catch one class and
print its message. Each message names the input, the value and what is
allowed.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class InvalidVersionName(RegistryError, ValueError):
    """A version name is not ``N``, ``vN`` or ``VN`` with N >= 1."""


class InvalidInput(RegistryError, ValueError):
    """An argument other than a version name is invalid (file name, field)."""


class RegistryNotFound(RegistryError):
    """No registry exists at the URL (missing folder or bucket)."""


class NotARegistry(RegistryError):
    """The URL points at a folder or bucket that contains other data."""


class RegistryNotWritable(RegistryError):
    """The registry cannot be written (permissions, read-only file system)."""


class VersionNotFound(RegistryError, LookupError):
    """No complete version with this number exists."""


class CorruptVersion(RegistryError):
    """A stored file does not match the SHA-256 or size in its manifest."""


class IncompatibleVersion(RegistryError):
    """A version's fingerprint differs from the one the job runs with."""


class AlreadyServing(RegistryError):
    """The requested version serves already, so nothing would change."""


class AlreadyInPauseState(RegistryError):
    """Automatic promotion is already paused (or running), so nothing would change."""


class NoPreviousVersion(RegistryError):
    """The pointer history contains no earlier version to return to."""


class PointerConflict(RegistryError):
    """The serving pointer moved after the caller read it.

    When the failed call was a publish whose pointer move lost the race,
    ``version`` is the number it published. That version is stored and
    intact. ``version`` is None when nothing was stored.
    """

    def __init__(self, message: str, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


class PromotionPaused(PointerConflict):
    """Automatic promotion is paused, so the pointer was not moved.

    A PointerConflict, because an operator's pause overrides the job's move:
    a caller that follows the operator on a conflict does the right thing.
    """


class ContentionError(RegistryError):
    """A compare-and-swap kept failing because other writers kept winning."""


class AnnounceError(RegistryError):
    """A pointer change could not be sent to the Pub/Sub topic."""
