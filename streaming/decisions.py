"""The job's decision log, ``decisions.jsonl`` in the run folder.

The streaming job appends one JSON object per decision: promotions,
rejections, rollbacks, alerts, adoptions of an operator's pointer change,
checkpoints and failures. The job's closing account and the HTML report
describe the records in the same words.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from streaming.job_metrics import version_text

# A candidate's name in the log, such as c12. The number is at most 18 ASCII
# digits, so that a hand-edited line cannot make a number Python refuses.
_CANDIDATE = re.compile(r"c([0-9]{1,18})")

# The kinds of record that the closing account lists. Checkpoints and
# failed checkpoints are counted in the account instead.
ACCOUNT_KINDS = frozenset(
    {
        "promotion",
        "rejection",
        "promotion_paused",
        "publish_lost_race",
        "publish_blocked",
        "rollback",
        "alert",
        "adopted",
        "restored",
        "skipped_pending",
        "restore_serving_failed",
        "adopt_failed",
        "publish_failed",
    }
)


def read_decisions(path: Path) -> list[dict[str, Any]]:
    """Return the records of a decision log, oldest first, skipping lines that
    a crash cut short or that are not JSON objects."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class DecisionLog:
    """Appends the job's decisions to a JSON-lines file, one line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # A crash or a full disk can leave the last line cut short. The next
        # record starts on a line of its own, so only the cut line is lost.
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb+") as stream:
                stream.seek(-1, 2)
                if stream.read(1) != b"\n":
                    stream.write(b"\n")

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str)
        with self._lock, open(self.path, "a", encoding="utf-8") as stream:
            stream.write(line + "\n")

    def last_candidate_number(self) -> int:
        """Return the highest candidate number (N of "cN") in the log, or 0."""
        highest = 0
        for record in read_decisions(self.path):
            candidate = record.get("candidate")
            match = (
                _CANDIDATE.fullmatch(candidate) if isinstance(candidate, str) else None
            )
            if match:
                highest = max(highest, int(match.group(1)))
        return highest


def account_decisions(path: Path) -> list[dict[str, Any]]:
    """Return the records of the log at ``path`` that the closing account lists."""
    return [
        record
        for record in read_decisions(path)
        if isinstance(record.get("kind"), str) and record["kind"] in ACCOUNT_KINDS
    ]


def describe_decision(record: dict[str, Any]) -> str:
    """Return one line that describes a decision record.

    A record that lacks a field its kind needs (a hand-edited log) is shown
    as its kind and fields.
    """
    try:
        return _described(record)
    except (KeyError, TypeError, ValueError):
        return _fields_text(record)


def _described(record: dict[str, Any]) -> str:
    """Return the line of a record; raise KeyError when a field is missing."""
    kind = record["kind"]
    candidate = record.get("candidate", "a candidate")
    if kind == "promotion":
        return (
            f"published {candidate} as v{record['version']} (parent "
            f"{version_text(record['parent'])}): {record['reason']} "
            f"(candidate's holdout top-1 {record['candidate_top1']:.3f}, top-5 "
            f"{record['candidate_top5']:.3f}, log loss "
            f"{record['candidate_log_loss']:.3f})"
        )

    if kind == "rejection":
        return (
            f"rejected {candidate}, kept "
            f"{version_text(record['serving_version'])}: {record['reason']} "
            f"(candidate's holdout top-1 {record['candidate_top1']:.3f}, top-5 "
            f"{record['candidate_top5']:.3f})"
        )

    if kind == "rollback":
        return (
            f"rolled back {version_text(record['from_version'])} -> "
            f"v{record['to_version']}: {record['reason']}"
        )

    if kind == "promotion_paused":
        return f"kept {candidate} in training: promotion is paused"

    if kind == "publish_failed":
        return f"failed to publish {candidate}: {record['reason']}"

    if kind in ("publish_lost_race", "publish_blocked"):
        return f"did not publish {candidate}: {record['reason']}"

    if kind == "skipped_pending":
        return (
            f"skipped {record['events']} restored pending events: "
            f"v{record['version']} learned them before the crash"
        )

    if kind == "alert":
        return f"alert: {record['reason']}"

    if kind == "restored":
        return (
            f"restored checkpoint {record['number']}: {record['events_read']} "
            f"events read and {record['learned']} learned before this run"
        )

    if kind in ("adopt_failed", "restore_serving_failed"):
        return f"could not load v{record['version']}: {record['error']}"

    if kind == "adopted":
        return (
            f"adopted v{record['version']} (was "
            f"{version_text(record['previous'])}): {record['reason']}"
        )
    return _fields_text(record)


def _fields_text(record: dict[str, Any]) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in record.items() if k != "kind")
    return f"{record.get('kind', 'record')}: {fields}"
