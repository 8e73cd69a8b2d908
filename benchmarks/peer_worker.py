"""One learner on one stream, test-then-train, in its own process.

``peers.py`` starts this once per (stream, learner) so that the peak resident
memory measured here belongs to one learner only. The result is one JSON file.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peer_features import FieldKinds, PeerFeaturizer
from peer_learners import (
    MostFrequentClasses,
    NoChange,
    StreamLearner,
    StreamlearnLearner,
    VowpalWabbitBinding,
    VowpalWabbitCommandLine,
    build_river_learner,
    label_ids_in_order_of_appearance,
)

from online_model.datasets import Event, iter_events
from online_model.evaluation import Metrics, MetricsAccumulator
from online_model.scored import Scored
from online_model.spec import load_spec

logger = logging.getLogger("peers.worker")

# Resident memory is sampled this many times over a stream, evenly.
RSS_SAMPLES = 50
MIB = 1024 * 1024


def read_peak_rss_bytes() -> int:
    """Return the process's peak resident set size since the last reset.

    Reads VmHWM from /proc/self/status on Linux. Elsewhere it falls back to
    ``ru_maxrss``, which cannot be reset.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_rss_bytes() -> int:
    """Return the process's current resident set size."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Set the peak resident set size to the current one, if the system can.

    Writing 5 to /proc/self/clear_refs does this on Linux 4.0 and later.
    Returns False where that file cannot be written.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def import_library(peer: str) -> None:
    """Import the library behind a learner, so its import is not counted."""
    if peer == "streamlearn":
        import online_model.learner  # noqa: F401
    elif peer.startswith("river-"):
        import river.forest
        import river.linear_model
        import river.multiclass
        import river.naive_bayes
        import river.tree  # noqa: F401
    elif peer.startswith("vw-"):
        import vowpalwabbit  # noqa: F401


def build_learner(
    peer: str,
    stream: str,
    events: Sequence[Event],
    seed: int,
) -> StreamLearner:
    """Build the named learner for a stream."""
    spec = load_spec(stream)
    kinds = FieldKinds.from_spec(spec)
    featurizer = PeerFeaturizer(kinds)
    if peer == "streamlearn":
        return StreamlearnLearner(spec, seed)
    if peer == "most-frequent":
        return MostFrequentClasses()
    if peer == "no-change":
        return NoChange()
    if peer.startswith("river-"):
        return build_river_learner(peer, kinds, featurizer, seed)
    label_ids = label_ids_in_order_of_appearance(events, kinds.label)
    quadratic = peer.endswith("-q")
    if peer.startswith("vw-cli"):
        return VowpalWabbitCommandLine(peer, featurizer, label_ids, quadratic)
    if peer.startswith("vw-py"):
        return VowpalWabbitBinding(peer, featurizer, label_ids, quadratic)
    raise ValueError(f"unknown learner {peer!r}")


def chunk_bounds(total: int, size: int, prefix: int) -> list[tuple[int, int]]:
    """Cut [0, total) into chunks of ``size`` with a cut at ``prefix`` too."""
    bounds = []
    for start, stop in ((0, min(prefix, total)), (min(prefix, total), total)):
        bounds += [(s, min(s + size, stop)) for s in range(start, stop, size)]
    return bounds


class PrequentialTally:
    """Running metrics over scored events, with a copy taken at the prefix."""

    def __init__(self, prefix: int) -> None:
        self.prefix = prefix
        self.events = 0
        self.accumulator = MetricsAccumulator()
        self.prefix_metrics: Metrics | None = None

    def add(self, records: Sequence[Scored]) -> None:
        """Add scored events in stream order."""
        before_prefix = max(0, self.prefix - self.events)
        head, tail = records[:before_prefix], records[before_prefix:]
        self.accumulator.update(head)
        self.events += len(head)
        if self.prefix_metrics is None and self.events == self.prefix:
            self.prefix_metrics = self.accumulator.result()
        self.accumulator.update(tail)
        self.events += len(tail)


@dataclass
class RunMeasurements:
    """Wall seconds in featurization and in the model, CPU seconds of both, and
    RSS samples in MiB. CPU seconds add up every thread of the process.
    """

    featurize_s: float = 0.0
    model_s: float = 0.0
    cpu_s: float = 0.0
    rss_samples: list[tuple[int, float]] = field(default_factory=list)

    def snapshot(self, events: int, peak_mib: float) -> dict[str, Any]:
        total = self.featurize_s + self.model_s
        return {
            "events": events,
            "featurize_s": round(self.featurize_s, 4),
            "model_s": round(self.model_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "examples_per_cpu_s": events / self.cpu_s if self.cpu_s else None,
            "examples_per_s": events / total if total else None,
            "model_examples_per_s": events / self.model_s if self.model_s else None,
            "peak_rss_mib": round(peak_mib, 1),
        }


def stream_through(
    learner: StreamLearner,
    events: Sequence[Event],
    labels: Sequence[str],
    arguments: argparse.Namespace,
    baseline_mib: float,
    tally: PrequentialTally,
) -> tuple[RunMeasurements, dict[str, Any], bool]:
    """Run the learner test-then-train in chunks, timing and sampling memory.

    The scored events go to ``tally`` as they come, so the run keeps no
    per-event records that would count as the learner's memory. Returns the
    timings, the snapshot taken at the prefix and whether the learner stopped
    at the prefix because of the time limit.
    """
    bounds = chunk_bounds(len(events), arguments.micro_batch, arguments.prefix)
    prefix = min(arguments.prefix, len(events))
    sample_every = max(1, len(bounds) // RSS_SAMPLES)
    progress_every = max(1, len(bounds) // 10)
    times = RunMeasurements()
    prefix_snapshot: dict[str, Any] = {}
    stopped = False
    for index, (start, stop) in enumerate(bounds):
        inner_before = learner.inner_featurize_s
        cpu_started = time.process_time()
        started = time.perf_counter()
        features = learner.featurize(events[start:stop])
        featurized = time.perf_counter()
        records = learner.test_then_train(features, labels[start:stop])
        inner = learner.inner_featurize_s - inner_before
        times.featurize_s += featurized - started + inner
        times.model_s += time.perf_counter() - featurized - inner
        times.cpu_s += time.process_time() - cpu_started
        tally.add(records)

        if index % sample_every == 0 or stop == len(events):
            rss_mib = read_rss_bytes() / MIB - baseline_mib
            times.rss_samples.append((stop, round(rss_mib, 2)))
        if stop == prefix:
            peak = read_peak_rss_bytes() / MIB
            prefix_snapshot = times.snapshot(prefix, peak)
        if index % progress_every == 0:
            logger.info("%s: %d/%d events", learner.name, stop, len(events))
        if stop < len(events) and _past_time_limit(
            learner.name, stop, prefix, len(events), times, arguments.time_limit_s
        ):
            stopped = True
            break
    return times, prefix_snapshot, stopped


# A learner projected to fit the time limit at the prefix still stops at this
# multiple of the limit, in case it slows down later in the stream.
HARD_TIME_LIMIT_FACTOR = 3.0


def _past_time_limit(
    name: str,
    stop: int,
    prefix: int,
    total: int,
    times: RunMeasurements,
    time_limit_s: float,
) -> bool:
    """Decide at the prefix whether the learner can finish the stream in time.

    The projection assumes the prefix's rate holds for the whole stream.
    """
    spent = times.featurize_s + times.model_s
    if stop == prefix:
        projected = spent * total / prefix
        if projected > time_limit_s:
            logger.warning(
                "%s: stopped at the %d-event prefix: the whole stream of %d "
                "events would take about %.0f s, over the limit of %.0f s",
                name,
                prefix,
                total,
                projected,
                time_limit_s,
            )
            return True
    if stop > prefix and spent > HARD_TIME_LIMIT_FACTOR * time_limit_s:
        logger.warning(
            "%s: stopped after %d of %d events, %.0f s in, past %g times the "
            "limit of %.0f s",
            name,
            stop,
            total,
            spent,
            HARD_TIME_LIMIT_FACTOR,
            time_limit_s,
        )
        return True
    return False


def finish_command_line(
    learner: VowpalWabbitCommandLine,
    times: RunMeasurements,
    tally: PrequentialTally,
    prefix_snapshot: dict[str, Any],
    events_run: int,
) -> None:
    """Run Vowpal Wabbit's driver over the prefix and the whole file.

    Predictions of a single online pass over the first N lines equal the
    first N predictions of the whole pass, so the prefix run only adds its
    time and memory, and the metrics come from the whole pass.
    """
    prefix = prefix_snapshot["events"]
    if prefix < events_run:
        prefix_times = RunMeasurements(
            featurize_s=prefix_snapshot["featurize_s"], cpu_s=prefix_snapshot["cpu_s"]
        )
        wall_s, cpu_s = learner.run_driver(limit=prefix)
        prefix_times.model_s += wall_s
        prefix_times.cpu_s += cpu_s
        peak = read_peak_rss_bytes() / MIB
        prefix_snapshot.update(prefix_times.snapshot(prefix, peak))
    wall_s, cpu_s = learner.run_driver(limit=None)
    times.model_s += wall_s
    times.cpu_s += cpu_s
    if prefix == events_run:
        prefix_snapshot.update(times.snapshot(prefix, read_peak_rss_bytes() / MIB))
    batch: list[Scored] = []
    for record in learner.iter_records():
        batch.append(record)
        if len(batch) == 1024:
            tally.add(batch)
            batch = []
    tally.add(batch)
    learner.cleanup()


def describe_source() -> dict[str, Any]:
    """Return the git commit and the uncommitted files of the learner's package.

    Other work can change ``online_model`` while a long run goes on, so each
    learner's result records the code it ran. Empty where git is missing.
    """
    root = Path(__file__).resolve().parents[1]

    def git(*arguments: str) -> str:
        completed = subprocess.run(
            ["git", *arguments], cwd=root, capture_output=True, text=True, check=False
        )
        return completed.stdout.rstrip("\n") if completed.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "online_model")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "online_model_uncommitted": [line[3:] for line in changed.splitlines()],
    }


def write_profile(profiler: cProfile.Profile, path: Path, title: str) -> None:
    """Write the functions with the most own time, then the most cumulative time."""
    text = io.StringIO()
    text.write(
        f"cProfile of {title}, test-then-train over the whole run. It includes "
        "the benchmark's own metric updates (MetricsAccumulator.update), which "
        "the tables' timings leave out.\n\n"
    )
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    path.write_text(text.getvalue(), encoding="utf-8")


def rss_growth(samples: list[tuple[int, float]]) -> float | None:
    """Return RSS at the end minus RSS after the first quarter of the run, MiB."""
    if len(samples) < 4:
        return None
    quarter = samples[len(samples) // 4][1]
    return round(samples[-1][1] - quarter, 2)


def run_worker(arguments: argparse.Namespace) -> int:
    """Run one learner over one stream and write its result as JSON."""
    stream, peer = arguments.stream, arguments.peer
    # The learner logs each new label at INFO, hundreds on the ai-jobs stream.
    logging.getLogger("online_model").setLevel(logging.WARNING)
    events = list(iter_events(stream))
    if arguments.limit is not None:
        events = events[: arguments.limit]
    spec = load_spec(stream)
    labels = [str(event[spec.label_field]) for event in events]

    # The learner's memory is what the process gains after this point, so its
    # library is imported first and the events are already in memory.
    import_library(peer)
    load_at_start = os.getloadavg()[0]
    gc.collect()
    peak_reset = reset_peak_rss()
    baseline_mib = read_rss_bytes() / MIB
    learner = build_learner(peer, stream, events, arguments.seed)

    source = describe_source()
    tally = PrequentialTally(min(arguments.prefix, len(events)))
    profiler = cProfile.Profile() if arguments.profile_out else None
    if profiler is not None:
        profiler.enable()
    times, prefix_snapshot, stopped = stream_through(
        learner, events, labels, arguments, baseline_mib, tally
    )
    if profiler is not None:
        profiler.disable()
        write_profile(profiler, arguments.profile_out, f"{peer} on {stream}")
    if isinstance(learner, VowpalWabbitCommandLine):
        finish_command_line(learner, times, tally, prefix_snapshot, len(events))
    else:
        cpu_started = time.process_time()
        started = time.perf_counter()
        tally.add(learner.finish())
        times.model_s += time.perf_counter() - started
        times.cpu_s += time.process_time() - cpu_started

    # The command-line learner's memory is sampled only while its input file
    # is written, so its RSS samples do not measure the model.
    growth = None
    if not isinstance(learner, VowpalWabbitCommandLine):
        growth = rss_growth(times.rss_samples)
    full_snapshot = times.snapshot(tally.events, read_peak_rss_bytes() / MIB)
    if tally.prefix_metrics is None:
        raise RuntimeError(
            f"{peer} on {stream} scored {tally.events} events, fewer than the "
            f"prefix of {tally.prefix}"
        )
    result = {
        "stream": stream,
        "peer": peer,
        "events_total": len(events),
        "events_run": tally.events,
        "stopped_at_time_limit": stopped,
        "labels_total": len(set(labels)),
        "baseline_rss_mib": round(baseline_mib, 1),
        "peak_reset": peak_reset,
        "prefix": {**prefix_snapshot, "metrics": tally.prefix_metrics.as_dict()},
        "full": None
        if stopped
        else {**full_snapshot, "metrics": tally.accumulator.result().as_dict()},
        "load_average_1m": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
        "rss_samples_mib": times.rss_samples,
        "rss_growth_mib": growth,
        "rejected_events": getattr(learner, "rejected_events", 0),
        "source": source,
    }
    arguments.worker.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0
