"""The ``streamlearn`` command: one entry point, a subcommand per task.

Subcommands are imported only when chosen, so that ``streamlearn versions``
starts without torch or Beam.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# name -> ("module:function", one-line summary). The function takes the
# remaining arguments and returns an exit code.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "versions": ("rollback.cli:versions_main", "list and describe model versions"),
    "publish": ("streaming.publish:main", "send events from files to a Pub/Sub topic"),
    "run": ("streaming.job:main", "run the streaming job on the DirectRunner"),
    "predict": ("streaming.predict:main", "score a file of events with one version"),
    "deploy": ("streaming.deploy:main", "submit the streaming job to Dataflow"),
    "alerts": (
        "streaming.monitoring.alerts:main",
        "create or update the Cloud Monitoring alert policies",
    ),
    "report": ("streaming.report:main", "write the HTML report of a run's metrics"),
    "learn": ("online_model.cli:learn_main", "run the learner over a real stream"),
    "convert": ("online_model.cli:convert_main", "convert a data set to Avro events"),
}

USAGE = """usage: streamlearn SUBCOMMAND [ARGS...]

Streaming online learning: Pub/Sub events to validated, versioned weights.

subcommands:
{rows}

examples:
  streamlearn learn --dataset electricity --limit 10000
  eval "$(scripts/emulator)"    # start the local Pub/Sub emulator
  streamlearn publish --job-name demo --dataset job_postings
  streamlearn versions list --limit 5

Run 'streamlearn SUBCOMMAND --help' for the options of one subcommand.
"""


def _usage() -> str:
    width = max((len(name) for name in SUBCOMMANDS), default=0)
    rows = "\n".join(
        f"  {name.ljust(width)}  {summary}"
        for name, (_, summary) in sorted(SUBCOMMANDS.items())
    )
    return USAGE.format(rows=rows)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, function_name = target.split(":")
    module = importlib.import_module(module_name)
    function: Callable[[list[str]], int] = getattr(module, function_name)
    return function


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        # Like argparse without a required argument: the usage, then exit 2.
        print(_usage(), file=sys.stderr)
        print("streamlearn: missing subcommand", file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        choices = ", ".join(sorted(SUBCOMMANDS))
        print(
            f"streamlearn: unknown subcommand {name!r}; choose from: {choices}",
            file=sys.stderr,
        )
        return 2
    try:
        return _resolve(SUBCOMMANDS[name][0])(rest)
    except KeyboardInterrupt:
        # Commands that stop cleanly on Ctrl-C handle it themselves. This
        # covers the rest, and a Ctrl-C during start-up.
        print(f"streamlearn {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
