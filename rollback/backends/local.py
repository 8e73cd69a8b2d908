"""A registry in a local folder.

Every write goes to a temporary file in the target's folder, is flushed with
fsync and then renamed into place (hard-linked, for create-only writes). A
reader therefore sees the old object or the new one, never part of one, even
if the writer is killed. Compare-and-swap takes an exclusive ``flock`` on
``.lock`` in the registry folder. The kernel releases the lock when its
holder dies, so a killed writer leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from rollback.backends.base import Blob
from rollback.errors import NotARegistry, RegistryError, RegistryNotWritable

LOCK_NAME = ".lock"
# A temporary file this old was left by a writer that died: a write takes
# seconds.
STALE_TEMPORARY_S = 3600.0
_TEMPORARY = re.compile(r"\..+\.[0-9]+\.[0-9a-f]{8}")


class LocalStorage:
    """Objects as files under ``root``; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        try:
            self._root = Path(root).expanduser().absolute()
        except RuntimeError as error:  # pathlib's error for an unknown ~user
            raise RegistryError(
                f"invalid registry path {str(root)!r}: {str(error).rstrip('.')}; "
                "pass a path without '~' or with the home folder of an existing user"
            ) from error
        # Plain strings below: pathlib costs more than the I/O when listing
        # thousands of versions.
        self._root_text = str(self._root)

    @property
    def url(self) -> str:
        return str(self._root)

    def exists(self) -> bool:
        if self._root.exists() and not self._root.is_dir():
            raise NotARegistry(
                f"registry path {self._root} is a file, not a folder; "
                "pass a folder or a gs://bucket/prefix URL"
            )
        return self._root.is_dir()

    def read(self, key: str) -> Blob | None:
        try:
            with open(os.path.join(self._root_text, key), "rb") as file:
                data = file.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError as error:
            raise RegistryError(
                f"cannot read {key} in registry {self._root}: it is a folder, not "
                "a file; move the folder away or restore the file from a backup"
            ) from error
        except PermissionError as error:
            raise RegistryError(
                f"cannot read {key} in registry {self._root}: {error.strerror}; "
                "check the folder's permissions"
            ) from error
        except OSError as error:
            raise RegistryError(
                f"cannot read {key} in registry {self._root}: {error.strerror}"
            ) from error
        return Blob(data=data, generation=hashlib.sha256(data).hexdigest())

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._writing(key):
            temporary = self._write_temporary(path, data)
            try:
                # link() fails if the target exists, which makes the
                # create-only write atomic without a lock.
                os.link(temporary, path)
            except FileExistsError:
                return False
            finally:
                temporary.unlink()
            _fsync_folder(path.parent)
        return True

    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        with self._writing(key), self._locked():
            current = self.read(key)
            current_generation = None if current is None else current.generation
            if current_generation != expected:
                return False
            self._replace(self._path(key), data)
        return True

    def put(self, key: str, data: bytes) -> None:
        with self._writing(key):
            self._replace(self._path(key), data)

    def list_keys(self, prefix: str) -> list[str]:
        start = os.path.join(self._root_text, prefix)
        if not os.path.isdir(start):
            start = os.path.dirname(start)
        skip = len(self._root_text) + 1
        keys = []
        for folder, subfolders, names in os.walk(start):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            relative = folder[skip:]
            for name in names:
                if name.startswith("."):
                    continue  # temporary files and the lock
                key = f"{relative}/{name}" if relative else name
                if key.startswith(prefix):
                    keys.append(key)
        return keys

    def folders_containing(self, prefix: str, name: str) -> list[str]:
        # listdir plus one stat per folder: several times faster than a walk
        # that lists every file of every version.
        parent = os.path.join(self._root_text, prefix)
        try:
            children = os.listdir(parent)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [
            child
            for child in children
            if not child.startswith(".")
            and _may_exist(os.path.join(parent, child, name))
        ]

    def remove_stale_temporaries(self, prefix: str) -> int:
        """Remove the temporary files in folder ``prefix`` that writers killed
        mid-write left behind; return how many.

        Only files older than STALE_TEMPORARY_S go, so a write in progress,
        by this host or another one sharing the folder, keeps its file.
        """
        try:
            entries = list(os.scandir(self._root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        oldest_kept = time.time() - STALE_TEMPORARY_S
        removed = 0
        for entry in entries:
            if not _TEMPORARY.fullmatch(entry.name) or not entry.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < oldest_kept:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def is_empty(self) -> bool:
        return not any(
            not entry.name.startswith(".") for entry in os.scandir(self._root)
        )

    def _path(self, key: str) -> Path:
        return self._root / key

    def _replace(self, path: Path, data: bytes) -> None:
        temporary = self._write_temporary(path, data)
        try:
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)

    def _write_temporary(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to a new hidden file beside ``path``; return its path.

        A failed write (such as a full disk) removes the partial file, so
        that it does not keep the space it took.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return temporary

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        path = self._root / LOCK_NAME
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RegistryNotWritable(
                f"cannot open the lock file {path}: {error.strerror}; it must be "
                "a file the registry's users can write (delete it if it is not: "
                "the registry recreates it)"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the flock

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        try:
            yield
        except PermissionError as error:
            raise self._not_accessible(key, error) from error
        except OSError as error:
            if error.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise self._not_accessible(key, error) from error
            raise RegistryError(
                f"cannot write {key} in registry {self._root}: {error.strerror}"
            ) from error

    def _not_accessible(self, key: str, error: OSError) -> RegistryNotWritable:
        return RegistryNotWritable(
            f"cannot write {key} in registry {self._root}: {error.strerror}; "
            "check the folder's permissions and free space, or pass another "
            "--registry"
        )


def _may_exist(path: str) -> bool:
    """Return whether ``path`` exists, or True if a permission error hides it.

    A version folder that cannot be entered is then listed, and reading it
    fails with the reason, rather than the version being left out unseen.
    """
    try:
        os.stat(path)
    except PermissionError:
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable across a power loss. A killed process
    # needs no fsync at all, since the kernel keeps its writes.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
