"""A realistic run written through the telemetry API, for report tests.

It simulates a year of job postings learned in 400 micro-batches: accuracy
climbs, a burst of wrong labels at batch 265 drops it, a drift alarm fires,
the job rolls back automatically, and an operator rolls back later.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from monitoring_fake_clock import FakeClock

from streaming import monitoring as mon

ROLES = (
    "Data Analyst",
    "Data Engineer",
    "Data Scientist",
    "Business Analyst",
    "Software Engineer",
    "Machine Learning Engineer",
    "Senior Data Scientist",
    "Senior Data Engineer",
    "Cloud Engineer",
    "Senior Data Analyst",
    "Data Architect",
    "Quality Analyst",
)
# 2023-01-01T00:00:00Z in milliseconds.
FIRST_EVENT_MS = 1_672_531_200_000
BATCHES = 400
BATCH_SIZE = 256
WRONG_LABELS_BATCH = 265
MANUAL_ROLLBACK_BATCH = 330
VALIDATE_EVERY = 40


def write_synthetic_run(run_dir: Path, seed: int = 3) -> mon.Telemetry:
    """Write metrics.jsonl of a simulated run into ``run_dir``; return the
    closed telemetry (its counter totals stay readable)."""
    rng = random.Random(seed)
    clock = FakeClock()
    sink = mon.JsonLinesSink(run_dir, job="jobs-demo", model="roles", clock=clock)
    telemetry = mon.Telemetry([sink], clock=clock)
    serving_version = 0
    top5_by_version: dict[int, float] = {0: 0.0}
    next_version = 1
    span_ms = 365 * 86_400_000

    for batch in range(BATCHES):
        # More than the sink's 1 s point interval, so every batch is written.
        clock.advance(1.0 + rng.random() * 0.2)
        event_ms = FIRST_EVENT_MS + span_ms * batch // BATCHES
        top5 = _top5_at(batch, rng)
        _record_batch(telemetry, rng, batch, event_ms, top5)

        if batch == WRONG_LABELS_BATCH + 5:
            telemetry.record_event(
                mon.EventKind.DRIFT_ALARM,
                event_time_ms=event_ms,
                labels={"detector": "adwin"},
            )
        if batch == WRONG_LABELS_BATCH + 10 and serving_version > 1:
            previous = serving_version - 1
            telemetry.record_event(
                mon.EventKind.ROLLBACK,
                event_time_ms=event_ms,
                labels={"trigger": mon.TRIGGER_AUTOMATIC},
                from_version=f"v{serving_version}",
                to_version=f"v{previous}",
                reason="holdout top-5 dropped",
            )
            serving_version = previous
            telemetry.set(mon.SERVING_VERSION, serving_version)
        if batch == MANUAL_ROLLBACK_BATCH and serving_version > 1:
            telemetry.record_event(
                mon.EventKind.ROLLBACK,
                event_time_ms=event_ms,
                labels={"trigger": mon.TRIGGER_MANUAL},
                from_version=f"v{serving_version}",
                to_version="v1",
            )
            serving_version = 1
            telemetry.set(mon.SERVING_VERSION, serving_version)

        if batch % VALIDATE_EVERY == VALIDATE_EVERY - 1:
            serving_top5 = top5_by_version[serving_version]
            candidate = f"c{batch // VALIDATE_EVERY + 1}"
            candidate_top5 = top5 + rng.uniform(-0.02, 0.02)
            _record_holdout(telemetry, candidate, mon.ROLE_CANDIDATE, candidate_top5)
            if serving_version:
                _record_holdout(
                    telemetry, f"v{serving_version}", mon.ROLE_SERVING, serving_top5
                )
            if candidate_top5 > serving_top5:
                version = f"v{next_version}"
                telemetry.record_event(
                    mon.EventKind.PROMOTION,
                    event_time_ms=event_ms,
                    candidate=candidate,
                    version=version,
                    candidate_top5=round(candidate_top5, 4),
                    serving_top5=round(serving_top5, 4),
                )
                serving_version = next_version
                top5_by_version[serving_version] = candidate_top5
                next_version += 1
                telemetry.set(mon.SERVING_VERSION, serving_version)
                telemetry.record_confusion(
                    _confusion(rng, candidate_top5), version=version
                )
            else:
                telemetry.record_event(
                    mon.EventKind.REJECTION,
                    event_time_ms=event_ms,
                    candidate=candidate,
                    candidate_top5=round(candidate_top5, 4),
                    serving_top5=round(serving_top5, 4),
                )

        if batch % 10 == 0:
            _record_resources(telemetry, rng, batch)

    telemetry.close()
    return telemetry


def _top5_at(batch: int, rng: random.Random) -> float:
    learned = 0.78 - 0.5 * math.exp(-batch / 70)
    if WRONG_LABELS_BATCH <= batch < WRONG_LABELS_BATCH + 25:
        learned -= 0.25 * math.exp(-(batch - WRONG_LABELS_BATCH) / 12)
    return min(0.99, max(0.0, learned + rng.gauss(0, 0.015)))


def _record_batch(
    telemetry: mon.Telemetry,
    rng: random.Random,
    batch: int,
    event_ms: int,
    top5: float,
) -> None:
    held_out = BATCH_SIZE // 9
    telemetry.count(mon.EVENTS_READ, BATCH_SIZE + held_out + 12)
    telemetry.count(mon.EVENTS_LEARNED, BATCH_SIZE)
    telemetry.count(mon.EVENTS_HELD_OUT, held_out)
    telemetry.count(mon.PREDICTIONS_ANSWERED, 10)
    if batch % 7 == 0:
        telemetry.count(mon.EVENTS_DUPLICATE, 2)
    if batch % 25 == 0:
        reason = ("truncated", "schema_unknown", "invalid_field")[batch % 3]
        telemetry.count(mon.EVENTS_DEAD_LETTERED, 1, reason=reason)
    latency_s = 0.05 + rng.random() * 0.02
    telemetry.observe(mon.MICRO_BATCH_SIZE, BATCH_SIZE)
    telemetry.observe(mon.MICRO_BATCH_LATENCY, latency_s)
    telemetry.set(mon.EXAMPLES_PER_SECOND, BATCH_SIZE / latency_s)
    loss = -math.log(max(0.05, top5 - 0.15)) + rng.gauss(0, 0.03)
    telemetry.set(mon.TRAINING_LOSS, loss, event_time_ms=event_ms)
    telemetry.set(mon.PREQUENTIAL_TOP5, top5, event_time_ms=event_ms)
    telemetry.set(mon.PREQUENTIAL_TOP1, top5 * 0.55, event_time_ms=event_ms)


def _record_holdout(
    telemetry: mon.Telemetry, version: str, role: str, top5: float
) -> None:
    telemetry.set(mon.HOLDOUT_TOP5, top5, version=version, role=role)
    telemetry.set(mon.HOLDOUT_TOP1, top5 * 0.55, version=version, role=role)
    telemetry.set(mon.HOLDOUT_LOSS, -math.log(top5 * 0.55), version=version, role=role)


def _confusion(rng: random.Random, top5: float) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for rank, true_role in enumerate(ROLES):
        total = int(400 / (rank + 1))
        correct = int(total * top5 * 0.6)
        counts[(true_role, true_role)] = correct
        for _ in range(total - correct):
            predicted = ROLES[min(len(ROLES) - 1, int(rng.expovariate(0.5)))]
            key = (true_role, predicted)
            counts[key] = counts.get(key, 0) + 1
    return counts


def _record_resources(telemetry: mon.Telemetry, rng: random.Random, batch: int) -> None:
    telemetry.set(mon.PROCESS_CPU_UTILIZATION, 0.9 + rng.random() * 0.3)
    rss = int((600 + batch * 0.8 + rng.random() * 20) * 2**20)
    telemetry.set(mon.PROCESS_MEMORY_RSS, rss)
    telemetry.set(mon.PROCESS_MEMORY_UTILIZATION, rss / (8 * 2**30))
    telemetry.count(mon.NETWORK_SENT, int(40_000 + rng.random() * 5_000))
    telemetry.count(mon.NETWORK_RECEIVED, int(900_000 + rng.random() * 90_000))
