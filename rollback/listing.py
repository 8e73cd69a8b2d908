"""``streamlearn versions list``, ``describe`` and ``history``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from rollback.cli import (
    add_common_options,
    open_from_options,
    printable,
    run_command,
)
from rollback.errors import CorruptVersion, InvalidInput, RegistryError
from rollback.manifest import Manifest
from rollback.names import format_version
from rollback.registry import Registry
from rollback.state import ROLLBACK_KINDS, ServingState

EXAMPLES = """examples:
  streamlearn versions list --limit 5
  streamlearn versions list --filter "metrics.holdout.top1_accuracy>0.9 AND version>v9"
  streamlearn versions list --filter "status=serving OR status='rolled back'"
  streamlearn versions list --filter "created_at>='2026-03-01T08:00' AND name!=v1"
  streamlearn versions list --format json
  streamlearn versions describe v12
  streamlearn versions history --limit 10

Filter keys are the dotted fields of --format json: name, version, status,
parent, created_at, events.count, metrics.holdout.NAME, metrics.champion.NAME,
fingerprint, code_version. The streaming job's metric NAMEs are n_events,
top1_accuracy, top_k, top_k_hit_rate, log_loss, macro_precision,
macro_recall, macro_f1 and n_labels (the labels the macro scores average
over: those that occurred or were predicted in the holdout window, not all
the labels the version knows). The job's events.count is the number of
labelled events it had learned when it published the version, counting
those that rejected candidates learned before the job dropped them.
Operators: = != < <= > >= : (contains) ~ (regex). Quote a value that
contains spaces, a colon or parentheses, such as a time.
"""

# Status of a version in the listing, from the pointer history.
SERVING = "serving"
ROLLED_BACK = "rolled back"
RETIRED = "retired"
NEVER_SERVED = "never served"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"


def run_versions(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return run_command("streamlearn versions", args, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    registry, _ = open_from_options(args.registry)
    if args.command == "list":
        return _list(registry, args)
    if args.command == "history":
        return _history(registry, args)
    return _describe(registry, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlearn versions",
        description="List and describe the model versions in the registry.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser(
        "list",
        help="list versions, newest first",
        description="List versions, newest first.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--filter", metavar="EXPR", help="keep matching versions")
    listing.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="print at most N versions, the newest (default: all)",
    )
    listing.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: one line per version; json: a list of the manifests with "
        "name and status (default: %(default)s)",
    )
    add_common_options(listing)
    describe = commands.add_parser(
        "describe",
        help="show one version: manifest, metrics, lineage, when it served",
        description="Show one version: manifest, metrics, lineage, when it served.",
        epilog="example:\n  streamlearn versions describe v12 --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    describe.add_argument("version", help="12, v12 or V012")
    describe.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: one field per line; json: the manifest with status, "
        "integrity, lineage and served intervals (default: %(default)s)",
    )
    add_common_options(describe)
    history = commands.add_parser(
        "history",
        help="show the serving pointer's moves and pauses, newest first",
        description="Show the serving pointer's moves and pauses, newest first.",
        epilog="examples:\n  streamlearn versions history --limit 10\n"
        "  streamlearn versions history --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="print at most N entries, the newest (default: all)",
    )
    history.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: one line per entry; json: a list of the stored entries "
        "(default: %(default)s)",
    )
    add_common_options(history)
    return parser


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r}: expected N >= 1")
    return number


def version_rows(registry: Registry) -> list[dict[str, Any]]:
    """Return one JSON-ready row per version, newest first."""
    statuses = version_statuses(registry.state())
    manifests = registry.manifests(registry.versions())
    rows = []
    for number in sorted(manifests, reverse=True):
        manifest = manifests[number]
        if isinstance(manifest, RegistryError):
            status = CORRUPT if isinstance(manifest, CorruptVersion) else UNREADABLE
            rows.append({"version": number, "status": status, "error": str(manifest)})
            continue
        row = manifest.to_dict()
        row["status"] = statuses.get(number, NEVER_SERVED)
        rows.append(row)
    return rows


def version_statuses(state: ServingState) -> dict[int, str]:
    """Return serving, rolled back or retired for every version that served.

    A version that never served is absent. A version that served is rolled
    back or retired by the kind of the last change that moved away from it.
    """
    statuses = {}
    for change in state.pointer_changes():
        if change.from_version is not None:
            rolled_back = change.kind in ROLLBACK_KINDS
            statuses[change.from_version] = ROLLED_BACK if rolled_back else RETIRED
    if state.serving is not None:
        statuses[state.serving] = SERVING
    return statuses


def version_status(state: ServingState, number: int) -> str:
    """Return the status of one version; see version_statuses."""
    return version_statuses(state).get(number, NEVER_SERVED)


def _list(registry: Registry, args: argparse.Namespace) -> int:
    rows = version_rows(registry)
    if args.filter:
        rows = _apply_filter(args.filter, rows)
    if args.limit is not None:
        rows = rows[: args.limit]
    if args.format == "json":
        print(json.dumps([_json_row(row) for row in rows], indent=1))
    else:
        print(_table(rows))
    return 0


def _apply_filter(text: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Imported here: compiling the filter grammar costs a few ms at start-up.
    from rollback.filters import compile_filter, flatten

    expression = compile_filter(text)
    # The keys are those of --format json, so the rows are filtered in that form.
    flat_rows = [flatten(_json_row(row)) for row in rows]
    known = set().union(*flat_rows) if flat_rows else set()
    unknown = sorted(expression.keys - known)
    if flat_rows and unknown:
        raise InvalidInput(
            f"invalid filter {expression.expression!r}: no version has the key "
            f"{', '.join(unknown)}; keys are {', '.join(sorted(known))}"
        )
    return [
        row
        for row, flat in zip(rows, flat_rows, strict=True)
        if expression.matches(flat)
    ]


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    named = {"name": format_version(row["version"]), **row}
    if "metrics" in row:
        named["metrics"] = _json_metric_tables(row["metrics"])
    return named


def _json_metric_tables(
    tables: dict[str, dict[str, float] | None],
) -> dict[str, dict[str, float | int] | None]:
    """Return the metric tables with integral values written as integers.

    The job stores every metric as a float, so counts such as ``n_events``
    would print as ``2000.0``. JSON has one number type, so the value is the
    same either way.
    """
    return {
        name: None if table is None else _integral_as_int(table)
        for name, table in tables.items()
    }


def _integral_as_int(metrics: dict[str, float]) -> dict[str, float | int]:
    return {
        key: int(value) if isinstance(value, float) and value.is_integer() else value
        for key, value in metrics.items()
    }


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("VERSION", "STATUS", "PARENT", "CREATED", "EVENTS", "HOLDOUT METRICS")
    lines = [header]
    for row in rows:
        if "error" in row:
            version = format_version(row["version"])
            lines.append((version, row["status"], "", "", "", row["error"]))
            continue
        parent = row["parent"]
        lines.append(
            (
                format_version(row["version"]),
                row["status"],
                "-" if parent is None else format_version(parent),
                row["created_at"][:19].replace("T", " "),
                str(row["events"]["count"]),
                _metrics_text(row["metrics"]["holdout"]),
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(5)]
    text_lines = []
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        text_lines.append("  ".join([*padded, line[5]]).rstrip())
    return "\n".join(text_lines)


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))


def _history(registry: Registry, args: argparse.Namespace) -> int:
    changes = list(reversed(registry.history()))
    if args.limit is not None:
        changes = changes[: args.limit]
    if args.format == "json":
        print(json.dumps([change.to_dict() for change in changes], indent=1))
        return 0
    header = ("TIME", "FROM", "TO", "KIND", "ACTOR", "REASON")
    lines = [header]
    for change in changes:
        lines.append(
            (
                f"{change.time:%Y-%m-%d %H:%M:%S %Z}".rstrip(),
                _version_cell(change.from_version, change.moves_pointer),
                _version_cell(change.to_version, change.moves_pointer),
                change.kind,
                # Escaped: entries written through the Python API are not
                # checked for control characters as the options are.
                printable(change.actor),
                printable(change.reason),
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(5)]
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*padded, line[5]]).rstrip())
    return 0


def _version_cell(version: int | None, moves_pointer: bool) -> str:
    if not moves_pointer:
        return "-"  # a pause or resume leaves the pointer where it is
    return "none" if version is None else format_version(version)


def _describe(registry: Registry, args: argparse.Namespace) -> int:
    manifest = registry.describe(args.version)
    state = registry.state()
    integrity = _integrity(registry, manifest)
    lineage = _lineage(registry, manifest)
    intervals = state.served_intervals(manifest.version)
    if args.format == "json":
        body = manifest.to_dict()
        document = {
            "name": manifest.name,
            **body,
            "metrics": _json_metric_tables(body["metrics"]),
            "status": version_status(state, manifest.version),
            "integrity": integrity,
            "lineage": [format_version(number) for number in lineage],
            "served": [
                {
                    "start": interval.start.isoformat(),
                    "end": None if interval.end is None else interval.end.isoformat(),
                    "ended_by": interval.ended_by,
                }
                for interval in intervals
            ],
        }
        print(json.dumps(document, indent=1))
        return 0
    print(_describe_text(manifest, state, integrity, lineage))
    return 0


def _integrity(registry: Registry, manifest: Manifest) -> str:
    try:
        registry.verify(manifest.version)
    except CorruptVersion as error:
        return f"CORRUPT: {error}"
    except RegistryError as error:
        return f"UNREADABLE: {error}"
    return f"ok ({len(manifest.files)} files, SHA-256 checked)"


def _lineage(registry: Registry, manifest: Manifest, depth: int = 10) -> list[int]:
    lineage = [manifest.version]
    parent = manifest.parent
    while parent is not None and len(lineage) < depth:
        lineage.append(parent)
        try:
            parent = registry.describe(parent).parent
        except RegistryError:
            break
    return lineage


def _describe_text(
    manifest: Manifest, state: ServingState, integrity: str, lineage: list[int]
) -> str:
    fields = manifest.fields
    event_range = "-"
    if fields.event_time_min is not None and fields.event_time_max is not None:
        low, high = fields.event_time_min, fields.event_time_max
        event_range = f"{low.isoformat()} .. {high.isoformat()}"
    champion = (
        "-"
        if fields.champion_metrics is None
        else _metrics_text(dict(fields.champion_metrics))
    )
    rows = [
        ("version", manifest.name),
        ("status", version_status(state, manifest.version)),
        ("parent", "-" if manifest.parent is None else format_version(manifest.parent)),
        ("lineage", " <- ".join(format_version(number) for number in lineage)),
        ("created", manifest.created_at.isoformat()),
        ("events", f"{fields.events_count}, event time {event_range}"),
        ("holdout metrics", _metrics_text(dict(fields.holdout_metrics)) or "-"),
        ("champion metrics", champion),
        ("labels", ", ".join(fields.label_vocabulary) or "-"),
        ("fingerprint", fields.fingerprint),
        ("code version", fields.code_version or "-"),
        ("state format", fields.state_format or "-"),
        ("integrity", integrity),
    ]
    for entry in sorted(manifest.files.values(), key=lambda entry: entry.name):
        rows.append(
            ("file", f"{entry.name}  {entry.size_bytes} bytes  sha256 {entry.sha256}")
        )
    intervals = state.served_intervals(manifest.version)
    if not intervals:
        rows.append(("served", "never"))
    for interval in intervals:
        end = "now" if interval.end is None else interval.end.isoformat()
        ended = "" if interval.ended_by is None else f" (ended by {interval.ended_by})"
        rows.append(("served", f"{interval.start.isoformat()} .. {end}{ended}"))
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{(label + ':').ljust(width)} {value}" for label, value in rows)
