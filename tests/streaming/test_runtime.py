"""The learner stage without Beam: real learner, real registry, real events."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from online_model.datasets import iter_events
from online_model.drift.monitor import DriftMonitor, DriftMonitorConfig
from online_model.learner import LearnerConfig, OnlineLearner
from online_model.spec import load_spec, spec_from_dict
from rollback.errors import RegistryError, RegistryNotWritable
from rollback.registry import Registry, open_registry
from streaming import monitoring as mon
from streaming.checkpoint import CheckpointError, CheckpointStore
from streaming.decisions import DecisionLog, account_decisions, read_decisions
from streaming.job import (
    _print_progress,
    _ReadingRate,
    render_summary,
)
from streaming.job_config import JobConfig
from streaming.report.records import read_run
from streaming.runtime import (
    POINTER_CHECK_S,
    Account,
    EventBatch,
    JobRuntime,
    holdout_share,
    spec_mismatch,
)

SPEC = load_spec("job_postings")
EVENTS = list(itertools.islice(iter_events("job_postings"), 5500))
LABELS = sorted({e["job_role"] for e in EVENTS})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make_runtime(
    tmp_path: Path,
    clock: FakeClock,
    registry: Registry | None = None,
    telemetry: Any | None = None,
    learner_config: LearnerConfig | None = None,
    **settings: Any,
) -> tuple[JobRuntime, list[dict[str, Any]]]:
    options: dict[str, Any] = {
        "micro_batch_size": 128,
        "gate_every_micro_batches": 4,
        "gate_every_s": 10_000.0,
        "gate_min_interval_s": 0.0,
        "holdout_min_events": 100,
        "checkpoint_every_s": 10_000.0,
    }
    options.update(settings)
    records: list[dict[str, Any]] = []
    runtime = JobRuntime(
        SPEC,
        JobConfig(**options),
        registry or open_registry(tmp_path / "registry", create=True),
        new_learner=lambda: OnlineLearner(SPEC, learner_config, seed=0, device="cpu"),
        load_learner=lambda files: OnlineLearner.from_files(files, device="cpu"),
        checkpoints=CheckpointStore(tmp_path / "checkpoints"),
        decisions=records.append,
        telemetry=telemetry,
        clock=clock,
    )
    return runtime, records


def feed(runtime: JobRuntime, events: list[dict[str, Any]], size: int = 250) -> None:
    for start in range(0, len(events), size):
        runtime.handle_batch(EventBatch(events[start : start + size]))


def kinds(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == kind]


def wrong_labels(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each event another label, and a fresh id so it is no duplicate."""
    shifted = []
    for event in events:
        label = LABELS[(LABELS.index(event["job_role"]) + 3) % len(LABELS)]
        shifted.append(
            {**event, "event_id": event["event_id"] + "-w", "job_role": label}
        )
    return shifted


def assert_adds_up(runtime: JobRuntime) -> None:
    account = runtime.account
    outcomes = (
        account.learned
        + account.held_out
        + account.predictions
        + account.duplicates
        + account.pending
        + account.refused_non_finite
        + account.over_label_limit
    )
    assert outcomes == account.events_read


def test_counts_with_duplicates_and_requests(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock())
    events = [dict(e) for e in EVENTS[:1500]]
    for event in events[::10]:
        event["job_role"] = None
    feed(runtime, events)
    feed(runtime, events[:300])

    account = runtime.account
    assert account.events_read == 1800
    assert account.duplicates == 300
    assert account.predictions == 150
    expected_holdout = sum(
        holdout_share(e["event_id"]) < 0.1 for e in events if e["job_role"]
    )
    assert account.held_out == expected_holdout
    assert account.learned + account.pending == 1350 - expected_holdout
    assert_adds_up(runtime)


def test_labels_over_limit_rejected(tmp_path: Path) -> None:
    clock = FakeClock()
    session = mon.open_telemetry(
        mon.TelemetryConfig(job="t", model="job_postings", resource_interval_s=0),
        clock=clock,
    )
    runtime, _ = make_runtime(
        tmp_path, clock, telemetry=session.telemetry, max_labels=4
    )
    first_four = list(dict.fromkeys(e["job_role"] for e in EVENTS))[:4]
    feed(runtime, EVENTS[:3000])
    counted = session.telemetry.counter_total(
        mon.EVENTS_DEAD_LETTERED, reason="label-limit"
    )
    session.close()

    rejected = runtime.take_rejected()
    over = [e for e in EVENTS[:3000] if e["job_role"] not in first_four]
    assert over
    assert runtime.account.over_label_limit == len(over)
    assert counted == len(over)
    assert [r.event for r in rejected] == over
    assert {r.reason for r in rejected} == {"label-limit"}
    assert rejected[0].detail.endswith("the job has reached --max-labels 4")
    assert sorted(runtime.learner.labels) == sorted(first_four)
    assert runtime.take_rejected() == []
    assert_adds_up(runtime)


def test_label_limit_counts_pending_labels(tmp_path: Path) -> None:
    # Nothing is learned yet: the pending micro-batch's labels count.
    runtime, _ = make_runtime(tmp_path, FakeClock(), max_labels=2)
    events = [
        {**EVENTS[0], "event_id": f"p{n}", "job_role": label}
        for n, label in enumerate(["a", "b", "a", "c", "b", "d"])
    ]
    # Only ids that land outside the holdout, so that every event is pending.
    events = [e for e in events if holdout_share(e["event_id"]) >= 0.1]
    feed(runtime, events)

    assert runtime.learner.label_count == 0
    assert {e["job_role"] for e in runtime.pending} <= {"a", "b"}
    assert [r.event["job_role"] for r in runtime.take_rejected()] == [
        e["job_role"] for e in events if e["job_role"] in ("c", "d")
    ]
    assert_adds_up(runtime)


def relabelled(label: str, count: int, prefix: str) -> list[dict[str, Any]]:
    """Return ``count`` events labelled ``label``, with ids outside the holdout."""
    events = []
    for number, event in enumerate(itertools.cycle(EVENTS)):
        event_id = f"{prefix}{number}"
        if holdout_share(event_id) >= 0.1:
            events.append({**event, "event_id": event_id, "job_role": label})
        if len(events) == count:
            return events
    raise AssertionError("unreachable")


def test_label_limit_counts_restored_pending(tmp_path: Path) -> None:
    first, _ = make_runtime(tmp_path, FakeClock(), max_labels=5)
    feed(first, [*relabelled("A", 50, "a"), *relabelled("B", 50, "b")])
    feed(first, relabelled("C", 28, "c"))
    # One micro-batch of 128 learned A to C; D and E wait in the next one.
    feed(first, [*relabelled("D", 20, "d"), *relabelled("E", 20, "e")])
    assert first.learner.label_count == 3
    first.save_checkpoint()

    second, _ = make_runtime(tmp_path, FakeClock(), max_labels=5)
    second.restore(first.checkpoint_number)
    feed(second, [*relabelled("F", 20, "f"), *relabelled("G", 20, "g")])
    feed(second, relabelled("A", 128, "x"))

    assert second.account.over_label_limit == 40
    assert second.learner.labels == ["A", "B", "C", "D", "E"]


def test_lower_label_limit_screens_restored_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = make_runtime(tmp_path, FakeClock(), max_labels=10)
    learned = [relabelled(label, 32, label) for label in "ABCD"]
    feed(first, [event for events in learned for event in events])
    feed(first, [*relabelled("A", 10, "p"), *relabelled("E", 10, "e")])
    assert first.learner.label_count == 4
    first.save_checkpoint()

    clock = FakeClock()
    session = mon.open_telemetry(
        mon.TelemetryConfig(job="t", model="job_postings", resource_interval_s=0),
        clock=clock,
    )
    second, _ = make_runtime(tmp_path, clock, telemetry=session.telemetry, max_labels=3)
    with caplog.at_level(logging.WARNING, logger="streaming.runtime"):
        second.restore(first.checkpoint_number)
    counted = session.telemetry.counter_total(
        mon.EVENTS_DEAD_LETTERED, reason="label-limit"
    )

    assert "the learner has 4 labels, more than --max-labels 3" in caplog.text
    assert {e["job_role"] for e in second.pending} == {"A"}
    assert len(second.pending_publish_s) == len(second.pending) == 10
    rejected = [r.event for r in second.take_rejected()]
    assert [e["job_role"] for e in rejected] == ["E"] * 10
    assert second.account.over_label_limit == 10
    assert counted == 10
    assert_adds_up(second)

    # With the limit raised, the dead letters published again are learned.
    second.config = dataclasses.replace(second.config, max_labels=2000)
    feed(second, rejected)
    session.close()
    assert second.account.duplicates == 0
    assert [e["job_role"] for e in second.pending].count("E") == 10
    assert_adds_up(second)


def test_label_limit_counts_after_learner_replaced(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock(), max_labels=3)
    feed(runtime, relabelled("A", 128, "a"))
    feed(runtime, [*relabelled("B", 64, "b"), *relabelled("C", 64, "c")])
    feed(runtime, [*relabelled("B", 10, "p"), *relabelled("C", 10, "q")])
    assert runtime.learner.labels == ["A", "B", "C"]
    # As after a rollback to a version that learned only A: the pending
    # events' labels are new to it, and leave no room for D.
    earlier = OnlineLearner(SPEC, seed=0, device="cpu")
    earlier.learn(relabelled("A", 128, "r"))
    runtime.learner = earlier
    feed(runtime, relabelled("D", 10, "d"))
    feed(runtime, relabelled("A", 128, "x"))

    assert runtime.account.over_label_limit == 10
    assert runtime.learner.labels == ["A", "B", "C"]


def test_rejected_event_accepted_after_limit_raised(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock(), max_labels=1)
    feed(runtime, EVENTS[:300])
    rejected = [r.event for r in runtime.take_rejected()]
    assert rejected
    runtime.config = dataclasses.replace(runtime.config, max_labels=2000)
    before = runtime.account.events_read - runtime.account.over_label_limit
    feed(runtime, rejected)

    assert runtime.account.duplicates == 0
    assert runtime.account.over_label_limit == len(rejected)
    routed = runtime.account.events_read - runtime.account.over_label_limit
    assert routed - before == len(rejected)
    assert_adds_up(runtime)


def test_long_label_cut_in_detail(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock(), max_labels=1)
    feed(runtime, [*relabelled("A", 1, "a"), *relabelled("\U0001f600" * 400, 1, "b")])

    (rejected,) = runtime.take_rejected()
    assert len(rejected.detail) < 200
    assert rejected.detail.startswith("label '" + "\U0001f600" * 20)
    assert rejected.detail.endswith(
        "... is new, and the job has reached --max-labels 1"
    )


def test_holdout_window_only_holdout_ids(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock(), holdout_window_size=150)
    feed(runtime, EVENTS[:2500])
    assert len(runtime.holdout) == 150
    for event in runtime.holdout:
        assert holdout_share(event["event_id"]) < 0.1
    for event in runtime.pending:
        assert holdout_share(event["event_id"]) >= 0.1


def test_micro_batch_closes_on_time(tmp_path: Path) -> None:
    clock = FakeClock()
    runtime, _ = make_runtime(tmp_path, clock, micro_batch_max_wait_s=2.0)
    batch = [e for e in EVENTS[:40] if holdout_share(e["event_id"]) >= 0.1][:10]
    runtime.handle_batch(EventBatch(batch))
    assert runtime.account.learned == 0
    clock.now += 1.9
    runtime.handle_tick()
    assert runtime.account.learned == 0
    clock.now += 0.2
    runtime.handle_tick()
    assert runtime.account.learned == 10
    assert runtime.account.pending == 0


def test_gates_spaced_by_min_interval(tmp_path: Path) -> None:
    # 4,500 events make 16 micro-batches of 128 and so 4 gates without the
    # spacing. With it, the clock allows one gate per 10 s.
    clock = FakeClock()
    runtime, _ = make_runtime(tmp_path, clock, gate_min_interval_s=10.0)
    clock.now += 10.0
    feed(runtime, EVENTS[:4500])
    assert runtime.account.micro_batches >= 16
    assert runtime.account.candidates_validated == 1

    clock.now += 9.0
    feed(runtime, EVENTS[4500:5000])
    assert runtime.account.candidates_validated == 1
    clock.now += 1.0
    runtime.handle_tick()
    assert runtime.account.candidates_validated == 2


def test_first_version_then_predictions(tmp_path: Path) -> None:
    runtime, records = make_runtime(tmp_path, FakeClock())
    request = dict(EVENTS[3999], job_role=None)
    assert runtime.handle_batch(EventBatch([request]))[0].version is None
    feed(runtime, EVENTS[:2000])
    promotions = kinds(records, "promotion")
    assert promotions[0]["version"] == 1
    assert promotions[0]["parent"] is None
    answer = runtime.handle_batch(EventBatch([dict(request, event_id="r2")]))[0]
    assert answer.version == runtime.serving_version
    assert len(answer.ranked) == 5
    assert answer.ranked == runtime.serving_learner.predict([request], k=5)[0]


def test_version_names_learned_time_range(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock())
    feed(runtime, EVENTS[:2500])
    assert runtime.serving_version is not None
    manifest = runtime.registry.describe(runtime.serving_version).fields
    # Every event here is labelled and valid, so the version learned the
    # first events_count of those not held out.
    learned = [e for e in EVENTS[:2500] if holdout_share(e["event_id"]) >= 0.1]
    times = [e["event_time"] for e in learned[: manifest.events_count]]
    assert manifest.events_count > 1000
    assert manifest.event_time_min == min(times)
    assert manifest.event_time_max == max(times)


def test_wrong_labels_rejected_and_reset(tmp_path: Path) -> None:
    runtime, records = make_runtime(tmp_path, FakeClock())
    feed(runtime, EVENTS[:2500])
    assert runtime.serving_version is not None
    burst = wrong_labels(EVENTS[2500:3500])
    holdout_sample = list(runtime.holdout)[:20]

    rejections = []
    for start in range(0, len(burst), 250):
        seen = len(records)
        runtime.handle_batch(EventBatch(burst[start : start + 250]))
        new = kinds(records[seen:], "rejection")
        if not new:
            continue
        rejections.extend(new)
        # The gate runs last in a batch, so right after a rejection the
        # learner is the serving version again.
        assert new[-1]["serving_version"] == runtime.serving_version
        serving = runtime.serving_learner
        assert serving is not None
        assert runtime.learner.predict(holdout_sample) == serving.predict(
            holdout_sample
        )

    assert rejections
    assert rejections[0]["metric"] == "log_loss"
    assert rejections[0]["candidate_value"] > rejections[0]["serving_value"]


def test_operator_rollback_adopted(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(
        tmp_path, FakeClock(), registry, gate_metric="top5", gate_tolerance=0.5
    )
    feed(runtime, EVENTS[:2600])
    assert len(kinds(records, "promotion")) >= 2
    highest = max(registry.versions())

    registry.rollback(1, actor="ops:test", reason="v2 mislabels senior roles")
    runtime.follow_registry()
    assert runtime.serving_version == 1
    adopted = kinds(records, "adopted")[-1]
    assert adopted["reason"] == "rollback by ops:test: v2 mislabels senior roles"
    assert adopted["actor"] == "ops:test"
    assert adopted["change"] == "rollback"
    v1 = OnlineLearner.from_files(registry.read(1).files, device="cpu")
    sample = EVENTS[3000:3020]
    assert runtime.learner.predict(sample) == v1.predict(sample)

    feed(runtime, EVENTS[2600:3400])
    later = [p for p in kinds(records, "promotion") if p["version"] > highest]
    assert later[0]["parent"] == 1
    assert registry.describe(later[0]["version"]).parent == 1
    assert kinds(records, "learned_from_adopted")[0]["version"] == 1


def several_versions(
    tmp_path: Path, clock: FakeClock, registry: Registry
) -> tuple[JobRuntime, list[dict[str, Any]]]:
    """A runtime that published at least two versions, with v2 or later serving."""
    runtime, records = make_runtime(
        tmp_path, clock, registry, gate_metric="top5", gate_tolerance=0.5
    )
    feed(runtime, EVENTS[:2600])
    assert runtime.serving_version is not None
    assert runtime.serving_version > 1
    return runtime, records


def test_ticks_follow_unannounced_rollback(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, _ = several_versions(tmp_path, clock, registry)
    registry.rollback(1, actor="ops:test", reason="no announcement")

    clock.now += POINTER_CHECK_S - 1
    runtime.handle_tick()
    assert runtime.serving_version != 1
    clock.now += 1
    runtime.handle_tick()
    assert runtime.serving_version == 1


def test_operator_rollback_stands(tmp_path: Path) -> None:
    # The versions the operator rolled back from must not come back through
    # the job's automatic rollback, even when they score better.
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(
        tmp_path, FakeClock(), registry, gate_metric="top5", gate_tolerance=0.5
    )
    feed(runtime, EVENTS[:2600])
    left_behind = set(registry.versions()) - {1}
    assert left_behind

    registry.rollback(1, actor="ops:test", reason="test")
    runtime.follow_registry()
    feed(runtime, EVENTS[2600:4000])

    returned = [r for r in kinds(records, "rollback") if r["to_version"] in left_behind]
    assert returned == []
    assert runtime.serving_version not in left_behind


def test_unloadable_version_not_adopted(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    feed(runtime, EVENTS[:1500])
    serving = runtime.serving_version
    assert serving is not None
    fingerprint = registry.describe(serving).fields.fingerprint

    broken = registry.publish(
        {"learner.json": b'{"format": 99}'},
        {"fingerprint": fingerprint},
        actor="ops:test",
        reason="a version this learner cannot read",
        move_pointer=False,
    )
    registry.set_serving(broken, actor="ops:test", reason="test")
    runtime.follow_registry()
    runtime.follow_registry()

    assert runtime.serving_version == serving
    failures = kinds(records, "adopt_failed")
    assert [f["version"] for f in failures] == [broken]
    feed(runtime, EVENTS[1500:2000])
    assert_adds_up(runtime)


def permissive_runtime(
    tmp_path: Path, registry: Registry
) -> tuple[JobRuntime, list[dict[str, Any]]]:
    """A runtime whose gate promotes anything, with a small holdout window."""
    return make_runtime(
        tmp_path,
        FakeClock(),
        registry,
        learner_config=LearnerConfig(hidden_units=64),
        gate_tolerance=100.0,
        holdout_window_size=150,
    )


def test_wrong_labels_roll_back_once(tmp_path: Path) -> None:
    # A gate that promotes anything lets bad versions out. Once clean events
    # refill the (small) holdout window, the check at each gate must bring
    # back a version from before the burst, and only once. A learner with a
    # hidden layer unlearns the burst more slowly than the default one,
    # which on these events is back within the rollback margin before the
    # window is clean, so the job rightly adapts instead.
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = permissive_runtime(tmp_path, registry)
    feed(runtime, EVENTS[:2500])
    good = runtime.serving_version
    assert good is not None
    feed(runtime, wrong_labels(EVENTS[2500:3700]))
    assert runtime.serving_version is not None
    assert runtime.serving_version > good
    feed(runtime, EVENTS[3700:5500])

    rollbacks = kinds(records, "rollback")
    assert len(rollbacks) == 1
    assert runtime.account.rollbacks_automatic == 1
    rollback = rollbacks[0]
    assert rollback["to_version"] < rollback["from_version"]
    assert rollback["to_version"] <= good
    assert rollback["target_value"] < rollback["serving_value"]
    changes = [c for c in registry.history() if c.kind == "auto_rollback"]
    assert len(changes) == 1
    assert changes[0].to_version == rollback["to_version"]


def test_gate_rollback_validates_no_copy(tmp_path: Path) -> None:
    # Without drift detectors only the check at each gate can roll back. The
    # gate that rolls back must not then publish the learner, which is only
    # a copy of the version it returned to.
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = permissive_runtime(tmp_path, registry)
    runtime.drift = DriftMonitor(DriftMonitorConfig(adwin=None, page_hinkley=None))
    feed(runtime, EVENTS[:2500])
    feed(runtime, wrong_labels(EVENTS[2500:3700]))
    feed(runtime, EVENTS[3700:5500])

    rollback = kinds(records, "rollback")[0]
    assert rollback["reason"].startswith("gate check:")
    after = records[records.index(rollback) + 1 :]
    first = next(r for r in after if r["kind"] == "promotion")
    assert first["parent"] == rollback["to_version"]
    assert first["candidate_value"] != first["serving_value"]
    published = registry.read(first["version"]).files
    assert published != registry.read(rollback["to_version"]).files


def test_drop_without_better_version_alerts(tmp_path: Path) -> None:
    runtime, records = make_runtime(tmp_path, FakeClock(), gate_every_micro_batches=100)
    feed(runtime, EVENTS[:1500])
    runtime.finish()
    assert runtime.serving_version == 1
    runtime.confirm_drop()
    assert kinds(records, "rollback") == []
    assert len(kinds(records, "alert")) == 1
    assert runtime.serving_version == 1


def test_pause_keeps_pointer(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    feed(runtime, EVENTS[:1500])
    serving = registry.serving()
    registry.pause(actor="ops:test", reason="incident")
    feed(runtime, EVENTS[1500:3000], size=100)
    assert kinds(records, "promotion_paused")
    assert registry.serving() == serving
    assert runtime.serving_version == serving


def test_checkpoint_restore_continues(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = open_registry(tmp_path / "registry", create=True)
    first, _ = make_runtime(tmp_path, clock, registry)
    feed(first, EVENTS[:1700])
    first.save_checkpoint()

    second, records = make_runtime(tmp_path, clock, registry)
    second.restore(first.checkpoint_number)
    assert second.account == first.account
    assert second.serving_version == first.serving_version
    assert list(second.holdout) == list(first.holdout)
    assert second.pending == first.pending
    sample = EVENTS[3000:3010]
    assert second.learner.predict(sample) == first.learner.predict(sample)

    feed(second, EVENTS[1500:1700])
    assert second.account.duplicates == 200
    assert kinds(records, "restored")[0]["learned"] == first.account.learned


def test_restore_survives_damaged_serving(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = open_registry(tmp_path / "registry", create=True)
    first, _ = several_versions(tmp_path, clock, registry)
    first.save_checkpoint()
    damaged = first.serving_version
    assert damaged is not None
    folder = tmp_path / "registry" / "versions" / f"v{damaged:06d}"
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])

    # Still served by the pointer: the restart goes on without a version,
    # and its gates publish nothing until an operator moves the pointer.
    second, records = make_runtime(tmp_path, clock, registry)
    second.restore(first.checkpoint_number)
    assert second.serving_version is None
    assert kinds(records, "restore_serving_failed")[0]["version"] == damaged
    assert second.account == first.account
    versions_before = registry.versions()
    feed(second, EVENTS[2600:3600])
    blocked = kinds(records, "publish_blocked")
    assert blocked
    assert (
        f"the registry serves v{damaged}, which this job cannot load"
        in (blocked[0]["reason"])
    )
    assert registry.versions() == versions_before
    assert kinds(records, "adopt_failed") == []

    # After an operator's rollback, the restart serves the pointer's version.
    registry.rollback(1, actor="ops:test", reason="damaged weights")
    third, _ = make_runtime(tmp_path, clock, registry)
    third.restore(first.checkpoint_number)
    assert third.serving_version == 1


def test_restart_numbers_candidates_on(tmp_path: Path) -> None:
    # The killed run named candidates up to c7 after its last checkpoint,
    # and its log ends with a line cut short.
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log({"kind": "promotion", "candidate": "c3", "version": 2})
    log({"kind": "rejection", "candidate": "c7"})
    log({"kind": "checkpoint", "number": 4})
    with open(log.path, "a", encoding="utf-8") as stream:
        stream.write('{"kind": "promotion", "candidate": "c9"')
    assert log.last_candidate_number() == 7
    assert DecisionLog(tmp_path / "none.jsonl").last_candidate_number() == 0

    # The next run's log starts a new line after the cut one.
    DecisionLog(log.path)({"kind": "alert", "reason": "after the crash"})
    records = read_decisions(log.path)
    assert [r["kind"] for r in records] == [
        "promotion",
        "rejection",
        "checkpoint",
        "alert",
    ]

    runtime, records = make_runtime(tmp_path, FakeClock())
    runtime.last_candidate_number = log.last_candidate_number()
    feed(runtime, EVENTS[:2600])
    validated = [r for r in records if r["kind"] in ("promotion", "rejection")]
    assert [r["candidate"] for r in validated[:2]] == ["c8", "c9"]


def test_restore_skips_pending_of_later_version(tmp_path: Path) -> None:
    # The killed run published a version after the checkpoint, and that
    # version learned the checkpoint's pending events. The restarted run
    # must not learn them again on top of it.
    clock = FakeClock()
    registry = open_registry(tmp_path / "registry", create=True)
    first, _ = make_runtime(tmp_path, clock, registry)
    feed(first, EVENTS[:1650], size=50)
    first.save_checkpoint()
    learned_at_checkpoint = first.account.learned
    pending_at_checkpoint = list(first.pending)
    assert pending_at_checkpoint
    feed(first, EVENTS[1650:2600], size=50)
    newest = registry.serving()
    assert newest is not None
    in_version = registry.describe(newest).fields.events_count
    assert in_version - learned_at_checkpoint > len(pending_at_checkpoint)

    second, records = make_runtime(tmp_path, clock, registry)
    second.restore(first.checkpoint_number)
    assert second.serving_version == newest
    assert second.pending == []
    assert second.account.learned == learned_at_checkpoint + len(pending_at_checkpoint)
    assert kinds(records, "skipped_pending")[0]["events"] == len(pending_at_checkpoint)
    assert_adds_up(second)


def test_restore_keeps_pending_of_older_pointer(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = open_registry(tmp_path / "registry", create=True)
    first, _ = make_runtime(tmp_path, clock, registry)
    feed(first, EVENTS[:2600], size=50)
    assert first.serving_version is not None
    assert first.serving_version >= 2
    first.save_checkpoint()
    pending_at_checkpoint = list(first.pending)
    # An operator moves the pointer to v1, which learned less than the
    # checkpoint: nothing of the pending batch is in it.
    registry.set_serving(1, reason="test", actor="ops:test")

    second, records = make_runtime(tmp_path, clock, registry)
    second.restore(first.checkpoint_number)
    assert second.serving_version == 1
    assert second.pending == pending_at_checkpoint
    assert kinds(records, "skipped_pending") == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("micro_batch_size", 0),
        ("holdout_fraction", 1.0),
        ("gate_metric", "accuracy"),
        ("checkpoint_every_s", -1.0),
        ("gate_min_interval_s", -1.0),
        ("gate_min_interval_s", float("inf")),
        ("max_labels", 0),
    ],
)
def test_config_rejects_invalid(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        JobConfig(**{name: value})


def test_gate_metrics_reach_report(tmp_path: Path) -> None:
    clock = FakeClock()
    session = mon.open_telemetry(
        mon.TelemetryConfig(
            job="t", model="job_postings", run_dir=tmp_path, resource_interval_s=0
        ),
        clock=clock,
    )
    runtime, records = make_runtime(tmp_path, clock, telemetry=session.telemetry)
    feed(runtime, EVENTS[:3000])
    session.close()
    run = read_run(tmp_path)

    gates = [r for r in records if r["kind"] in ("promotion", "rejection")]
    assert len(gates) >= 3
    assert [g["candidate"] for g in gates] == [
        f"c{n}" for n in range(1, len(gates) + 1)
    ]
    candidates = {
        dict(key)["version"]
        for key in run.gauges["holdout/top5_accuracy"]
        if dict(key)["role"] == "candidate"
    }
    assert candidates == {g["candidate"] for g in gates}

    # One holdout confusion matrix per gate, of the version serving after it,
    # counting every holdout event once.
    assert len(run.confusions) == len(gates)
    last = run.confusions[-1]
    assert last.source == "holdout"
    assert last.version == f"v{runtime.serving_version}"
    assert sum(last.counts.values()) == gates[-1]["holdout_events"]
    assert run.confusions[0].version == "v1"

    latest_ms = max(
        int(e["event_time"].timestamp() * 1000)
        for e in EVENTS[:3000]
        if holdout_share(e["event_id"]) >= 0.1
    )
    decisions = [e for e in run.events if e.kind in ("promotion", "rejection")]
    assert len(decisions) == len(gates)
    for event in decisions:
        assert event.event_time_ms is not None
        assert event.event_time_ms <= latest_ms
    first, last_decision = decisions[0].event_time_ms, decisions[-1].event_time_ms
    assert first is not None
    assert last_decision is not None
    assert first < last_decision


def test_summary_names_versions(tmp_path: Path) -> None:
    runtime, records = make_runtime(tmp_path, FakeClock())
    feed(runtime, EVENTS[:2500])
    feed(runtime, wrong_labels(EVENTS[2500:3500]))
    summary = {
        "elapsed_s": 1.0,
        "events_per_s": 1.0,
        "serving_version": runtime.serving_version,
        "registry": "runs/r/registry",
        **runtime.account.to_dict(),
        "decisions": [r for r in records if r["kind"] in ("promotion", "rejection")],
    }
    text = render_summary(summary)
    promotion = next(r for r in records if r["kind"] == "promotion")
    assert f"published c1 as v1 (parent none): {promotion['reason']} (" in text
    assert "None" not in text
    assert "registry             runs/r/registry" in text
    rejection = next(r for r in records if r["kind"] == "rejection")
    candidate = rejection["candidate"]
    assert f"rejected {candidate}, kept v{rejection['serving_version']}:" in text
    assert f"holdout top-1 {rejection['candidate_top1']:.3f}, top-5" in text
    assert f"    pending              {runtime.account.pending}\n" in text
    assert "dead letters         0 (bad messages" in text
    assert_adds_up(runtime)
    summary["dead_lettered"] = {"undecodable": 2, "invalid-event": 1}
    assert "dead letters         3 [invalid-event 1, undecodable 2] (bad" in (
        render_summary(summary)
    )


def test_progress_shows_label_limit_once_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock(), max_labels=1)
    arguments = argparse.Namespace(format="text")
    _print_progress(arguments, runtime, 1.0, 0.0)
    feed(runtime, EVENTS[:300])
    _print_progress(arguments, runtime, 2.0, 0.0)

    before, after = capsys.readouterr().out.splitlines()
    assert "over label limit" not in before
    over = runtime.account.over_label_limit
    assert f"| dead letters 0 | over label limit {over} | duplicates 0 |" in after


def test_failed_publish_and_checkpoint_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    real_publish, real_save = registry.publish, runtime.checkpoints.save

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise RegistryNotWritable("No space left on device")

    def checkpoint_disk_full(*args: Any, **kwargs: Any) -> Any:
        raise CheckpointError("failed to write checkpoint 1: No space left")

    monkeypatch.setattr(registry, "publish", disk_full)
    monkeypatch.setattr(runtime.checkpoints, "save", checkpoint_disk_full)
    feed(runtime, EVENTS[:1500])
    runtime.save_checkpoint()

    failed = kinds(records, "publish_failed")
    assert failed
    assert "No space left on device" in failed[0]["reason"]
    assert runtime.serving_version is None
    assert runtime.checkpoint_number == 0
    assert runtime.account.checkpoints == 0
    assert runtime.account.checkpoints_failed == 1
    assert_adds_up(runtime)

    monkeypatch.setattr(registry, "publish", real_publish)
    monkeypatch.setattr(runtime.checkpoints, "save", real_save)
    feed(runtime, EVENTS[1500:2600])
    runtime.save_checkpoint()
    assert runtime.serving_version is not None
    assert kinds(records, "checkpoint")[-1]["number"] == 1


def test_summary_reads_torn_log(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log({"kind": "adopt_failed", "version": 3, "error": "v3 is corrupt"})
    with open(log.path, "a", encoding="utf-8") as stream:
        stream.write('{"kind": "promotion", "candidate": "c7"')

    records = account_decisions(log.path)

    assert [r["kind"] for r in records] == ["adopt_failed"]
    text = render_summary(
        {
            "elapsed_s": 1.0,
            "events_per_s": 1.0,
            "serving_version": None,
            **Account().to_dict(),
            "decisions": records,
        }
    )
    assert "  could not load v3: v3 is corrupt" in text
    assert "  events per second    1.0 (while events arrived)" in text


def test_summary_after_idle_restart() -> None:
    restored = {"kind": "restored", "number": 14, "events_read": 32672}
    text = render_summary(
        {
            "elapsed_s": 9.0,
            "events_per_s": 0.0,
            "serving_version": 2,
            **Account().to_dict(),
            "decisions": [{**restored, "learned": 29465, "pending": 0}],
        }
    )
    assert "  events per second    none (no event arrived in this run)" in text
    assert (
        "  restored checkpoint 14: 32672 events read and 29465 learned before this run"
    ) in text


def test_publish_lost_to_pause_recorded(tmp_path: Path) -> None:
    # The operator pauses after the job's own check and before its publish.
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    feed(runtime, EVENTS[:1500])
    assert runtime.serving_version is not None
    registry.pause("ops:test", "incident")
    runtime._promotion_paused = lambda: False  # type: ignore[method-assign]
    feed(runtime, EVENTS[1500:3000])

    lost = kinds(records, "publish_lost_race")
    assert lost
    assert "paused" in lost[0]["reason"]
    account = runtime.account
    decided = (
        account.versions_published
        + account.candidates_rejected
        + account.promotions_paused
        + len(lost)
    )
    assert decided == account.candidates_validated
    text = render_summary(
        {
            "elapsed_s": 1.0,
            "events_per_s": 1.0,
            "serving_version": runtime.serving_version,
            **account.to_dict(),
            "decisions": lost,
        }
    )
    assert f"did not publish {lost[0]['candidate']}: automatic promotion" in text


def test_reading_rate_leaves_out_idle_polls() -> None:
    rate = _ReadingRate()
    rate.observe(0.0, 0)
    assert rate.rate(elapsed_s=1.0) == 0.0
    rate.observe(1.0, 100)
    rate.observe(2.0, 1100)
    rate.observe(3.0, 2100)
    # No new events after 3 s: the idle polls do not lower the rate.
    rate.observe(4.0, 2100)
    rate.observe(9.0, 2100)
    assert rate.rate(elapsed_s=9.0) == 1000.0


def test_reading_rate_leaves_out_gaps() -> None:
    # Two bursts of 1,000 events/s with 47 idle seconds between them.
    rate = _ReadingRate()
    for moment, read in [(0, 0), (1, 100), (2, 1100), (3, 2100), (50, 2100)]:
        rate.observe(float(moment), read)
    for moment, read in [(51, 3100), (52, 4100), (60, 4100)]:
        rate.observe(float(moment), read)
    assert rate.rate(elapsed_s=60.0) == 1000.0


def test_reading_rate_counts_message_steps() -> None:
    # 500-event messages every 0.25 s, polled every 0.05 s: 2,000 events/s.
    rate = _ReadingRate()
    for poll in range(200):
        moment = poll * 0.05
        rate.observe(moment, 500 * int(moment / 0.25 + 1e-9))
    assert rate.rate(elapsed_s=10.0) == pytest.approx(2000.0)


def test_reading_rate_leaves_out_restored_events() -> None:
    # A run restored with 3,000 events read that reads nothing more.
    rate = _ReadingRate()
    for moment in range(10):
        rate.observe(float(moment), 3000)
    assert rate.rate(elapsed_s=10.0) == 0.0

    # All of this run's events arrived before one poll: over the run's time.
    rate = _ReadingRate()
    rate.observe(0.0, 3000)
    rate.observe(1.0, 3500)
    assert rate.rate(elapsed_s=2.0) == 250.0

    # With the restored count known, events read before the first poll count.
    rate = _ReadingRate(restored=3000)
    rate.observe(0.0, 3500)
    rate.observe(1.0, 3500)
    assert rate.rate(elapsed_s=2.0) == 250.0


def test_loads_not_logged_as_new(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, records = make_runtime(tmp_path, FakeClock())
    with caplog.at_level(logging.INFO):
        feed(runtime, EVENTS[:3000])
    gates = [r for r in records if r["kind"] in ("promotion", "rejection")]
    assert len(gates) >= 3
    learner_lines = [
        r.getMessage() for r in caplog.records if r.name == "online_model.learner"
    ]
    # The runtime builds one learner at start; publishing, rejecting and
    # adopting load stored learners, which must not log their set-up again.
    assert [m for m in learner_lines if m.startswith("learner for spec")] == []
    # Each label is new once, so the label count grows with every line.
    totals = [
        int(m.rsplit(" ", 1)[1])
        for m in learner_lines
        if m.startswith("new labels") and "the model now has" in m
    ]
    assert totals
    assert totals == sorted(set(totals))
    assert totals[-1] == len(runtime.learner.labels)


def test_finish_follows_late_rollback(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(
        tmp_path, FakeClock(), registry, gate_metric="top5", gate_tolerance=0.5
    )
    feed(runtime, EVENTS[:2600])
    assert runtime.serving_version is not None
    assert runtime.serving_version > 1
    registry.pause(actor="ops:test", reason="incident")
    registry.rollback(1, actor="ops:test", reason="late rollback")
    feed(runtime, EVENTS[2600:2700])

    runtime.finish()
    assert runtime.serving_version == 1
    assert registry.serving() == 1
    assert kinds(records, "adopted")[-1]["version"] == 1
    assert kinds(records, "promotion_paused")


def test_control_messages_counted(tmp_path: Path) -> None:
    runtime, _ = make_runtime(tmp_path, FakeClock())
    runtime.handle_tick()
    runtime.handle_tick()
    runtime.handle_pointer_notice()
    runtime.handle_batch(EventBatch([], {"invalid-control": 1}))
    assert runtime.account.control_messages == 3
    assert runtime.account.messages_read == 1
    assert runtime.account.dead_lettered == {"invalid-control": 1}


def test_kswin_feature_raises_drift_alarm(tmp_path: Path) -> None:
    runtime, records = make_runtime(
        tmp_path, FakeClock(), kswin_features=("salary_year_avg",), kswin_sample_every=1
    )
    feed(runtime, EVENTS[:2000])
    assert kinds(records, "drift_alarm") == []

    # The same postings, paid a thousand times more.
    shifted = [
        {**e, "event_id": e["event_id"] + "-x", "salary_year_avg": 1000 * value}
        for e in EVENTS[2000:3000]
        if (value := e["salary_year_avg"]) is not None
    ]
    feed(runtime, shifted)

    alarms = kinds(records, "drift_alarm")
    assert [a["detector"] for a in alarms] == ["kswin_salary_year_avg"]
    assert runtime.account.drift_alarms == 1


def test_version_of_other_spec_not_adopted(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    feed(runtime, EVENTS[:1500])
    serving = runtime.serving_version
    assert serving is not None

    # A survey learner, published to this job's registry by another job.
    survey = OnlineLearner(load_spec("so_survey_2016"), seed=0, device="cpu")
    survey.learn(list(itertools.islice(iter_events("so_survey_2016"), 300)))
    other = registry.publish(
        survey.to_files(),
        {"fingerprint": survey.fingerprint},
        actor="job:survey",
        reason="another job's version",
    )
    runtime.follow_registry()

    assert runtime.serving_version == serving
    failures = kinds(records, "adopt_failed")
    assert [f["version"] for f in failures] == [other]
    assert "saved for the feature spec 'so_survey_2016'" in failures[0]["error"]
    assert (
        "its event label field is 'occupation', the job's 'job_role'"
        in (failures[0]["error"])
    )
    feed(runtime, EVENTS[1500:2000])
    assert_adds_up(runtime)


def test_spec_mismatch_allows_new_fields_and_settings() -> None:
    job = load_spec("job_postings")
    # Saved before the schema had 'skills', and with other feature weights.
    saved = dataclasses.replace(
        job,
        fields=tuple(
            dataclasses.replace(f, weight=2.0) for f in job.fields if f.name != "skills"
        ),
        avro_fields={k: v for k, v in job.avro_fields.items() if k != "skills"},
    )
    assert spec_mismatch(saved, job) is None


def test_spec_mismatch_field_the_job_lacks() -> None:
    job = load_spec("job_postings")
    raw = job.to_dict()
    schema = copy.deepcopy(raw["schema"])
    schema["fields"].append(
        {"name": "posting_url", "type": ["null", "string"], "default": None}
    )
    saved = spec_from_dict({**raw, "schema": schema})

    # No feature reads the field, but the saved learner rejects every event
    # without it as missing_field, so it cannot learn this job's events.
    assert spec_mismatch(saved, job) == (
        "the job's events lack or type differently the fields posting_url"
    )
    learner = OnlineLearner(saved, seed=0, device="cpu")
    assert dict(learner.learn(EVENTS[:50]).invalid) == {"missing_field": 50}


def test_deleted_serving_version_stops_publishing(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    feed(runtime, EVENTS[:3000])
    serving = runtime.serving_version
    assert serving is not None and serving >= 2
    folder = tmp_path / "registry" / "versions" / f"v{serving:06d}"
    moved_away = tmp_path / "moved-away"
    shutil.move(folder, moved_away)

    feed(runtime, EVENTS[3000:5000])

    failed = kinds(records, "publish_failed")
    assert len(failed) == 1
    assert (
        f"the serving version v{serving} is missing or damaged" in (failed[0]["reason"])
    )
    blocked = kinds(records, "publish_blocked")
    assert blocked
    assert all(f"version v{serving} is missing" in r["reason"] for r in blocked)

    # The folder comes back: the next gates publish again.
    shutil.move(moved_away, folder)
    feed(runtime, EVENTS[5000:5500])
    assert len(kinds(records, "publish_blocked")) == len(blocked)
    assert runtime.serving_version is not None
    assert runtime.serving_version > serving
    assert_adds_up(runtime)


def test_deleted_serving_version_rolled_back(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(tmp_path, FakeClock(), registry)
    feed(runtime, EVENTS[:3000])
    serving = runtime.serving_version
    assert serving is not None and serving >= 2
    shutil.rmtree(tmp_path / "registry" / "versions" / f"v{serving:06d}")
    feed(runtime, EVENTS[3000:5000])
    assert len(kinds(records, "publish_failed")) == 1

    registry.rollback(serving - 1, actor="ops:test", reason="v gone")
    runtime.follow_registry()
    feed(runtime, EVENTS[5000:5500])

    assert runtime.serving_version is not None
    assert runtime.serving_version > serving
    assert_adds_up(runtime)


def test_idle_job_writes_no_new_checkpoint(tmp_path: Path) -> None:
    clock = FakeClock()
    runtime, records = make_runtime(tmp_path, clock, checkpoint_every_s=5.0)
    feed(runtime, EVENTS[:600])
    clock.now += 6
    runtime.handle_tick()
    written = runtime.checkpoint_number
    assert written >= 1

    # Ticks alone change nothing a checkpoint holds.
    for _ in range(5):
        clock.now += 6
        runtime.handle_tick()
    assert runtime.checkpoint_number == written

    # An event does.
    feed(runtime, EVENTS[600:601])
    clock.now += 6
    runtime.handle_tick()
    assert runtime.checkpoint_number == written + 1
    assert len(kinds(records, "checkpoint")) == written + 1


def test_gate_after_adoption_publishes_no_copy(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, records = make_runtime(
        tmp_path, FakeClock(), registry, gate_metric="top5", gate_tolerance=0.5
    )
    feed(runtime, EVENTS[:2600])
    # Not followed at once: the next gate finds the operator's rollback.
    registry.rollback(1, actor="ops:test", reason="test")

    feed(runtime, EVENTS[2600:5500], size=128)

    positions = {kind: [] for kind in ("adopted", "learned_from_adopted", "promotion")}
    for position, record in enumerate(records):
        positions.get(record["kind"], []).append(position)
    adopted = positions["adopted"][0]
    learned = positions["learned_from_adopted"][0]
    later = [p for p in positions["promotion"] if p > adopted]
    # A promotion comes only after v1's copy learned something.
    assert later
    assert all(p > learned for p in later)
    assert records[later[0]]["parent"] == 1


def test_candidate_number_skips_odd_names(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log({"kind": "rejection", "candidate": "c7"})
    # Hand-edited names that are no candidate numbers are passed over.
    log({"kind": "rejection", "candidate": "c\u00b2"})
    log({"kind": "rejection", "candidate": "c" + "9" * 5000})
    log({"kind": "rejection", "candidate": ["c8"]})

    assert log.last_candidate_number() == 7


def test_unreadable_pointer_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    runtime, _ = make_runtime(tmp_path, FakeClock(), registry)
    readable = registry.state

    def unreadable() -> Any:
        raise RegistryError("state.json is damaged")

    monkeypatch.setattr(registry, "state", unreadable)
    with caplog.at_level(logging.INFO, logger="streaming.runtime"):
        for _ in range(3):
            runtime.follow_registry()
        monkeypatch.setattr(registry, "state", readable)
        runtime.follow_registry()

    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot read the serving pointer" in m for m in messages) == 1
    assert "the serving pointer is readable again" in messages
