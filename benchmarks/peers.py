"""Side-by-side benchmark: streamlearn's learner against River, Vowpal Wabbit,
a most-frequent-classes baseline and a no-change baseline (the previous
event's label), test-then-train on real event streams.

Every learner reads the same decoded events (``online_model.datasets``), in
the same order, and scores each event before it learns from it. Each learner
runs in its own subprocess so that peak memory is its own. The results go to
``peers.md`` (one table per stream, full stream and a common prefix),
``peers.csv`` and ``peers.json`` in ``--out``.

Examples: the full run (about 20 minutes in a trial on 2 shared cores), then
a quick look at two streams, cut to 5,000 events with a 2,048-event prefix::

    .venv/bin/python benchmarks/peers.py --profile
    .venv/bin/python benchmarks/peers.py --streams job_postings,electricity \\
        --limit 5000 --prefix 2048 --out /tmp/peers
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peer_report import OURS, write_reports
from peer_worker import run_worker

logger = logging.getLogger("peers")

STREAMS = ("job_postings", "so_survey_2016", "aijobs_salaries", "electricity")
PEERS = (
    "streamlearn",
    "vw-cli",
    "vw-cli-q",
    "vw-py",
    "vw-py-q",
    "river-softmax",
    "river-ovr-logreg",
    "river-nb",
    "river-hat",
    "river-arf",
    "most-frequent",
    "no-change",
)
# 40 micro-batches of 256. Every learner is compared on this prefix. A
# learner whose rate over the prefix projects the whole stream past
# --time-limit-s stops there and is reported on the prefix only. On a 2-core
# machine shared with other work (1-minute load 4-7), River's HAT and ARF ran
# 100-1,200 examples/s over this prefix, up to about 100 s each, and the
# default run of all streams and learners took about 20 minutes.
DEFAULT_PREFIX = 10_240
DEFAULT_TIME_LIMIT_S = 60.0
# Learners that run whole streams whatever the time limit: streamlearn, the
# speed reference (VW) and River's softmax regression, the closest peer to
# streamlearn's model, so that the whole-stream tables always contain them.
WHOLE_STREAM_PEERS = (
    "streamlearn",
    "vw-cli",
    "vw-cli-q",
    "vw-py",
    "vw-py-q",
    "river-softmax",
    "most-frequent",
    "no-change",
)
RESULTS_DIR = Path(__file__).parent / "results"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--streams",
        default=",".join(STREAMS),
        help=f"comma-separated streams to run (default: all of {', '.join(STREAMS)})",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated learners to run (default: all of {', '.join(PEERS)})",
    )
    parser.add_argument(
        "--prefix",
        type=int,
        default=DEFAULT_PREFIX,
        help="events in the common prefix every learner is compared on "
        f"(default: {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="stop every stream after this many events (default: whole streams)",
    )
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        help="seconds a learner may spend on a whole stream, projected from its "
        "rate over the prefix; a learner over it stops at the prefix and is "
        f"reported there only (default: {DEFAULT_TIME_LIMIT_S:g})",
    )
    parser.add_argument(
        "--whole-stream-peers",
        default=",".join(WHOLE_STREAM_PEERS),
        help="comma-separated learners exempt from --time-limit-s (default: "
        f"{','.join(WHOLE_STREAM_PEERS)}); pass '' to exempt none",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=256,
        help="events per micro-batch for streamlearn's learner (default: 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run streamlearn once more per stream under cProfile and save "
        "where its time goes to peers-profile-STREAM.txt in --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help=f"folder for peers.md, peers.csv and peers.json (default: {RESULTS_DIR})",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="rebuild peers.md and peers.csv in --out from a saved peers.json "
        "instead of running anything",
    )
    parser.add_argument(
        "--merge-into",
        type=Path,
        help="run only --peers on --streams, replace their results in this saved "
        "peers.json and rebuild the tables in --out, e.g. to rerun streamlearn "
        "after a change without rerunning every peer",
    )
    parser.add_argument(
        "--note",
        default="",
        help="a paragraph to add to peers.md, such as where the run deviated",
    )
    # The orchestrator starts itself with --worker for each (stream, learner).
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    arguments.stream_list = _checked_names(arguments.streams, STREAMS, "--streams")
    arguments.peer_list = _checked_names(arguments.peers, PEERS, "--peers")
    arguments.whole_stream_list = (
        _checked_names(arguments.whole_stream_peers, PEERS, "--whole-stream-peers")
        if arguments.whole_stream_peers.strip()
        else []
    )
    if arguments.prefix < 1:
        parser.error(f"--prefix must be at least 1, got {arguments.prefix}")
    if arguments.limit is not None and arguments.limit < 1:
        parser.error(f"--limit must be at least 1, got {arguments.limit}")
    if arguments.micro_batch < 1:
        parser.error(f"--micro-batch must be at least 1, got {arguments.micro_batch}")
    return arguments


def _checked_names(text: str, known: tuple[str, ...], option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SystemExit(
            f"peers.py: invalid {option} {text!r}: unknown {unknown}. "
            f"Choose from {', '.join(known)}"
        )
    return names


def _worker_command(
    arguments: argparse.Namespace, stream: str, peer: str, result_path: Path
) -> list[str]:
    time_limit_s = arguments.time_limit_s
    if peer in arguments.whole_stream_list:
        time_limit_s = math.inf
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(result_path),
        "--stream",
        stream,
        "--peer",
        peer,
        "--prefix",
        str(arguments.prefix),
        "--time-limit-s",
        str(time_limit_s),
        "--micro-batch",
        str(arguments.micro_batch),
        "--seed",
        str(arguments.seed),
    ]
    if arguments.limit is not None:
        command += ["--limit", str(arguments.limit)]
    return command


def run_all(arguments: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every (stream, learner) pair in its own subprocess, one at a time."""
    results = []
    pairs = [(s, p) for s in arguments.stream_list for p in arguments.peer_list]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peers-") as scratch:
        for index, (stream, peer) in enumerate(pairs, start=1):
            result_path = Path(scratch) / f"{stream}-{peer}.json"
            command = _worker_command(arguments, stream, peer, result_path)
            logger.info("[%d/%d] %s %s: started", index, len(pairs), stream, peer)
            pair_started = time.perf_counter()
            completed = subprocess.run(command, check=False)
            seconds = time.perf_counter() - pair_started
            if completed.returncode != 0 or not result_path.is_file():
                logger.error(
                    "[%d/%d] %s %s: failed with exit code %d after %.0f s",
                    index,
                    len(pairs),
                    stream,
                    peer,
                    completed.returncode,
                    seconds,
                )
                results.append(
                    {"stream": stream, "peer": peer, "error": completed.returncode}
                )
                continue
            result = json.loads(result_path.read_text(encoding="utf-8"))
            results.append(result)
            logger.info(
                "[%d/%d] %s %s: %d events in %.0f s (%.0f s since start)",
                index,
                len(pairs),
                stream,
                peer,
                result["events_run"],
                seconds,
                time.perf_counter() - started,
            )
    return results


def profile_streamlearn(arguments: argparse.Namespace) -> list[Path]:
    """Run streamlearn under cProfile on each stream; return the profile files.

    These runs are extra and slower than the measured ones, so no table
    number comes from them.
    """
    paths = []
    arguments.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peers-profile-") as scratch:
        for stream in arguments.stream_list:
            profile_path = arguments.out / f"peers-profile-{stream}.txt"
            result_path = Path(scratch) / f"{stream}.json"
            command = _worker_command(arguments, stream, OURS, result_path)
            command += ["--profile-out", str(profile_path)]
            logger.info("profiling streamlearn on %s", stream)
            completed = subprocess.run(command, check=False)
            if completed.returncode != 0:
                logger.error(
                    "profiling streamlearn on %s failed with exit code %d",
                    stream,
                    completed.returncode,
                )
                continue
            paths.append(profile_path)
    return paths


def describe_machine() -> dict[str, Any]:
    """Return the facts about this machine and its software that the numbers need."""
    from importlib.metadata import version

    packages = ("river", "vowpalwabbit", "torch", "numpy")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {name: version(name) for name in packages},
    }


def rebuild_reports(arguments: argparse.Namespace) -> int:
    """Write the tables again from a saved peers.json, with --note if given."""
    saved = json.loads(arguments.from_json.read_text(encoding="utf-8"))
    settings = saved["settings"]
    if arguments.note:
        settings["note"] = arguments.note
    paths = write_reports(saved["results"], settings, arguments.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    return 0


def load_mergeable(arguments: argparse.Namespace) -> dict[str, Any]:
    """Load the saved run of --merge-into and check that its settings match."""
    saved: dict[str, Any] = json.loads(arguments.merge_into.read_text(encoding="utf-8"))
    settings = saved["settings"]
    for name in ("prefix", "limit", "micro_batch", "seed"):
        if settings[name] != getattr(arguments, name):
            raise SystemExit(
                f"peers.py: invalid --{name.replace('_', '-')} "
                f"{getattr(arguments, name)!r} for --merge-into: the saved run "
                f"used {settings[name]!r}, and merged results must match it"
            )
    return saved


def merge_results(
    arguments: argparse.Namespace, results: list[dict[str, Any]], command: str
) -> int:
    """Replace the saved results of the (stream, learner) pairs just run."""
    saved = load_mergeable(arguments)
    settings = saved["settings"]
    fresh = {(r["stream"], r["peer"]): r for r in results}
    merged = [fresh.pop((r["stream"], r["peer"]), r) for r in saved["results"]]
    merged += fresh.values()
    settings.setdefault("merged", []).append(
        {
            "command": command,
            "pairs": [f"{r['stream']} {r['peer']}" for r in results],
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        }
    )
    if arguments.note:
        settings["note"] = arguments.note
    paths = write_reports(merged, settings, arguments.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    return 1 if any("error" in r for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%X"
    )
    arguments = parse_arguments(argv)
    if arguments.worker is not None:
        return run_worker(arguments)
    if arguments.from_json is not None:
        return rebuild_reports(arguments)

    command = " ".join(
        shlex.quote(part) for part in [".venv/bin/python", "benchmarks/peers.py"]
    )
    if argv is None:
        argv = sys.argv[1:]
    command += "".join(" " + shlex.quote(part) for part in argv)
    if arguments.merge_into is not None:
        load_mergeable(arguments)
    started = time.time()
    results = run_all(arguments)
    if arguments.profile and OURS in arguments.peer_list:
        profile_streamlearn(arguments)
    if arguments.merge_into is not None:
        return merge_results(arguments, results, command)
    settings = {
        "command": command,
        "streams": arguments.stream_list,
        "peers": arguments.peer_list,
        "prefix": arguments.prefix,
        "limit": arguments.limit,
        "time_limit_s": arguments.time_limit_s,
        "whole_stream_peers": arguments.whole_stream_list,
        "micro_batch": arguments.micro_batch,
        "seed": arguments.seed,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": describe_machine(),
        "note": arguments.note,
    }
    paths = write_reports(results, settings, arguments.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
