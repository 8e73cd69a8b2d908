"""Checkpoints of the learner stage in a local folder, written atomically.

A checkpoint is a set of named files. It is written to a temporary folder,
synced, renamed into place, and only then named by ``CURRENT`` (replaced with
``os.replace``), so a process killed at any moment leaves the previous
checkpoint readable.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

_CURRENT = "CURRENT"
_NAME = re.compile(r"ckpt-(\d{9})")
_KEPT = 2


class CheckpointStore:
    """Numbered checkpoints under one folder; the newest is the valid one."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def latest(self) -> int | None:
        """Return the number of the current checkpoint, or None."""
        try:
            text = (self.folder / _CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        match = _NAME.fullmatch(text)
        if match is None:
            raise ValueError(
                f"invalid checkpoint pointer {text!r} in {self.folder / _CURRENT}"
            )
        return int(match.group(1))

    def save(self, number: int, files: Mapping[str, bytes]) -> None:
        """Write checkpoint ``number`` and make it current."""
        name = f"ckpt-{number:09d}"
        staging = self.folder / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for file_name, data in files.items():
            path = staging / file_name
            with open(path, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        pointer = self.folder / f".{_CURRENT}.tmp"
        pointer.write_text(name, encoding="utf-8")
        os.replace(pointer, self.folder / _CURRENT)
        self._remove_old(number)

    def load(self, number: int) -> dict[str, bytes]:
        """Return the files of checkpoint ``number``."""
        folder = self.folder / f"ckpt-{number:09d}"
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint {number} not found in {self.folder}")
        return {path.name: path.read_bytes() for path in folder.iterdir()}

    def _remove_old(self, newest: int) -> None:
        for path in self.folder.iterdir():
            match = _NAME.fullmatch(path.name)
            if match is not None and int(match.group(1)) <= newest - _KEPT:
                shutil.rmtree(path, ignore_errors=True)
