"""Checkpoint stores on a local folder and on fake-gcs-server.

fake-gcs-server is started on 127.0.0.1 by tests/conftest.py. It enforces
generation preconditions, so the compare-and-swap of the checkpoint pointer
is really exercised.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from online_model.datasets import iter_events
from rollback.backends.base import Blob
from streaming import deploy, job
from streaming import monitoring as mon
from streaming.checkpoint import CheckpointConflict, CheckpointError, CheckpointStore
from streaming.job_config import JobConfig
from streaming.pipeline import JobSettings, build_runtime
from streaming.runtime import EventBatch

FILES = {"state.json": b'{"learned": 3}', "holdout.avro": b"\x00" * 1000}
RUN_ARGS = ["--registry", "registry", "--run-dir", "run"]
DEPLOY_ARGS = [
    "--project",
    "demo-project",
    "--region",
    "us-central1",
    "--temp-location",
    "gs://demo-bucket/tmp/",
    "--registry",
    "gs://demo-bucket/models",
    "--job-name",
    "roles",
]


@pytest.fixture(params=["local", "gcs"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A checkpoint location for each backend; the contract must hold on both."""
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/jobs/j1/checkpoints"


def read_object(location: str, key: str) -> bytes:
    if location.startswith("gs://"):
        from rollback.backends.gcs import GcsStorage

        blob = GcsStorage(location).read(key)
        assert blob is not None
        return blob.data
    return (Path(location) / key).read_bytes()


def write_object(location: str, key: str, data: bytes) -> None:
    if location.startswith("gs://"):
        from rollback.backends.gcs import GcsStorage

        GcsStorage(location).put(key, data)
    else:
        (Path(location) / key).write_bytes(data)


# ---------------------------------------------------------------- the contract


def test_empty_location_has_none(location: str) -> None:
    assert CheckpointStore(location).latest() is None


def test_saved_checkpoint_loads(location: str) -> None:
    CheckpointStore(location).save(1, FILES)

    restarted = CheckpointStore(location)
    assert restarted.latest() == 1
    assert restarted.load(1) == FILES


def test_newest_checkpoint_is_current(location: str) -> None:
    store = CheckpointStore(location)
    store.save(1, FILES)
    store.save(2, {"state.json": b"two"})
    store.save(3, {"state.json": b"three", "pending.avro": b"p"})

    restarted = CheckpointStore(location)
    assert restarted.latest() == 3
    assert restarted.load(3) == {"state.json": b"three", "pending.avro": b"p"}
    with pytest.raises(FileNotFoundError, match="the current checkpoint is 3"):
        restarted.load(2)


def test_failed_save_keeps_previous(location: str) -> None:
    store = CheckpointStore(location)
    store.save(1, FILES)
    store.save(2, {"state.json": b"two"})
    written: list[str] = []
    put = store._storage.put

    def put_then_fail(key: str, data: bytes) -> None:
        put(key, data)
        written.append(key)
        if len(written) == 2:
            raise KeyboardInterrupt  # stands for a kill between two files

    store._storage.put = put_then_fail  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        store.save(3, {"a.bin": b"a", "b.bin": b"b", "c.bin": b"c"})

    restarted = CheckpointStore(location)
    assert written == ["slot-0/a.bin", "slot-0/b.bin"]
    assert restarted.latest() == 2
    assert restarted.load(2) == {"state.json": b"two"}
    restarted.save(3, FILES)
    assert CheckpointStore(location).load(3) == FILES


def test_second_writer_gets_conflict(location: str) -> None:
    first = CheckpointStore(location)
    stale = CheckpointStore(location)
    assert first.latest() is None
    assert stale.latest() is None
    first.save(1, FILES)

    with pytest.raises(CheckpointConflict, match="checkpoint 1 was not made current"):
        stale.save(1, {"state.json": b"stale"})

    assert CheckpointStore(location).load(1) == FILES
    first.save(2, {"state.json": b"two"})
    assert CheckpointStore(location).load(2) == {"state.json": b"two"}


def test_racing_writer_loses_swap(location: str) -> None:
    first = CheckpointStore(location)
    racing = CheckpointStore(location)
    assert first.latest() is None
    assert racing.latest() is None
    put = racing._storage.put

    def put_then_let_first_save(key: str, data: bytes) -> None:
        put(key, data)
        if first.latest() is None:
            first.save(1, FILES)  # after racing checked the pointer

    racing._storage.put = put_then_let_first_save  # type: ignore[method-assign]
    with pytest.raises(CheckpointConflict, match="checkpoint 1 was not made current"):
        racing.save(1, {"state.json": b"racing"})

    assert CheckpointStore(location).load(1) == FILES


def test_slower_writer_writes_no_file(location: str) -> None:
    CheckpointStore(location).save(1, FILES)
    faster = CheckpointStore(location)
    slower = CheckpointStore(location)
    assert faster.latest() == 1
    assert slower.latest() == 1
    read = slower._storage.read
    put = slower._storage.put
    written: list[str] = []

    def read_then_let_faster_save(key: str) -> Blob | None:
        blob = read(key)
        if faster.latest() == 1:
            faster.save(2, {"state.json": b"faster"})  # after slower read CURRENT
        return blob

    def record_put(key: str, data: bytes) -> None:
        written.append(key)
        put(key, data)

    slower._storage.read = read_then_let_faster_save  # type: ignore[method-assign]
    slower._storage.put = record_put  # type: ignore[method-assign]
    with pytest.raises(CheckpointConflict, match="checkpoint 2 was not made current"):
        slower.save(2, {"state.json": b"slower"})

    assert written == []
    assert CheckpointStore(location).load(2) == {"state.json": b"faster"}


def test_kill_after_claim_keeps_previous(location: str) -> None:
    store = CheckpointStore(location)
    store.save(1, FILES)
    swap = store._storage.swap

    def claim_then_die(key: str, data: bytes, expected: str | None) -> bool:
        if b'"writing"' not in data:
            raise KeyboardInterrupt  # stands for a kill before the final swap
        return swap(key, data, expected)

    store._storage.swap = claim_then_die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        store.save(2, {"state.json": b"two"})

    assert b'"writing": "slot-1"' in read_object(location, "CURRENT")
    assert read_object(location, "slot-1/state.json") == b"two"
    restarted = CheckpointStore(location)
    assert restarted.latest() == 1
    assert restarted.load(1) == FILES
    restarted.save(2, {"state.json": b"again"})
    assert b'"slot": "slot-2"' in read_object(location, "CURRENT")
    assert CheckpointStore(location).load(2) == {"state.json": b"again"}


def test_takeover_uses_third_slot(location: str) -> None:
    CheckpointStore(location).save(1, FILES)
    first = CheckpointStore(location)
    assert first.latest() == 1
    put = first._storage.put
    written: list[str] = []

    def put_then_let_second_save(key: str, data: bytes) -> None:
        put(key, data)
        written.append(key)
        if len(written) == 1:
            second = CheckpointStore(location)
            assert second.latest() == 1  # it reads first's claim
            second.save(2, {"state.json": b"second"})

    first._storage.put = put_then_let_second_save  # type: ignore[method-assign]
    with pytest.raises(CheckpointConflict, match="checkpoint 2 was not made current"):
        first.save(2, {"a.bin": b"a", "b.bin": b"b"})

    assert written == ["slot-1/a.bin"]
    assert b'"slot": "slot-2"' in read_object(location, "CURRENT")
    assert CheckpointStore(location).load(2) == {"state.json": b"second"}


def test_overwritten_file_rejected(location: str) -> None:
    store = CheckpointStore(location)
    store.save(1, FILES)
    write_object(location, "slot-0/state.json", b'{"learned": 4}')

    with pytest.raises(CheckpointError, match=r"slot-0/state\.json does not match"):
        CheckpointStore(location).load(1)


def test_pointer_records_sizes_and_hashes(location: str) -> None:
    CheckpointStore(location).save(7, {"state.json": b"seven"})

    pointer = read_object(location, "CURRENT")
    assert b'"number": 7' in pointer
    assert b'"slot": "slot-0"' in pointer
    assert b'"size_bytes": 5' in pointer
    assert read_object(location, "slot-0/state.json") == b"seven"


# ---------------------------------------------------------------- local only


def test_legacy_local_checkpoint_restored(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    (folder / "ckpt-000000012").mkdir(parents=True)
    for name, data in FILES.items():
        (folder / "ckpt-000000012" / name).write_bytes(data)
    (folder / "CURRENT").write_text("ckpt-000000012", encoding="utf-8")

    store = CheckpointStore(folder)
    assert store.latest() == 12
    assert store.load(12) == FILES
    store.save(13, {"state.json": b"13"})
    assert CheckpointStore(folder).load(13) == {"state.json": b"13"}


def test_damaged_pointer_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "CURRENT").write_text('{"format": "other"}', encoding="utf-8")

    with pytest.raises(CheckpointError, match="invalid checkpoint pointer CURRENT"):
        CheckpointStore(folder).latest()


def _pointer_with(**fields: object) -> str:
    body = {
        "format": "streamlearn-checkpoint/1",
        "number": 1,
        "slot": "slot-0",
        "files": {"state.json": {"size_bytes": 2, "sha256": "0" * 64}},
    }
    return json.dumps({**body, **fields})


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        (
            _pointer_with(files={"../../secret": {"size_bytes": 6, "sha256": "0"}}),
            "invalid checkpoint file name '../../secret'",
        ),
        (
            _pointer_with(files={".hidden": {"size_bytes": 6, "sha256": "0"}}),
            "invalid checkpoint file name '.hidden'",
        ),
        (_pointer_with(number=-1), "number -1 is negative"),
        ("[" * 100_000 + "]" * 100_000, "invalid checkpoint pointer CURRENT"),
    ],
)
def test_unsafe_pointer_rejected(tmp_path: Path, pointer: str, message: str) -> None:
    folder = tmp_path / "location" / "checkpoints"
    folder.mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"secret")
    (folder / "CURRENT").write_text(pointer, encoding="utf-8")

    with pytest.raises(CheckpointError, match=re.escape(message)):
        CheckpointStore(folder).latest()
    with pytest.raises(CheckpointError, match=re.escape(message)):
        CheckpointStore(folder).load(1)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("s3://bucket/checkpoints", "expected a local folder or gs://BUCKET/PREFIX"),
        ("gs:///checkpoints", "the bucket name is missing"),
        (" ", "expected a local folder or gs://BUCKET/PREFIX"),
    ],
)
def test_invalid_location_rejected(location: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CheckpointStore(location)


@pytest.mark.parametrize("name", ["a/b", ".hidden", "", "CURRENT/x"])
def test_invalid_file_name_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid checkpoint file name"):
        CheckpointStore(tmp_path).save(1, {name: b"x"})


# ---------------------------------------------------------------- the job


def job_settings(
    tmp_path: Path, job_name: str, run_folder: str = "run", **config: Any
) -> JobSettings:
    """Return settings of a job-postings job in tmp_path, without telemetry."""
    return JobSettings(
        job_name=job_name,
        project="streamlearn-local",
        spec_name="job_postings",
        registry_url=str(tmp_path / "registry"),
        run_dir=str(tmp_path / run_folder),
        config=JobConfig(
            **{"micro_batch_size": 64, "checkpoint_every_s": 10_000.0, **config}
        ),
        announce=False,
        metrics_file=False,
    )


def run_job_main(argv: list[str]) -> int:
    """Run 'streamlearn run' with ``argv``; release its telemetry and its lock."""
    try:
        return job.main(argv)
    finally:
        mon.close_shared_telemetry()
        job._RUN_DIR_LOCKS.pop().close()


def test_job_restores_from_gcs(gcs_bucket: str, tmp_path: Path) -> None:
    location = f"gs://{gcs_bucket}/checkpoints"
    settings = dataclasses.replace(
        job_settings(tmp_path, "gcs-checkpoints"), checkpoint_location=location
    )
    events = list(itertools.islice(iter_events("job_postings"), 300))
    try:
        first = build_runtime(settings)
        first.handle_batch(EventBatch(events))
        first.save_checkpoint()
        second = build_runtime(settings)
    finally:
        mon.close_shared_telemetry()

    assert not (tmp_path / "run" / "checkpoints").exists()
    assert CheckpointStore(location).latest() == first.checkpoint_number
    assert second.checkpoint_number == first.checkpoint_number
    assert second.account == first.account
    assert second.pending == first.pending
    assert second.account.learned > 0


# ---------------------------------------------------------------- the commands


def test_run_checkpoint_location_option(tmp_path: Path) -> None:
    args = job.parse_args([*RUN_ARGS, "--checkpoint-location", "gs://b-1/ckpt"])
    assert args.checkpoint_location == "gs://b-1/ckpt"

    local = tmp_path / "ckpt"
    args = job.parse_args([*RUN_ARGS, "--checkpoint-location", str(local)])
    assert args.checkpoint_location == str(local.resolve())

    assert job.parse_args(RUN_ARGS).checkpoint_location is None


def test_run_rejects_other_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        job.parse_args([*RUN_ARGS, "--checkpoint-location", "s3://b/ckpt"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "argument --checkpoint-location: invalid checkpoint location" in error


def test_deploy_defaults_checkpoints_under_temp() -> None:
    settings = deploy.job_settings(deploy.parse_args(DEPLOY_ARGS))
    assert settings.checkpoint_location == "gs://demo-bucket/tmp/checkpoints/roles"


def test_deploy_takes_checkpoint_location() -> None:
    argv = [*DEPLOY_ARGS, "--checkpoint-location", "gs://other-bucket/ckpt"]
    settings = deploy.job_settings(deploy.parse_args(argv))
    assert settings.checkpoint_location == "gs://other-bucket/ckpt"


def test_deploy_rejects_local_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*DEPLOY_ARGS, "--checkpoint-location", str(tmp_path), "--dry-run"]
    assert deploy.main(argv) == 2
    error = capsys.readouterr().err
    assert f"invalid --checkpoint-location {str(tmp_path)!r}" in error
    assert "use gs://BUCKET/PATH" in error


def test_deploy_help_names_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        deploy.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: TEMP_LOCATION/checkpoints/JOB_NAME)" in out


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("afile", "afile is a file, not a folder"),
        ("afile/ckpt", "afile is a file, not a folder"),
        ("gs://ab/x", "invalid bucket name 'ab'"),
        ("gs://Bad_Bucket/x", "invalid bucket name 'Bad_Bucket'"),
    ],
)
def test_run_rejects_unusable_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], location: str, message: str
) -> None:
    (tmp_path / "afile").write_bytes(b"x")
    if not location.startswith("gs://"):
        location = str(tmp_path / location)

    with pytest.raises(SystemExit) as exit_:
        job.parse_args([*RUN_ARGS, "--checkpoint-location", location])

    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "argument --checkpoint-location: invalid checkpoint location" in error
    assert message in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("", "invalid --checkpoint-location '': expected gs://BUCKET/PATH"),
        ("gs://", "invalid --checkpoint-location 'gs://': the bucket name is missing"),
        ("gs://ab/x", "invalid --checkpoint-location 'gs://ab/x': invalid bucket"),
        ("gs://Bad_Bucket/x", "'gs://Bad_Bucket/x': invalid bucket name"),
    ],
)
def test_deploy_rejects_invalid_location(
    capsys: pytest.CaptureFixture[str], location: str, message: str
) -> None:
    argv = [*DEPLOY_ARGS, "--checkpoint-location", location, "--dry-run"]
    assert deploy.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "local disk" not in error


def test_home_folder_location_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)

    CheckpointStore("~/checkpoints").save(1, {"a": b"x"})

    assert (tmp_path / "home" / "checkpoints").is_dir()
    assert not (tmp_path / "~").exists()
    assert CheckpointStore("~/checkpoints").load(1) == {"a": b"x"}


@pytest.mark.usefixtures("pubsub_emulator")
def test_restart_with_other_spec_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = job_settings(tmp_path, "other-spec")
    try:
        runtime = build_runtime(settings)
        runtime.handle_batch(
            EventBatch(list(itertools.islice(iter_events("job_postings"), 300)))
        )
        runtime.save_checkpoint()
    finally:
        mon.close_shared_telemetry()
    argv = ["--job-name", "other-spec", "--spec", "so_survey_2016"]
    argv += ["--registry", settings.registry_url, "--run-dir", settings.run_dir]

    code = run_job_main(argv)

    assert code == 2
    error = capsys.readouterr().err
    location = f"{settings.run_dir}/checkpoints"
    assert f"cannot restore the newest checkpoint in {location}" in error
    assert "saved for the feature spec 'job_postings'" in error
    assert "Give this job its own --run-dir" in error


def test_stale_temporaries_removed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, {"a": b"x"})
    store.save(2, {"a": b"y"})
    # A writer killed an hour ago, and one writing now, in the slot the next
    # save takes.
    slot = tmp_path / "slot-0"
    stale = slot / ".learner.model.safetensors.4242.0123abcd"
    fresh = slot / ".learner.model.safetensors.4243.89abcdef"
    stale.write_bytes(b"z" * 100)
    fresh.write_bytes(b"z" * 100)
    an_hour_ago = time.time() - 3700
    os.utime(stale, (an_hour_ago, an_hour_ago))

    store.save(3, {"a": b"w"})

    assert not stale.exists()
    assert fresh.exists()
    assert store.load(3) == {"a": b"w"}


@pytest.mark.usefixtures("pubsub_emulator")
def test_job_on_foreign_registry_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = job_settings(
        tmp_path, "owner", "owner", holdout_min_events=10, gate_every_micro_batches=2
    )
    registry_url = settings.registry_url
    try:
        owner = build_runtime(settings)
        owner.handle_batch(
            EventBatch(list(itertools.islice(iter_events("job_postings"), 1500)))
        )
    finally:
        mon.close_shared_telemetry()
    assert owner.serving_version is not None
    running = (tmp_path / "registry" / "running.json").read_bytes()
    argv = ["--job-name", "intruder", "--spec", "so_survey_2016"]
    argv += ["--registry", registry_url, "--run-dir", str(tmp_path / "intruder")]

    code = run_job_main(argv)

    assert code == 2
    error = capsys.readouterr().err
    assert f"the registry {registry_url} serves v{owner.serving_version}" in error
    assert "give this job its own --registry" in error
    # The owner's fingerprint stays, so its rollbacks still pass their check.
    assert (tmp_path / "registry" / "running.json").read_bytes() == running
