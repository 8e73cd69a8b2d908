"""Run the learner alone over the real streams and print its prequential metrics.

Usage: .venv/bin/python benchmarks/learner_only.py [--datasets a,b] [--limit N]
       [--micro-batch 256] [--seed 0] [--device cpu] [--set field=value ...]
       [--profile]

For each stream it prints top-1 accuracy, top-5 hit rate (top-k for a
learner that ranks k < 5 labels) and log loss of the test-then-train run,
over the events the learner scored. It also prints the number of events whose label was
still unknown when they were scored, and the log loss over the other events.
Speed comes as examples per wall-clock second and per CPU second of the
learn() calls on decoded events (featurization included, metrics left
out), and as examples per CPU second of the model step alone (the same
micro-batches, featurized beforehand).
CPU seconds are those of this process, so other work on a shared machine
moves them far less than wall-clock time. On a GPU (``--device cuda``) the
model step is timed in wall-clock seconds instead, after waiting for the
GPU to finish, because the CPU only queues the GPU's work.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import pstats
import time
from collections.abc import Callable
from typing import Any

import torch

from online_model.arguments import device_argument, positive_int
from online_model.datasets import iter_events
from online_model.evaluation import EvaluationConfig, MetricsAccumulator
from online_model.featurize import hashed_tokens, standardize
from online_model.learner import LearnerConfig, OnlineLearner
from online_model.spec import load_spec

DATASETS = ("job_postings", "so_survey_2016", "aijobs_salaries", "electricity")
EXAMPLES = """\
examples, from the repository root:
  # all four streams, then the same without label recency
  .venv/bin/python benchmarks/learner_only.py
  .venv/bin/python benchmarks/learner_only.py --set label_recency=false
  # a quick look at the first 10,240 events of one stream
  .venv/bin/python benchmarks/learner_only.py --datasets job_postings --limit 10240
  # the learner alone on a GPU, at a larger micro-batch
  .venv/bin/python benchmarks/learner_only.py --device cuda --micro-batch 1024
"""


def run_stream(
    name: str,
    config: LearnerConfig,
    micro_batch: int,
    limit: int | None,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Return prequential metrics and throughput of one test-then-train run.

    Only the learner's ``learn`` calls are timed; the metrics are updated
    between them, with the accumulator that the streaming job uses.
    """
    events = list(iter_events(name))[:limit]
    learner = OnlineLearner(load_spec(name), config, seed=seed, device=device)
    metrics = MetricsAccumulator(EvaluationConfig(top_k=shown_top_k(config)))
    clip = metrics.config.log_loss_clip
    unseen = 0
    log_loss_seen = 0.0
    elapsed = elapsed_cpu = 0.0
    for start in range(0, len(events), micro_batch):
        known = set(learner.labels)
        started = time.perf_counter()
        started_cpu = time.process_time()
        report = learner.learn(events[start : start + micro_batch])
        elapsed += time.perf_counter() - started
        elapsed_cpu += time.process_time() - started_cpu
        metrics.update(report.scored)
        for scored in report.scored:
            if scored.true_label in known:
                log_loss_seen -= math.log(max(scored.true_label_probability, clip))
            else:
                unseen += 1
    result = metrics.result()
    count = len(events)
    return {
        "stream": name,
        "events": count,
        "scored": result.n_events,
        "top1": result.top1_accuracy,
        "top_k": result.top_k,
        "top_k_hit_rate": result.top_k_hit_rate,
        "log_loss": result.log_loss,
        # Events whose label the model had not seen when it scored them get
        # the learner's escape probability.
        "unseen_label_events": unseen,
        "log_loss_seen_labels": log_loss_seen / max(result.n_events - unseen, 1),
        "events_per_s": count / elapsed,
        "events_per_cpu_s": count / elapsed_cpu,
        "model_step_events_per_s": model_step_rate(
            name, events, config, micro_batch, device
        ),
        "labels": len(learner.labels),
    }


def shown_top_k(config: LearnerConfig) -> int:
    """Return the k of the top-k hit rate shown: 5, or the learner's top_k if lower."""
    return min(5, config.top_k)


def model_step_rate(
    name: str,
    events: list[dict[str, Any]],
    config: LearnerConfig,
    micro_batch: int,
    device: str = "cpu",
) -> float:
    """Return examples per second of the model step alone.

    The micro-batches are featurized beforehand, so only forward, backward and
    optimizer step are timed, as many times per batch as the learner takes them.
    On the CPU the seconds are CPU seconds of this process. On a GPU they are
    wall-clock seconds up to the end of the GPU's last step.
    """
    learner = OnlineLearner(load_spec(name), config, seed=0, device=device)
    learner.learn(events)  # learn every label once so the output layer is full size
    model = learner._model
    batches = []
    for start in range(0, len(events), micro_batch):
        chunk = events[start : start + micro_batch]
        encoded = learner.featurizer.encode(chunk)
        z = standardize(
            encoded.numeric,
            learner._layout,
            model.numeric_count.cpu(),
            model.numeric_mean.cpu(),
            model.numeric_m2.cpu(),
        )
        targets = torch.tensor(
            [learner._label_index[e[learner.spec.label_field]] for e in chunk],
            device=learner.device,
        )
        batches.append(
            (hashed_tokens(encoded, learner._layout, z, learner.device), targets)
        )
    on_cpu = learner.device.type == "cpu"
    clock = time.process_time if on_cpu else time.perf_counter
    _wait_for(learner.device)
    started = clock()
    for batch, targets in batches:
        for _ in range(config.steps_per_batch):
            for optimizer in learner._optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(batch), targets)
            loss.backward()
            for optimizer in learner._optimizers:
                optimizer.step()
    _wait_for(learner.device)
    return len(events) / (clock() - started)


def _wait_for(device: torch.device) -> None:
    """Wait until a GPU has finished the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_stream(
    name: str,
    config: LearnerConfig,
    micro_batch: int,
    limit: int | None,
    device: str = "cpu",
) -> None:
    """Print the functions that take the most time in a test-then-train run."""
    events = list(iter_events(name))[:limit]
    learner = OnlineLearner(load_spec(name), config, seed=0, device=device)
    profiler = cProfile.Profile()
    profiler.enable()
    for start in range(0, len(events), micro_batch):
        learner.learn(events[start : start + micro_batch])
    profiler.disable()
    print(f"\nprofile of {name} ({len(events)} events), by own time:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated streams to run (default: all of {', '.join(DATASETS)})",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="stop every stream after this many events (default: whole streams)",
    )
    parser.add_argument(
        "--micro-batch",
        type=positive_int,
        default=256,
        help="events per micro-batch of the learner (default: 256)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the learner's initial weights in the test-then-train run "
        "(default: 0). The model-step timing and --profile always use seed 0.",
    )
    parser.add_argument(
        "--device",
        type=device_argument,
        default="cpu",
        help="torch device of the learner: cpu, cuda or cuda:N (default: cpu)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print where the time of the test-then-train run goes (cProfile)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a LearnerConfig field, e.g. --set learning_rate=0.02 "
        "or --set label_recency=false. Repeat it for more fields. Fields not "
        "set keep LearnerConfig's defaults.",
    )
    args = parser.parse_args()
    overrides: dict[str, Any] = {}
    types = {f.name: f.type for f in dataclasses.fields(LearnerConfig)}
    parsers: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "str": str,
        "bool": _parse_bool,
    }
    for item in args.set:
        key, equals, value = item.partition("=")
        if not equals or key not in types:
            parser.error(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                f"{', '.join(types)}"
            )
        try:
            overrides[key] = parsers[str(types[key])](value)
        except ValueError as error:
            parser.error(f"--set {item!r}: {error}")
    try:
        config = LearnerConfig(**overrides)
    except ValueError as error:
        parser.error(str(error))
    step_unit = "step/cpu" if args.device == "cpu" else "step/s"
    top_k_column = f"top{shown_top_k(config)}"
    print(f"config: {config}; device: {args.device}")
    print(
        f"{'stream':16} {'events':>7} {'top1':>6} {top_k_column:>6} {'logloss':>7} "
        f"{'unseen':>6} {'ll seen':>7} {'ev/s':>8} {'ev/cpu-s':>8} "
        f"{step_unit:>9} {'labels':>6}"
    )
    for name in args.datasets.split(","):
        row = run_stream(
            name, config, args.micro_batch, args.limit, args.seed, args.device
        )
        print(
            f"{row['stream']:16} {row['events']:7d} {row['top1']:6.3f} "
            f"{row['top_k_hit_rate']:6.3f} {row['log_loss']:7.3f} "
            f"{row['unseen_label_events']:6d} {row['log_loss_seen_labels']:7.3f} "
            f"{row['events_per_s']:8.0f} {row['events_per_cpu_s']:8.0f} "
            f"{row['model_step_events_per_s']:9.0f} {row['labels']:6d}",
            flush=True,
        )
    if args.profile:
        for name in args.datasets.split(","):
            profile_stream(name, config, args.micro_batch, args.limit, args.device)


def _parse_bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"invalid boolean {value!r}: expected true or false")
    return value.lower() == "true"


if __name__ == "__main__":
    main()
