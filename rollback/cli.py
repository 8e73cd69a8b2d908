"""The operator's commands: ``rollback`` and ``streamlearn versions``.

Both print one line on success (or the listing asked for), one line on
stderr and a non-zero exit code on failure: 1 when the registry refused the
request or could not be read, 2 for invalid arguments. With ``--debug`` the
line follows the error's traceback. A closed output pipe (``| head``) ends a
command quietly with 141, the status a shell reports for SIGPIPE. They
import neither torch nor Beam, and load the Google Cloud libraries only for
a ``gs://`` registry or an announce topic.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rollback.config import ENV_REGISTRY, OperatorConfig, load_config
from rollback.errors import (
    AlreadyInPauseState,
    AlreadyServing,
    InvalidInput,
    InvalidVersionName,
    RegistryError,
)
from rollback.names import format_version, parse_version
from rollback.registry import Registry, open_registry

logger = logging.getLogger(__name__)

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as for a process the signal ended
EXIT_INTERRUPTED = 130  # 128 + SIGINT
MAX_REASON_LENGTH = 1000
MAX_ACTOR_LENGTH = 200
# Control, format and line-separator characters: they would break the
# one-line output of --status and could rewrite an operator's terminal.
_FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")

ROLLBACK_EXAMPLES = """examples:
  rollback --to v12 --reason "v14 mislabels returns"   point serving at v12
  rollback                                   return to the previous version
  rollback --dry-run                         show what 'rollback' would do
  rollback --pause --reason "incident 7"     stop automatic promotion
  rollback --resume                          let the job promote again
  rollback --status                          show what serves and what is next
  rollback --status --format json            the same, for scripts

Without --to, the target is the version older than the serving one that
served most recently and whose last move away was not a rollback: after
'rollback --to v5' from v9, where v1..v9 served in order, a plain
'rollback' goes to v4. Check the target with --status or --dry-run first.

The registry is --registry, else $STREAMLEARN_REGISTRY, else 'url' in the
[registry] table of ./streamlearn.toml (or $STREAMLEARN_CONFIG), else
./runs/registry.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rollback`` and return its exit code."""
    parser = _rollback_parser()
    args = parser.parse_args(argv)
    return run_command("rollback", args, lambda: _run_rollback(args))


def run_command(
    program: str, args: argparse.Namespace, command: Callable[[], int]
) -> int:
    """Run ``command`` and turn any error it raises into one line on stderr.

    Returns the command's exit code, EXIT_USAGE for invalid arguments and
    EXIT_REFUSED for every other error, including OS and parse errors that
    the registry did not foresee.
    """
    configure_logging(args.verbose, args.debug)
    try:
        return command()
    except (InvalidInput, InvalidVersionName) as error:
        return _fail(program, str(error), EXIT_USAGE)
    except RegistryError as error:
        return _fail(program, str(error), EXIT_REFUSED)
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # unforeseen errors and bugs get one line too
        message = (
            f"unexpected error: {type(error).__name__}: {error}; rerun with "
            "--debug for the traceback"
        )
        return _fail(program, message, EXIT_REFUSED)


def _fail(program: str, message: str, code: int) -> int:
    logger.debug("%s failed", program, exc_info=True)  # the traceback, at DEBUG
    one_line = " ".join(message.splitlines())
    print(f"{program}: {one_line}", file=sys.stderr)
    return code


def _discard_stdout() -> None:
    # Python flushes stdout again at exit, which would raise a second time
    # and print a warning: point it at /dev/null first.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def versions_main(argv: Sequence[str] | None = None) -> int:
    """Run ``streamlearn versions`` and return its exit code."""
    from rollback.listing import run_versions  # kept apart: listing and rendering

    return run_versions(argv)


def _rollback_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollback",
        # The raw formatter keeps the epilog's examples as written, so the
        # description carries its own line breaks.
        description=(
            "Point serving at an earlier model version, or pause automatic\n"
            "promotion. Checks that the target exists, is intact and is\n"
            "compatible with the running job before it moves the pointer."
        ),
        epilog=ROLLBACK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--to",
        metavar="VERSION",
        help="version to serve: 12, v12 or V012 (default: the previous version "
        "from the pointer history, as described below)",
    )
    action.add_argument(
        "--pause", action="store_true", help="pause automatic promotion"
    )
    action.add_argument(
        "--resume", action="store_true", help="resume automatic promotion"
    )
    action.add_argument(
        "--status",
        action="store_true",
        help="print the serving version, the pause state and the rollback target",
    )

    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="output format of --status: text (one line) or json (serving, "
        "paused, the last pause while paused, the rollback target) "
        "(default: %(default)s)",
    )
    parser.add_argument("--reason", default="", help="why, recorded in the history")
    parser.add_argument(
        "--dry-run", action="store_true", help="check and print, change nothing"
    )
    add_common_options(parser)

    parser.add_argument(
        "--actor",
        default=None,
        help="who acts, recorded in the history (default: operator:$USER)",
    )
    parser.add_argument(
        "--announce-topic",
        metavar="TOPIC",
        help="Pub/Sub topic projects/P/topics/T to announce the change on "
        "(default: $STREAMLEARN_ANNOUNCE_TOPIC or the config file)",
    )
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options both commands share: --registry, --verbose, --debug."""
    parser.add_argument(
        "--registry",
        metavar="URL",
        help=f"registry folder or gs://bucket/prefix (default: ${ENV_REGISTRY}, "
        "the config file, or ./runs/registry)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the registry does"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log every step, and the traceback of an error",
    )


def open_from_options(
    registry_option: str | None, announce_topic_option: str | None = None
) -> tuple[Registry, OperatorConfig]:
    """Open the registry the options, environment or config file name."""
    config = load_config(registry_option, announce_topic_option, os.environ, Path.cwd())
    announcer = None
    if config.announce_topic:
        from rollback.announce import PubSubAnnouncer, is_topic_path

        if not is_topic_path(config.announce_topic):
            raise InvalidInput(
                f"invalid announce topic {config.announce_topic!r} (from "
                f"{config.announce_topic_source}): expected "
                "projects/PROJECT/topics/TOPIC"
            )
        announcer = PubSubAnnouncer(config.announce_topic)
    registry = open_registry(config.registry, announcer=announcer)
    return registry, config


def _run_rollback(args: argparse.Namespace) -> int:
    _check_arguments(args)  # before the registry is opened
    registry, config = open_from_options(args.registry, args.announce_topic)
    actor = args.actor or f"operator:{_user()}"
    if args.status:
        if args.format == "json":
            print(json.dumps(_status_document(registry), indent=1))
        else:
            print(_status_line(registry))
        return 0
    if args.pause or args.resume:
        return _run_pause(registry, args, actor)

    try:
        current, target = registry.plan_rollback(args.to)
    except AlreadyServing as already:
        # Success, because the requested version serves: repeating a command
        # is safe, as 'kubectl apply' of an unchanged object is.
        print(already)
        return 0
    if registry.last_check_skipped is not None:
        print(f"rollback: warning: {registry.last_check_skipped}", file=sys.stderr)
    verb = "roll back" if current is None or target < current else "move"
    moved = f"serving from {_name(current)} to {format_version(target)}"
    if args.dry_run:
        print(f"would {verb} {moved} (dry run, nothing changed)")
        return 0
    action = "rollback" if verb == "roll back" else "move"
    reason = args.reason or f"manual {action}, no reason given"
    try:
        registry.rollback(target, actor, reason)
    except AlreadyServing as already:
        # Another operator's identical request won the race.
        print(already)
        return 0
    past = "rolled back" if verb == "roll back" else "moved"
    print(f"{past} {moved}")
    _warn_if_not_announced(registry)
    if config.announce_topic is None:
        print(
            "rollback: note: no announce topic is configured, so running jobs "
            "pick up the change at their next pointer check (the streaming "
            "job reads the pointer every 5 s)",
            file=sys.stderr,
        )
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Raise InvalidVersionName or InvalidInput for an invalid argument."""
    if args.format != "text" and not args.status:
        raise InvalidInput(
            f"--format {args.format} needs --status, as in "
            "'rollback --status --format json'"
        )
    if args.to is not None:
        parse_version(args.to)
    check_text("--reason", args.reason, MAX_REASON_LENGTH)
    if args.pause and not args.reason.strip():
        raise InvalidInput(
            '--pause needs --reason TEXT, such as --reason "incident 7", so '
            "that others see why promotion stopped"
        )
    if args.actor is not None:
        check_text("--actor", args.actor, MAX_ACTOR_LENGTH)
        if not args.actor.strip():
            raise InvalidInput(
                f"invalid --actor {args.actor!r}: name who acts, such as 'ops:ana'"
            )


def check_text(option: str, text: str, max_length: int) -> None:
    """Raise InvalidInput if ``text`` is too long or has control characters."""
    if len(text) > max_length:
        raise InvalidInput(
            f"invalid {option}: {len(text)} characters, at most {max_length} "
            "are allowed"
        )
    for character in text:
        if unicodedata.category(character) in _FORBIDDEN_CATEGORIES:
            raise InvalidInput(
                f"invalid {option} {text!r}: it contains the control character "
                f"{character!r}; use one line of printable text"
            )


def _run_pause(registry: Registry, args: argparse.Namespace, actor: str) -> int:
    paused = bool(args.pause)
    word = "pause" if paused else "resume"
    if args.dry_run:
        already = registry.is_paused() == paused
        state = "no change: it is already" if already else "would"
        print(f"{state} {word}{'d' if already else ''} automatic promotion (dry run)")
        return 0
    try:
        if paused:
            registry.pause(actor, args.reason)
        else:
            registry.resume(actor, args.reason)
    except AlreadyInPauseState as already:
        # Success, like --to a version that serves already. The message names
        # the actor of the earlier pause, as stored, so it is escaped.
        print(printable(str(already)))
        return 0
    serving = registry.serving()
    print(f"{word}d automatic promotion; {_name(serving)} serves")
    _warn_if_not_announced(registry)
    return 0


def _status_line(registry: Registry) -> str:
    state = registry.state()
    parts = [f"{_name(state.serving)} serves"]
    last_pause = state.last_pause()
    if state.paused and last_pause is not None:
        # Escaped: entries written through the Python API are not checked
        # for control characters as the command-line options are.
        parts.append(
            f"automatic promotion paused by {printable(last_pause.actor)} at "
            f"{last_pause.time:%Y-%m-%d %H:%M:%S %Z} "
            f"({printable(last_pause.reason)})"
        )
    else:
        parts.append("automatic promotion on")
    previous = state.previous_version()
    if previous is not None:
        parts.append(f"'rollback' would return to {format_version(previous)}")
    return "; ".join(parts)


def _status_document(registry: Registry) -> dict[str, Any]:
    """Return what ``--status`` prints, as a JSON-ready dict."""
    state = registry.state()
    last_pause = state.last_pause()
    previous = state.previous_version()
    return {
        "serving": None if state.serving is None else format_version(state.serving),
        "paused": state.paused,
        "pause": (
            {
                "actor": last_pause.actor,
                "time": last_pause.time.isoformat(),
                "reason": last_pause.reason,
            }
            if state.paused and last_pause is not None
            else None
        ),
        "rollback_target": None if previous is None else format_version(previous),
    }


def _warn_if_not_announced(registry: Registry) -> None:
    if registry.last_announce_error is not None:
        print(
            f"rollback: warning: the change is made but was not announced: "
            f"{registry.last_announce_error}; followers see it when they next "
            "read the registry",
            file=sys.stderr,
        )


def configure_logging(verbose: bool, debug: bool = False) -> None:
    """Log to stderr with --verbose or --debug; otherwise errors are one line."""
    level = logging.CRITICAL
    if verbose:
        level = logging.INFO
    if debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _user() -> str:
    try:
        import getpass  # only for the default actor

        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def printable(text: str) -> str:
    """Return ``text`` with non-printable characters written as escapes."""
    if text.isprintable():
        return text
    return "".join(
        character if character.isprintable() else repr(character)[1:-1]
        for character in text
    )


def _name(version: int | None) -> str:
    return "no version" if version is None else format_version(version)


if __name__ == "__main__":
    sys.exit(main())
