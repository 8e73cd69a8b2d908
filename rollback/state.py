"""The serving pointer, the pause flag and the pointer history.

All three live in one object (``state.json``) that is only ever replaced by
compare-and-swap, so the pointer and its history cannot disagree: a change
is recorded exactly when it happens. The history is append-only because
every new state is the old one plus one entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from rollback.names import format_version

STATE_FORMAT = "streamlearn-state/1"

# Kinds of pointer move. "publish": a new version went live after
# validation. "promote": the job pointed at a version published earlier.
# "rollback": an operator's manual move. "auto_rollback": the job rolled back
# on its own, with the numbers that triggered it in ``details``.
POINTER_KINDS = ("publish", "promote", "rollback", "auto_rollback")
ROLLBACK_KINDS = ("rollback", "auto_rollback")
# Entries that change the pause flag and leave the pointer where it is.
PAUSE_KINDS = ("pause", "resume")
# Kinds that a pause blocks: the job's automatic forward moves.
PROMOTION_KINDS = ("publish", "promote")
# Pointer moves a pause holds back: the job's own, never an operator's.
PAUSED_KINDS = (*PROMOTION_KINDS, "auto_rollback")


@dataclass(frozen=True)
class PointerChange:
    """One entry of the pointer history."""

    seq: int
    change_id: str
    time: datetime
    actor: str
    kind: str
    from_version: int | None
    to_version: int | None
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def moves_pointer(self) -> bool:
        return self.kind in POINTER_KINDS

    def describe(self) -> str:
        """Return one line for operators, such as ``v12 -> v9 (rollback)``."""
        if not self.moves_pointer:
            return f"{self.kind} of automatic promotion"
        return f"{_name(self.from_version)} -> {_name(self.to_version)} ({self.kind})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "change_id": self.change_id,
            "time": self.time.isoformat(),
            "actor": self.actor,
            "kind": self.kind,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "reason": self.reason,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PointerChange:
        """Build an entry from its stored form, checking every field's type.

        Raises ValueError naming the field, so that a hand-edited entry fails
        here rather than later in a comparison or a message.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a history entry is a {type(data).__name__}")
        seq = _number_field(data, "seq", "a history entry")
        where = f"history entry {seq}"
        kind = _text_field(data, "kind", where)
        if kind not in POINTER_KINDS + PAUSE_KINDS:
            raise ValueError(f"{where} has unknown kind {kind!r}")
        details = data.get("details", {})
        if not isinstance(details, Mapping):
            raise ValueError(f"{where} has details {details!r}, expected an object")
        return cls(
            seq=seq,
            change_id=_text_field(data, "change_id", where),
            time=datetime.fromisoformat(_text_field(data, "time", where)),
            actor=_text_field(data, "actor", where),
            kind=kind,
            from_version=_version_field(data, "from_version", where),
            to_version=_version_field(data, "to_version", where),
            reason=_text_field(data, "reason", where),
            details=details,
        )


@dataclass(frozen=True)
class ServedInterval:
    """A stretch of time during which one version served."""

    start: datetime
    end: datetime | None  # None: serves still
    ended_by: str | None  # kind of the change that ended it


@dataclass(frozen=True)
class ServingState:
    """The pointer, the pause flag and the full history; see the module."""

    serving: int | None = None
    paused: bool = False
    history: tuple[PointerChange, ...] = ()

    def with_change(self, change: PointerChange) -> ServingState:
        """Return the state after ``change``; the history grows by one."""
        if change.kind in PAUSE_KINDS:
            return replace(
                self,
                paused=change.kind == "pause",
                history=(*self.history, change),
            )
        return replace(self, serving=change.to_version, history=(*self.history, change))

    @property
    def next_seq(self) -> int:
        return len(self.history) + 1

    def pointer_changes(self) -> list[PointerChange]:
        return [change for change in self.history if change.moves_pointer]

    def previous_version(self) -> int | None:
        """Return the version to go back to from the current one.

        Walks the served versions from the newest back and takes the first
        that is older than the current one and was not left by a rollback
        (the last change away from it was not a rollback). None if there is
        none. A version newer than the current one is never the target: an
        operator who rolled back from v9 to v5 skipped v6 to v8 on purpose.
        """
        changes = self.pointer_changes()
        left_by_rollback: dict[int, bool] = {}
        for change in changes:
            if change.from_version is not None:
                left_by_rollback[change.from_version] = change.kind in ROLLBACK_KINDS
        served = [change.to_version for change in changes]
        if changes:
            served.insert(0, changes[0].from_version)
        for version in reversed(served):
            if version is None or version == self.serving:
                continue
            if self.serving is not None and version > self.serving:
                continue
            if not left_by_rollback.get(version, False):
                return version
        return None

    def served_intervals(self, version: int) -> list[ServedInterval]:
        """Return when ``version`` served, oldest first."""
        intervals: list[ServedInterval] = []
        start: datetime | None = None
        for change in self.pointer_changes():
            if start is not None and change.from_version == version:
                intervals.append(ServedInterval(start, change.time, change.kind))
                start = None
            if change.to_version == version:
                start = change.time
        if start is not None:
            intervals.append(ServedInterval(start, None, None))
        return intervals

    def last_pause(self) -> PointerChange | None:
        for change in reversed(self.history):
            if change.kind in PAUSE_KINDS:
                return change
        return None

    def to_json(self) -> bytes:
        body = {
            "format": STATE_FORMAT,
            "serving": self.serving,
            "paused": self.paused,
            "history": [change.to_dict() for change in self.history],
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ServingState:
        """Parse and check ``state.json``; raises ValueError if damaged.

        Checks every field's type, that the ``seq`` numbers count from 1, and
        that ``serving`` is where the last pointer change moved the pointer.
        """
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError(f"it contains a JSON {type(body).__name__}, not an object")
        if body.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {body.get('format')!r}")
        serving = _version_field(body, "serving", "the state")
        paused = _field(body, "paused", "the state")
        if not isinstance(paused, bool):
            raise ValueError(f"paused is {paused!r}, expected true or false")
        entries = _field(body, "history", "the state")
        if not isinstance(entries, list):
            raise ValueError(f"history is a {type(entries).__name__}, expected a list")
        history = tuple(PointerChange.from_dict(entry) for entry in entries)
        for position, change in enumerate(history, start=1):
            if change.seq != position:
                raise ValueError(f"history entry {position} has seq {change.seq}")
        state = cls(serving=serving, paused=paused, history=history)
        moves = state.pointer_changes()
        last_target = moves[-1].to_version if moves else None
        if serving != last_target:
            raise ValueError(
                f"serving is {_name(serving)}, but the last pointer change in the "
                f"history moved it to {_name(last_target)}"
            )
        return state


def _field(data: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in data:
        raise ValueError(f"{where} has no field {name!r}")
    return data[name]


def _text_field(data: Mapping[str, Any], name: str, where: str) -> str:
    value = _field(data, name, where)
    if not isinstance(value, str):
        raise ValueError(f"{where} has {name} {value!r}, expected a string")
    return value


def _version_field(data: Mapping[str, Any], name: str, where: str) -> int | None:
    """Return the version number stored under ``name``, or None for null."""
    if _field(data, name, where) is None:
        return None
    return _number_field(data, name, where)


def _number_field(data: Mapping[str, Any], name: str, where: str) -> int:
    value = _field(data, name, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} has {name} {value!r}, expected an int >= 1")
    return value


def _name(version: int | None) -> str:
    return "none" if version is None else format_version(version)
