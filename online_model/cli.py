"""The ``streamlearn learn`` and ``streamlearn convert`` subcommands."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from online_model.arguments import device_argument, non_negative_int, positive_int
from online_model.evaluation import EvaluationConfig, MetricsAccumulator

logger = logging.getLogger(__name__)

DATASET_NAMES = ("job_postings", "so_survey_2016", "aijobs_salaries", "electricity")

CONVERT_EXAMPLE = """example:
  streamlearn convert --dataset job_postings --out runs/job_postings.avro
  streamlearn convert --dataset electricity --out elec.avro --limit 1000
"""

LEARN_EXAMPLE = """example:
  streamlearn learn                                  # the job-postings stream
  streamlearn learn --dataset electricity --limit 10000 --format json
  streamlearn learn --dataset job_postings --events runs/job_postings.avro
"""


def convert_main(argv: list[str]) -> int:
    """Convert a real data set to an Avro event file; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="streamlearn convert",
        description="Convert a real CSV/ARFF data set to an Avro object container "
        "file of events, in stream order. Rows that cannot be converted are "
        "counted by reason and reported.",
        epilog=CONVERT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset", required=True, choices=DATASET_NAMES, help="data set to convert"
    )
    parser.add_argument("--out", required=True, help="Avro file to write")
    parser.add_argument(
        "--source", help="source file (default: the data folder's copy)"
    )
    parser.add_argument(
        "--limit", type=non_negative_int, help="write at most this many events"
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="report format"
    )
    args = parser.parse_args(argv)
    _configure_logging()

    from online_model.datasets import convert

    progress_shown = False

    def progress(written: int) -> None:
        nonlocal progress_shown
        progress_shown = True
        print(f"\r  {written} events written", end="", file=sys.stderr, flush=True)

    try:
        report = convert(args.dataset, args.out, args.source, args.limit, progress)
    except (OSError, ValueError, csv.Error) as error:
        if progress_shown:
            print(file=sys.stderr)
        print(f"streamlearn convert: {error}", file=sys.stderr)
        return 1
    if progress_shown:
        # End the progress line, which each update rewrites in place.
        print(file=sys.stderr)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.summary())
    return 0


def learn_main(argv: list[str]) -> int:
    """Run the learner test-then-train over a real stream; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="streamlearn learn",
        description="Stream a real data set through the online learner, "
        "test-then-train in micro-batches, and print what it learned: "
        "prequential top-1 accuracy, top-5 hit rate, log loss, examples/s, "
        "the labels and a few example predictions.",
        epilog=LEARN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        default="job_postings",
        choices=DATASET_NAMES,
        help="data set, and so feature spec, to learn (default: job_postings)",
    )
    parser.add_argument(
        "--events",
        help="Avro event file to read instead of converting the data set "
        "(written by 'streamlearn convert')",
    )
    parser.add_argument(
        "--limit", type=non_negative_int, help="stop after this many events"
    )
    parser.add_argument(
        "--micro-batch",
        type=positive_int,
        default=256,
        help="events per micro-batch (default 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--device",
        type=device_argument,
        help="cpu, cuda or cuda:N (default: cuda when present)",
    )
    parser.add_argument("--save", help="folder to save the learner's state into")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="progress and report as text lines or as JSON lines (default text)",
    )
    args = parser.parse_args(argv)
    if args.save and Path(args.save).exists() and not Path(args.save).is_dir():
        parser.error(f"--save {args.save!r} is an existing file; pass a folder")
    _configure_logging()

    from online_model.datasets import ConversionReport, iter_events
    from online_model.event_files import InputFileError
    from online_model.learner import OnlineLearner
    from online_model.spec import load_spec

    spec = load_spec(args.dataset)
    report = ConversionReport(args.dataset)
    if args.events:
        report.source = args.events
        try:
            events = _read_event_file(
                args.events, args.dataset, dict(spec.schema), args.limit
            )
        except InputFileError as error:
            print(f"streamlearn learn: {error}", file=sys.stderr)
            return 2
    else:
        try:
            source = iter_events(args.dataset, report=report)
            events = list(itertools.islice(source, args.limit))
        except (OSError, ValueError) as error:
            print(f"streamlearn learn: {error}", file=sys.stderr)
            return 1
    learner = OnlineLearner(spec, seed=args.seed, device=args.device)
    summary = _run(learner, events, args.micro_batch, quiet=args.format == "json")
    if args.events:
        report.events = report.rows_read = len(events)
    summary["conversion"] = report.to_dict()
    if args.save:
        try:
            learner.save(args.save)
        except OSError as error:
            print(
                f"streamlearn learn: cannot save the learner: {error}", file=sys.stderr
            )
            return 1
        summary["saved_to"] = args.save
    if args.format == "json":
        print(json.dumps(summary, indent=1))
    else:
        _print_summary(summary, report.summary())
    return 0


def _read_event_file(
    name: str, dataset: str, schema: dict[str, Any], limit: int | None
) -> list[dict[str, Any]]:
    """Return the first ``limit`` events of an Avro event file.

    Raises InputFileError, with the file's name, when the file is missing,
    not an Avro file, lacks a field of ``schema`` or is corrupt. ``dataset``
    fills in the convert command that the error for a CSV file suggests.
    """
    from online_model.event_files import (
        AVRO_SUFFIX,
        InputFileError,
        check_input_files,
        read_sources,
    )

    if Path(name).is_file() and not name.endswith(AVRO_SUFFIX):
        raise InputFileError(
            f"--events file {name!r} is not an Avro file; convert it first with "
            f"'streamlearn convert --dataset {dataset} --source {name} "
            "--out events.avro'"
        )
    check_input_files([name], None, schema)
    events = read_sources([name], None, schema=schema)
    return list(itertools.islice(events, limit))


def _run(
    learner: Any, events: list[dict[str, Any]], micro_batch: int, quiet: bool
) -> dict[str, Any]:
    metrics = MetricsAccumulator(EvaluationConfig(top_k=5))
    invalid: dict[str, int] = {}
    started = time.perf_counter()
    last_progress = started
    for start in range(0, len(events), micro_batch):
        report = learner.learn(events[start : start + micro_batch])
        metrics.update(report.scored)
        for reason, count in report.invalid.items():
            invalid[reason] = invalid.get(reason, 0) + count
        now = time.perf_counter()
        if not quiet and (
            now - last_progress > 1.0 or start + micro_batch >= len(events)
        ):
            last_progress = now
            done = min(start + micro_batch, len(events))
            so_far = metrics.result()
            print(
                f"\r  {done}/{len(events)} events, top-1 "
                f"{so_far.top1_accuracy:.3f}, top-5 {so_far.top_k_hit_rate:.3f}",
                end="",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started
    result = metrics.result()
    if not quiet:
        print(file=sys.stderr)
    examples = []
    for event, ranked in zip(
        events[-3:], learner.predict(events[-3:], k=3), strict=True
    ):
        examples.append(
            {
                "event_id": event[learner.spec.event_id_field],
                "true_label": event[learner.spec.label_field],
                "top3": [[label, round(p, 3)] for label, p in ranked],
            }
        )
    return {
        "dataset": learner.spec.name,
        "device": str(learner.device),
        "events": len(events),
        "scored": result.n_events,
        # None, not NaN, when nothing was scored, so that the JSON stays valid.
        "top1": result.top1_accuracy if result.n_events else None,
        "top5": result.top_k_hit_rate if result.n_events else None,
        "log_loss": result.log_loss if result.n_events else None,
        "examples_per_s": len(events) / elapsed,
        "seconds": elapsed,
        "invalid": invalid,
        "refused_updates": learner.updates_refused,
        "labels": learner.labels,
        "examples": examples,
    }


def _print_summary(summary: dict[str, Any], conversion: str) -> None:
    print(conversion)
    print(
        f"learned {summary['scored']} events of {summary['dataset']} on "
        f"{summary['device']} in {summary['seconds']:.1f} s "
        f"({summary['examples_per_s']:.0f} examples/s, featurization included)"
    )
    if summary["scored"]:
        print(
            f"prequential top-1 {summary['top1']:.3f}, top-5 hit "
            f"{summary['top5']:.3f}, log loss {summary['log_loss']:.3f}"
        )
    else:
        print("prequential metrics: none, because no labelled event was scored")
    if summary["invalid"] or summary["refused_updates"]:
        print(
            f"rejected events by reason: {summary['invalid']}; rejected updates: "
            f"{summary['refused_updates']}"
        )
    if not summary["scored"]:
        return
    labels = summary["labels"]
    shown = ", ".join(labels[:12]) + (
        f", ... ({len(labels)} in all)" if len(labels) > 12 else ""
    )
    print(f"labels: {shown}")
    print("example predictions (last events of the stream):")
    for example in summary["examples"]:
        top = ", ".join(f"{label} {p:.2f}" for label, p in example["top3"])
        print(
            f"  {example['event_id']}: true {example['true_label']!r}; predicted {top}"
        )


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
