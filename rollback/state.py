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
        return cls(
            seq=data["seq"],
            change_id=data["change_id"],
            time=datetime.fromisoformat(data["time"]),
            actor=data["actor"],
            kind=data["kind"],
            from_version=data["from_version"],
            to_version=data["to_version"],
            reason=data["reason"],
            details=data.get("details", {}),
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
        that is not the current one and was not left by a rollback (the last
        change away from it was not a rollback). None if there is none.
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
        """Parse ``state.json``; raises ValueError or KeyError if damaged."""
        body = json.loads(data)
        if body.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {body.get('format')!r}")
        history = tuple(PointerChange.from_dict(entry) for entry in body["history"])
        for position, change in enumerate(history, start=1):
            if change.seq != position:
                raise ValueError(f"history entry {position} has seq {change.seq}")
        return cls(serving=body["serving"], paused=body["paused"], history=history)


def _name(version: int | None) -> str:
    return "none" if version is None else format_version(version)
