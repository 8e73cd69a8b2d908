"""The job declares its learner state format, so rollbacks check it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from online_model.datasets import iter_events
from online_model.learner import (
    STATE_FORMAT,
    STATE_FORMAT_NAME,
    LearnerConfig,
    OnlineLearner,
)
from online_model.spec import load_spec
from rollback import cli as rollback_cli
from rollback.manifest import ManifestFields
from rollback.registry import open_registry
from streaming import monitoring as mon
from streaming.job_config import JobConfig
from streaming.pipeline import _SLOTS, JobSettings, Learn, build_runtime, runtime_slot
from streaming.runtime import EventBatch

SPEC = load_spec("job_postings")
EVENTS = list(itertools.islice(iter_events("job_postings"), 2000))


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[JobSettings]:
    """Settings of a job that publishes a first version within 2,000 events."""
    config = JobConfig(
        micro_batch_size=128,
        gate_every_micro_batches=4,
        gate_every_s=10_000.0,
        gate_min_interval_s=0.0,
        holdout_min_events=100,
        checkpoint_every_s=10_000.0,
    )
    yield JobSettings(
        job_name=f"formats-{tmp_path.name}",
        project="streamlearn-local",
        spec_name="job_postings",
        registry_url=str(tmp_path / "registry"),
        run_dir=str(tmp_path / "run"),
        config=config,
        announce=False,
        metrics_file=False,
    )
    mon.close_shared_telemetry()


def run_until_published(settings: JobSettings) -> Any:
    runtime = build_runtime(settings)
    for start in range(0, len(EVENTS), 250):
        runtime.handle_batch(EventBatch(EVENTS[start : start + 250]))
    return runtime


def publish_other(registry_url: str, state_format: str) -> int:
    """Publish a version as another publisher would, leaving the pointer."""
    registry = open_registry(registry_url)
    learner = OnlineLearner(SPEC, seed=1, device="cpu")
    fields = ManifestFields(fingerprint=learner.fingerprint, state_format=state_format)
    return registry.publish(
        learner.to_files(), fields, "test", state_format, move_pointer=False
    )


def test_state_format_names_learner_format() -> None:
    assert f"online-learner/{STATE_FORMAT}" == STATE_FORMAT_NAME


def test_job_records_running_state_format(settings: JobSettings) -> None:
    runtime = build_runtime(settings)

    registry = open_registry(settings.registry_url)
    assert registry.running_fingerprint() == runtime.learner.fingerprint
    assert registry.running_state_format() == STATE_FORMAT_NAME


def test_job_records_fingerprint_of_restored_learner(settings: JobSettings) -> None:
    # A version saved with other settings, as by an earlier release.
    older = OnlineLearner(SPEC, LearnerConfig(learning_rate=0.05), seed=0, device="cpu")
    default_fingerprint = OnlineLearner(SPEC, seed=0, device="cpu").fingerprint
    registry = open_registry(settings.registry_url, create=True)
    fields = ManifestFields(
        fingerprint=older.fingerprint, state_format=STATE_FORMAT_NAME
    )
    registry.publish(older.to_files(), fields, "test", "earlier release")

    followed = build_runtime(settings)
    followed.save_checkpoint()
    restored = build_runtime(settings)

    assert older.fingerprint != default_fingerprint
    assert followed.learner.fingerprint == older.fingerprint
    assert restored.learner.fingerprint == older.fingerprint
    assert registry.running_fingerprint() == older.fingerprint


def test_job_versions_declare_state_format(settings: JobSettings) -> None:
    runtime = run_until_published(settings)

    registry = open_registry(settings.registry_url)
    versions = registry.versions()
    assert runtime.account.versions_published >= 1
    assert len(versions) == runtime.account.versions_published
    for version in versions:
        assert registry.describe(version).fields.state_format == STATE_FORMAT_NAME


def test_rollback_rejects_other_state_format(
    settings: JobSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = run_until_published(settings)
    serving = runtime.serving_version
    other = publish_other(settings.registry_url, "online-learner/999")
    same = publish_other(settings.registry_url, STATE_FORMAT_NAME)
    argv = ["--registry", settings.registry_url, "--reason", "test"]
    capsys.readouterr()

    assert rollback_cli.main([*argv, "--to", f"v{other}"]) == 1
    error = capsys.readouterr().err
    assert "learner state format 'online-learner/999' differs from the running " in (
        error
    )
    assert f"job's {STATE_FORMAT_NAME!r}" in error
    assert open_registry(settings.registry_url).serving() == serving

    assert rollback_cli.main([*argv, "--to", f"v{same}"]) == 0
    assert open_registry(settings.registry_url).serving() == same


def test_restart_before_checkpoint_numbers_on(settings: JobSettings) -> None:
    # A run killed before its first checkpoint named c1 and c2.
    log = Path(settings.run_dir) / "decisions.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"kind": "rejection", "candidate": "c2"}\n', encoding="utf-8")

    run_until_published(settings)

    records = [json.loads(line) for line in log.read_text().splitlines()]
    named = [r["candidate"] for r in records[1:] if "candidate" in r]
    assert named
    assert named == [f"c{number}" for number in range(3, 3 + len(named))]


class _State:
    """Beam's per-key state as Learn uses it: one value, read and written."""

    def __init__(self) -> None:
        self.value: int | None = None

    def read(self) -> int | None:
        return self.value

    def write(self, value: int) -> None:
        self.value = value


def test_learn_stage_error_counted_once(
    settings: JobSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error inside the runtime must not reach the runner, which would run
    # the input again and count its events twice.
    stage = Learn(settings)
    runtime = runtime_slot(settings).runtime
    try:

        def broken(events: Any) -> Any:
            raise RuntimeError("learner broke")

        monkeypatch.setattr(runtime.learner, "learn", broken)
        batch = EventBatch(EVENTS[:300])
        list(stage.process(("learner", batch), checkpoint=_State()))

        assert runtime.account.stage_errors == 1
        assert runtime.account.events_read == 300
    finally:
        _SLOTS.pop(settings.job_name, None)
