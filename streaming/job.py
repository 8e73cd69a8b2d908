"""``streamlearn run``: the streaming job on the DirectRunner, with progress.

The command creates the job's topics on the Pub/Sub emulator, starts a
ticker thread, runs the pipeline in this process and prints one progress
line every few seconds. It stops by itself once ``--stop-after`` events and
dead letters are accounted for (or after ``--idle-timeout-s`` without new
input), closes the last micro-batch, runs a last gate, writes a checkpoint
and prints the account.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from online_model.arguments import (
    device_argument,
    non_negative_int,
    non_negative_seconds,
    positive_seconds,
)
from streaming.decisions import account_decisions, describe_decision
from streaming.job_config import JobConfig, add_decode_limit_options, decode_limits_from
from streaming.job_metrics import version_text
from streaming.topics import (
    DEFAULT_PROJECT,
    JobTopics,
    allow_large_emulator_messages,
    check_job_name,
    ensure_topics,
    require_emulator,
)

logger = logging.getLogger(__name__)

EXAMPLE = """example:
  eval "$(scripts/emulator)"
  streamlearn publish --job-name j1 --dataset job_postings --limit 5000
  streamlearn run --job-name j1 --registry runs/j1/registry \\
      --run-dir runs/j1 --stop-after 5000
"""


class _HelpFormatter(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """Keep the example's line breaks and show every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


# The options' defaults are JobConfig's, so the two cannot drift apart.
_DEFAULTS = JobConfig()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="streamlearn run",
        description="Run the streaming job on the DirectRunner against the "
        "Pub/Sub emulator.",
        epilog=EXAMPLE,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--job-name",
        default="streamlearn",
        help="prefix of the job's topics and subscriptions (JOB-events, ...)",
    )
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="Pub/Sub project")
    parser.add_argument("--spec", default="job_postings", help="feature spec name")
    parser.add_argument(
        "--registry", required=True, help="model registry: a folder or gs:// URL"
    )
    parser.add_argument(
        "--run-dir",
        required=True,
        help="folder for checkpoints, decisions, metrics and the report",
    )
    parser.add_argument(
        "--checkpoint-location",
        metavar="LOCATION",
        type=_checkpoint_location,
        help="where checkpoints are written: a local folder, or gs://BUCKET/PREFIX "
        "in an existing bucket, such as gs://my-bucket/checkpoints/j1 "
        "(default: RUN_DIR/checkpoints)",
    )
    parser.add_argument(
        "--schema-folder",
        help="folder of *.avsc writer schemas accepted besides the reader schema",
    )
    add_decode_limit_options(parser)
    parser.add_argument(
        "--device",
        type=device_argument,
        default="cpu",
        help="torch device of the learner: cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--stop-after",
        type=non_negative_int,
        default=0,
        help="stop once this many events and dead letters are accounted for, "
        "counting those of a restored checkpoint (0: run until interrupted)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=non_negative_seconds,
        default=0.0,
        help="stop after this many seconds without new input (0: never)",
    )
    parser.add_argument(
        "--progress-interval-s",
        type=positive_seconds,
        default=2.0,
        help="seconds between progress lines",
    )
    parser.add_argument(
        "--tick-interval-s",
        type=positive_seconds,
        default=0.5,
        help="seconds between the tick messages that close a waiting "
        "micro-batch and run due gates and checkpoints",
    )
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        default=_DEFAULTS.micro_batch_size,
        help="events per micro-batch (a micro-batch closes when it has this many)",
    )
    parser.add_argument(
        "--micro-batch-max-wait-s",
        type=float,
        default=_DEFAULTS.micro_batch_max_wait_s,
        help="seconds after which a partial micro-batch is learned",
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=_DEFAULTS.holdout_fraction,
        help="share of labelled events held out for validation, in (0, 1), "
        "chosen by a hash of the event id",
    )
    parser.add_argument(
        "--holdout-window-size",
        type=int,
        default=_DEFAULTS.holdout_window_size,
        help="number of most recent holdout events the gate validates on",
    )
    parser.add_argument(
        "--holdout-min-events",
        type=int,
        default=_DEFAULTS.holdout_min_events,
        help="number of holdout events needed before the first gate",
    )
    parser.add_argument(
        "--gate-every-micro-batches",
        type=int,
        default=_DEFAULTS.gate_every_micro_batches,
        help="micro-batches between gates (or --gate-every-s, whichever first)",
    )
    parser.add_argument(
        "--gate-metric",
        choices=("log_loss", "top1", "top5", "macro_f1"),
        default=_DEFAULTS.gate_metric,
        help="holdout metric the gate compares",
    )
    parser.add_argument(
        "--gate-tolerance",
        type=float,
        default=_DEFAULTS.gate_tolerance,
        help="how much worse than the serving version a candidate may be, in "
        "the metric's unit (nats for log_loss, a fraction for the others)",
    )
    parser.add_argument(
        "--gate-every-s",
        type=float,
        default=_DEFAULTS.gate_every_s,
        help="seconds between gates, counted once an event was learned since "
        "the last gate (or --gate-every-micro-batches, whichever first)",
    )
    parser.add_argument(
        "--gate-min-interval-s",
        type=float,
        default=_DEFAULTS.gate_min_interval_s,
        help="minimum seconds between two gates, however fast micro-batches fill",
    )
    parser.add_argument(
        "--max-labels",
        type=int,
        default=_DEFAULTS.max_labels,
        help="maximum number of labels: those the model knows plus those of "
        "the events waiting to be learned or held out. A labelled event with "
        "one more label is dead-lettered as label-limit",
    )
    parser.add_argument(
        "--kswin-feature",
        action="append",
        default=[],
        metavar="FIELD",
        help="a numeric event field whose distribution KSWIN watches for drift; "
        "repeat it for more fields (default: none). Each field costs about "
        "0.02 ms per learned event at the default sampling, against the "
        "learner's 0.03 ms",
    )
    parser.add_argument(
        "--kswin-sample-every",
        type=int,
        default=_DEFAULTS.kswin_sample_every,
        help="feed KSWIN every N-th learned event's value of each field "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-every-s",
        type=float,
        default=_DEFAULTS.checkpoint_every_s,
        help="seconds between checkpoints; a crash loses at most this much learning",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="print progress and the account as text lines or as JSON lines",
    )
    return parser.parse_args(argv)


def _with_options(message: str) -> str:
    """Return ``message`` with JobConfig field names written as the run
    command's options, such as --micro-batch-size for micro_batch_size."""
    for name in fields(JobConfig):
        option = "--" + name.name.replace("_", "-")
        message = re.sub(rf"\b{name.name}\b", option, message)
    return message


def _checkpoint_location(text: str) -> str:
    from streaming.checkpoint import check_location

    try:
        location = check_location(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if location.startswith("gs://"):
        return location
    return str(Path(location).expanduser().resolve())


def _check_names(args: argparse.Namespace) -> None:
    """Raise ValueError for a job name, spec or schema folder that the job
    could not use, before anything starts."""
    check_job_name(args.job_name)
    from online_model.spec import NUMERIC_AVRO_TYPES, load_spec
    from streaming.schema_registry import SchemaRegistry

    spec = load_spec(args.spec)
    # The event time is a number in Avro but a datetime once decoded.
    numeric = sorted(
        f.name
        for f in spec.avro_fields.values()
        if f.base_type in NUMERIC_AVRO_TYPES
        and f.name not in (spec.event_time_field, spec.label_field)
    )
    for name in args.kswin_feature:
        if name not in numeric:
            raise ValueError(
                f"--kswin-feature {name!r} is not a numeric field of the "
                f"{spec.name} events; numeric fields: {', '.join(numeric) or 'none'}"
            )
    if args.schema_folder:
        SchemaRegistry.from_folder(args.schema_folder)


def main(argv: list[str], epilogue: Callable[[], None] | None = None) -> int:
    """Run the job until it stops; return the exit code.

    ``epilogue`` runs after the account and the report path are printed,
    just before the process exits.
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("apache_beam", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The runtime logs each gate decision with the candidate and the versions
    # involved; the gate's own INFO line would repeat it without them.
    logging.getLogger("online_model.gate").setLevel(logging.WARNING)
    features = args.kswin_feature
    repeated = sorted({name for name in features if features.count(name) > 1})
    if repeated:
        print(
            "streamlearn run: invalid setting: --kswin-feature names "
            f"{', '.join(repeated)} more than once",
            file=sys.stderr,
        )
        return 2
    try:
        config = JobConfig(
            micro_batch_size=args.micro_batch_size,
            micro_batch_max_wait_s=args.micro_batch_max_wait_s,
            holdout_fraction=args.holdout_fraction,
            holdout_window_size=args.holdout_window_size,
            holdout_min_events=args.holdout_min_events,
            gate_metric=args.gate_metric,
            gate_tolerance=args.gate_tolerance,
            gate_every_micro_batches=args.gate_every_micro_batches,
            gate_every_s=args.gate_every_s,
            gate_min_interval_s=args.gate_min_interval_s,
            checkpoint_every_s=args.checkpoint_every_s,
            max_labels=args.max_labels,
            kswin_features=tuple(args.kswin_feature),
            kswin_sample_every=args.kswin_sample_every,
            decode_limits=decode_limits_from(args),
        )
    except ValueError as error:
        print(
            f"streamlearn run: invalid setting: {_with_options(str(error))}",
            file=sys.stderr,
        )
        return 2
    try:
        _check_names(args)
    except ValueError as error:
        print(f"streamlearn run: invalid setting: {error}", file=sys.stderr)
        return 2
    try:
        require_emulator()
    except RuntimeError as error:
        print(f"streamlearn run: {error}", file=sys.stderr)
        return 2
    allow_large_emulator_messages()

    from streaming.pipeline import JobSettings

    run_dir = Path(args.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _lock_run_dir(run_dir)
    except RunDirInUse as error:
        print(f"streamlearn run: {error}", file=sys.stderr)
        return 2
    token = secrets.token_hex(8)
    settings = JobSettings(
        job_name=args.job_name,
        project=args.project,
        spec_name=args.spec,
        registry_url=args.registry,
        run_dir=str(run_dir),
        config=config,
        schema_folder=args.schema_folder,
        device=args.device,
        control_token=token,
        earlier_control_tokens=_record_control_token(run_dir, token),
        checkpoint_location=args.checkpoint_location or "",
    )
    ensure_topics(settings.topics)
    return run_job(settings, args, epilogue)


class RunDirInUse(RuntimeError):
    """Another process runs a job in this run folder."""


# Open lock files of this process's run folders, kept so the locks last until
# the process exits.
_RUN_DIR_LOCKS: list[Any] = []
RUN_DIR_LOCK = ".run.lock"


def _lock_run_dir(run_dir: Path) -> None:
    """Take the run folder's lock for the rest of this process, or raise
    RunDirInUse naming the process that holds it.

    Two runs in one folder would overwrite each other's checkpoints, account
    and decisions, and both publish to the registry.
    """
    import fcntl

    stream = open(run_dir / RUN_DIR_LOCK, "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        holder = stream.read().strip() or "unknown"
        stream.close()
        raise RunDirInUse(
            f"another run uses the run folder {run_dir} (process {holder}); "
            "stop it first, or give this run its own --run-dir"
        ) from None
    stream.truncate(0)
    stream.write(str(os.getpid()))
    stream.flush()
    _RUN_DIR_LOCKS.append(stream)


# Earlier runs' control tokens kept in the run folder: their ticks may still
# be on the topic when a run restarts.
CONTROL_TOKENS_FILE = "control-tokens.txt"
KEPT_CONTROL_TOKENS = 20


def _record_control_token(run_dir: Path, token: str) -> tuple[str, ...]:
    """Append this run's control token to the run folder's list, and return
    the tokens of the earlier runs in that folder (the latest few)."""
    path = run_dir / CONTROL_TOKENS_FILE
    try:
        earlier = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        earlier = []
    earlier = earlier[-KEPT_CONTROL_TOKENS:]
    path.write_text("\n".join([*earlier, token]) + "\n", encoding="utf-8")
    return tuple(earlier)


def run_job(
    settings: Any,
    args: argparse.Namespace,
    epilogue: Callable[[], None] | None = None,
) -> int:
    """Start the pipeline and the helper threads; block until the stop condition."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from online_model.learner import LearnerStateError
    from streaming.pipeline import build_pipeline, runtime_slot

    # Build the runtime before the pipeline starts, so that the restore of a
    # checkpoint and its log lines come first.
    from streaming.runtime import ForeignLearner

    try:
        slot = runtime_slot(settings)
    except ForeignLearner as error:
        print(f"streamlearn run: {error}", file=sys.stderr)
        return 2
    except LearnerStateError as error:
        location = settings.checkpoint_location or str(
            Path(settings.run_dir) / "checkpoints"
        )
        where = "--checkpoint-location" if settings.checkpoint_location else "--run-dir"
        print(
            f"streamlearn run: cannot restore the newest checkpoint in {location}: "
            f"{error}. Give this job its own {where}",
            file=sys.stderr,
        )
        return 2
    # A restored checkpoint's counts are not this run's work.
    restored_read = slot.runtime.account.events_read
    stop = threading.Event()
    ticker = threading.Thread(
        target=_tick,
        args=(settings.topics, settings.control_token, args.tick_interval_s, stop),
        name="ticker",
    )
    ticker.daemon = True
    ticker.start()
    relay = _relay_pointer_changes(settings.topics, settings.control_token)

    options = PipelineOptions(
        flags=[], streaming=True, runner="DirectRunner", project=settings.project
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, settings)
    result = pipeline.run()
    started = time.monotonic()
    _print(args, {"event": "started", "job": settings.job_name})

    interrupted = _stop_on_signals()
    # The progress line's rate counts from the previous line, and so leaves
    # out a restored checkpoint's counts.
    last_progress = (started, slot.runtime.account.learned)
    last_seen = (-1, time.monotonic())
    reading = _ReadingRate(restored=restored_read)
    next_progress = started + args.progress_interval_s
    while True:
        # Short polls, so that the stop and the reading rate are timed to
        # within POLL_S; progress lines keep their own interval.
        time.sleep(min(POLL_S, args.progress_interval_s))
        now = time.monotonic()
        account = slot.runtime.account
        reading.observe(now, account.events_read)
        if now >= next_progress:
            rate = _learned_rate(last_progress, now, account.learned)
            _print_progress(args, slot.runtime, now - started, rate)
            last_progress = (now, account.learned)
            next_progress += args.progress_interval_s
        handled = account.events_read + sum(account.dead_lettered.values())
        if handled != last_seen[0] or slot.runtime.ticks_handled == 0:
            # Idle time counts only once the pipeline delivers ticks: on a
            # loaded machine the DirectRunner can take longer than the idle
            # timeout to start reading.
            last_seen = (handled, now)
        if args.stop_after and handled >= args.stop_after:
            rate = _learned_rate(last_progress, now, account.learned)
            _print_progress(args, slot.runtime, now - started, rate)
            break
        if interrupted.is_set():
            logger.warning("interrupted: stopping after the last micro-batch")
            break
        idle_s = time.monotonic() - last_seen[1]
        if args.idle_timeout_s and idle_s >= args.idle_timeout_s:
            logger.warning("no new input for %.0f s: stopping", idle_s)
            break

    with slot.lock:
        slot.runtime.finish()
        from streaming.pipeline import write_account

        write_account(settings, slot.runtime, force=True)
    elapsed_s = time.monotonic() - started
    _print_summary(args, settings, slot.runtime, elapsed_s, reading.rate(elapsed_s))
    report = _write_report(settings)
    if report is not None and args.format == "json":
        _print(args, {"event": "report", "path": str(report)})
    elif report is not None:
        print(f"report: {report}", flush=True)
    relay.cancel()
    # The DirectRunner's streaming executor has no clean shutdown: cancel()
    # leaves its threads running, so the process ends below. Before that,
    # cancel() waits for the running task, and with no input that task is a
    # Pub/Sub pull with a 30 s timeout (apache-beam 2.77, DirectRunner). The
    # ticker keeps publishing until then, so the pull returns within a tick.
    if args.format == "json":
        _print(args, {"event": "stopping"})
    else:
        print("stopping the DirectRunner", flush=True)
    result.cancel()
    stop.set()
    if epilogue is not None:
        try:
            epilogue()
        except Exception:  # the process must still exit below
            logger.exception("the run's closing step failed")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _write_report(settings: Any) -> Path | None:
    from streaming import monitoring as mon

    mon.close_shared_telemetry()
    try:
        from streaming.report import write_report

        return write_report(Path(settings.run_dir), None, 10)
    except (OSError, ValueError) as error:
        logger.error("could not write the run report: %s", error)
        return None


def _tick(
    topics: JobTopics, token: str, interval_s: float, stop: threading.Event
) -> None:
    from google.cloud.pubsub_v1 import PublisherClient

    from streaming.pipeline import (
        CONTROL_ATTRIBUTE,
        CONTROL_TICK,
        CONTROL_TOKEN_ATTRIBUTE,
    )

    publisher = PublisherClient()
    attributes = {CONTROL_ATTRIBUTE: CONTROL_TICK, CONTROL_TOKEN_ATTRIBUTE: token}
    failures = 0
    while not stop.wait(interval_s):
        try:
            publisher.publish(topics.events_topic, b"", **attributes).result(timeout=10)
        except Exception as error:  # the job goes on; micro-batches close later
            failures += 1
            if failures in (1, 10, 100):
                logger.warning("tick publish failed (%d so far): %s", failures, error)


def _relay_pointer_changes(topics: JobTopics, token: str) -> Any:
    """Forward each model-versions message as a control message on the events
    topic, so that the pipeline's only source carries it; return the future.

    The control message keeps the attributes and drops the data: the job
    reads the new pointer from the registry itself.
    """
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

    from streaming.pipeline import (
        CONTROL_ATTRIBUTE,
        CONTROL_POINTER,
        CONTROL_TOKEN_ATTRIBUTE,
    )

    publisher = PublisherClient()
    subscriber = SubscriberClient()

    def forward(message: Any) -> None:
        attributes = {
            **dict(message.attributes),
            CONTROL_ATTRIBUTE: CONTROL_POINTER,
            CONTROL_TOKEN_ATTRIBUTE: token,
        }
        publisher.publish(topics.events_topic, b"", **attributes).result(timeout=10)
        message.ack()
        logger.debug("relayed pointer change %s", attributes.get("seq", "?"))

    return subscriber.subscribe(topics.model_versions_subscription, forward)


def _print(args: argparse.Namespace, record: dict[str, Any]) -> None:
    if args.format == "json":
        print(json.dumps(record), flush=True)


# Seconds between polls of the account while the job runs.
POLL_S = 0.05


def _learned_rate(since: tuple[float, int], now: float, learned: int) -> float:
    """Return events learned per second from ``since`` (time, count) to now."""
    seconds = now - since[0]
    return (learned - since[1]) / seconds if seconds > 0 else 0.0


def _print_progress(
    args: argparse.Namespace, runtime: Any, elapsed_s: float, rate: float
) -> None:
    """Print one progress line; ``rate`` is the events learned per second
    since the previous line."""
    account = runtime.account
    if args.format == "json":
        _print(args, {"event": "progress", "elapsed_s": elapsed_s, **account.to_dict()})
        return
    # Shown once there are any, because the limit is rarely reached.
    over_limit = (
        f" | over label limit {account.over_label_limit}"
        if account.over_label_limit
        else ""
    )
    print(
        f"[{elapsed_s:6.1f} s] read {account.events_read} | learned "
        f"{account.learned} | held out {account.held_out} | predictions "
        f"{account.predictions} | dead letters {sum(account.dead_lettered.values())}"
        f"{over_limit} | duplicates {account.duplicates} | serving "
        f"{version_text(runtime.serving_version)} | {rate:.0f} learned/s",
        flush=True,
    )


def _stop_on_signals() -> threading.Event:
    """Make SIGINT and SIGTERM request a clean stop; return the request.

    The job then learns its open micro-batch, runs a last gate, saves a
    checkpoint and prints its account. A second signal stops at once.
    """
    requested = threading.Event()

    def request(number: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, request)
        signal.signal(signal.SIGTERM, request)
    return requested


# A stretch this long without new events counts as idle in the reading rate.
READING_IDLE_S = 2.0


class _ReadingRate:
    """Events per second while events flowed.

    The rate counts from the first poll that saw this run read an event.
    Events are counted a message at a time, so the time between two polls
    that saw the count grow counts in full, unless it is longer than
    ``READING_IDLE_S``: then only the poll interval before the growth counts.
    That leaves out the runner's start-up, idle stretches between bursts, the
    wait for the stop and the events a restored checkpoint counted before
    this run.
    """

    def __init__(self, restored: int | None = None) -> None:
        # The count before this run: the restored checkpoint's, or else the
        # first poll's.
        self._start: int | None = restored
        self._previous: tuple[float, int] | None = None
        self._last_growth: float | None = None
        self._busy_s = 0.0
        self._busy_events = 0

    def observe(self, now: float, events_read: int) -> None:
        """Record the count of events read at one poll."""
        if self._start is None:
            self._start = events_read
        previous = self._previous
        self._previous = (now, events_read)
        if previous is None or events_read <= previous[1]:
            return
        if self._last_growth is None:
            # The first poll that saw events read: the rate counts from here.
            self._last_growth = now
            return
        since_growth = now - self._last_growth
        if since_growth > READING_IDLE_S:
            since_growth = now - previous[0]
        self._busy_s += since_growth
        self._busy_events += events_read - previous[1]
        self._last_growth = now

    def rate(self, elapsed_s: float) -> float:
        """Return the rate; over ``elapsed_s`` when fewer than two polls saw
        the count grow, 0 when this run read nothing."""
        if self._previous is None:
            return 0.0
        if self._busy_s <= 0:
            read = self._previous[1] - (self._start or 0)
            return read / elapsed_s if elapsed_s > 0 else 0.0
        return self._busy_events / self._busy_s


def _print_summary(
    args: argparse.Namespace,
    settings: Any,
    runtime: Any,
    elapsed_s: float,
    reading_rate: float,
) -> None:
    account = runtime.account
    decisions = account_decisions(Path(settings.run_dir) / "decisions.jsonl")
    summary = {
        "event": "finished",
        "elapsed_s": round(elapsed_s, 1),
        "events_per_s": round(reading_rate, 1),
        "serving_version": runtime.serving_version,
        "registry": settings.registry_url,
        "run_dir": settings.run_dir,
        **account.to_dict(),
        "decisions": decisions,
    }
    (Path(settings.run_dir) / "summary.json").write_text(
        json.dumps(summary, indent=1, default=str), encoding="utf-8"
    )
    if args.format == "json":
        _print(args, summary)
        return
    print(render_summary(summary), flush=True)


def render_summary(summary: dict[str, Any]) -> str:
    """Return the account of a finished run as text."""
    dead = summary["dead_lettered"]
    lines = [
        "",
        f"account after {summary['elapsed_s']} s:",
        f"  events read          {summary['events_read']} (learned + held out + "
        "predictions + duplicates + pending + refused + over the label limit)",
        f"    learned              {summary['learned']}",
        f"    held out             {summary['held_out']}",
        f"    predictions answered {summary['predictions']}",
        f"    duplicates           {summary['duplicates']}",
        f"    pending              {summary.get('pending', 0)}",
        f"    refused (non-finite) {summary.get('refused_non_finite', 0)}",
        f"    over the label limit {summary.get('over_label_limit', 0)} "
        "(dead-lettered as label-limit)",
        f"  dead letters         {sum(dead.values())} {_by_reason(dead)}(bad "
        "messages and invalid events, not counted as read)",
        f"  messages read        {summary.get('messages_read', 0)}",
        *_failures(summary),
        f"  control messages     {summary.get('control_messages', 0)}",
        f"  events per second    {_rate_text(summary['events_per_s'])}",
        f"  serving version      {version_text(summary['serving_version'])}",
        f"  registry             {summary.get('registry', '?')}",
        "decisions:",
    ]
    for record in summary["decisions"]:
        lines.append("  " + describe_decision(record))
    return "\n".join(lines)


def _failures(summary: dict[str, Any]) -> list[str]:
    """Return account lines for failed checkpoints and learner-stage errors."""
    lines = []
    failed = summary.get("checkpoints_failed", 0)
    if failed:
        lines.append(f"  checkpoints failed   {failed} (see the log for why)")
    errors = summary.get("stage_errors", 0)
    if errors:
        lines.append(f"  learner-stage errors {errors} (see the log for why)")
    return lines


def _rate_text(events_per_s: float) -> str:
    if not events_per_s:
        return "none (no event arrived in this run)"
    return f"{events_per_s} (while events arrived)"


def _by_reason(counts: dict[str, int]) -> str:
    """Return counts as "[reason count, ...] ", or "" when there are none."""
    if not counts:
        return ""
    return "[" + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())) + "] "
