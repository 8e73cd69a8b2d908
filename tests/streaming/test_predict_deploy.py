"""Batch prediction with a chosen version, and the Dataflow job in a dry run."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import apache_beam as beam
import fastavro
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from online_model.datasets import iter_events, write_events
from online_model.learner import OnlineLearner
from online_model.spec import load_spec
from rollback.manifest import ManifestFields
from rollback.registry import open_registry
from streaming import deploy, predict
from streaming.pipeline import JobSettings, build_pipeline

SPEC = load_spec("job_postings")
DATA = Path(__file__).resolve().parents[2] / "data"
EVENTS = list(itertools.islice(iter_events("job_postings"), 2000))


def publish_two_versions(registry_path: Path) -> tuple[OnlineLearner, OnlineLearner]:
    registry = open_registry(registry_path, create=True)
    first = OnlineLearner(SPEC, seed=0, device="cpu")
    first.learn(EVENTS[:800])
    second = first.copy()
    second.learn(EVENTS[800:1600])
    for learner in (first, second):
        fields = ManifestFields(fingerprint=learner.fingerprint, events_count=800)
        registry.publish(learner.to_files(), fields, "test", "test version")
    return first, second


def test_predict_with_chosen_version(tmp_path: Path) -> None:
    first, second = publish_two_versions(tmp_path / "registry")
    events_file = tmp_path / "events.avro"
    requests = [dict(e, job_role=None) for e in EVENTS[1600:1900]]
    with open(events_file, "wb") as stream:
        write_events(requests, "job_postings", stream)

    for version, learner in (("v1", first), (None, second)):
        output = tmp_path / f"scores-{version}.jsonl"
        argv = [str(events_file), "--registry", str(tmp_path / "registry")]
        argv += ["--output", str(output), "--batch-size", "64"]
        if version is not None:
            argv += ["--version", version]
        assert predict.main(argv) == 0

        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert len(lines) == 300
        by_id = {line["event_id"]: line for line in lines}
        assert set(by_id) == {e["event_id"] for e in requests}
        expected = learner.predict(requests, k=5)
        expected_version = version or "v2"
        for event, top in zip(requests, expected, strict=True):
            line = by_id[event["event_id"]]
            assert line["model_version"] == expected_version
            assert [label for label, _ in line["top"]] == [label for label, _ in top]
            assert [p for _, p in line["top"]] == pytest.approx([p for _, p in top])


def test_predict_registry_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_two_versions(tmp_path / "registry")
    events_file = tmp_path / "events.avro"
    with open(events_file, "wb") as stream:
        write_events(EVENTS[:10], "job_postings", stream)
    monkeypatch.setenv("STREAMLEARN_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out.jsonl"

    assert predict.main([str(events_file), "--output", str(output)]) == 0

    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 10
    assert {line["model_version"] for line in lines} == {"v2"}


def test_predict_unknown_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    events_file = tmp_path / "events.avro"
    with open(events_file, "wb") as stream:
        write_events(EVENTS[:10], "job_postings", stream)
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]
    argv += ["--output", str(tmp_path / "out.jsonl"), "--version", "v9"]
    assert predict.main(argv) == 2
    assert "v9" in capsys.readouterr().err


def test_predict_rejects_non_learner_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    files = {"notes.txt": b"not a model"}
    registry.publish(files, ManifestFields(fingerprint="x"), "test", "not a model")
    events_file = tmp_path / "events.avro"
    with open(events_file, "wb") as stream:
        write_events(EVENTS[:10], "job_postings", stream)
    output = tmp_path / "out.jsonl"
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]
    assert predict.main([*argv, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "v1" in err
    assert "not a readable learner state (notes.txt)" in err
    assert not output.exists()


def test_predict_rejects_unrelated_avro(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    other = {
        "type": "record",
        "name": "Other",
        "fields": [{"name": "x", "type": "int"}],
    }
    events_file = tmp_path / "other.avro"
    with open(events_file, "wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(other), [{"x": 1}])
    output = tmp_path / "out.jsonl"
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]
    assert predict.main([*argv, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "lacks the fields event_id, event_time, skills" in err
    assert not output.exists()


def write_avro_events(path: Path, events: list[dict[str, Any]]) -> Path:
    with open(path, "wb") as stream:
        write_events(events, "job_postings", stream)
    return path


@pytest.mark.parametrize("case", ["folder", "glob", "input", "pipe", "link"])
def test_predict_rejects_output_that_would_delete_files(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    events_file = write_avro_events(tmp_path / "events.avro", EVENTS[:10])
    folder = tmp_path / "kept"
    folder.mkdir()
    (folder / "a.csv").write_text("keep me")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to(folder / "a.csv")
    output = {
        "folder": str(folder),
        "glob": str(folder / "*.csv"),
        "input": str(events_file),
        "pipe": str(tmp_path / "pipe"),
        "link": str(tmp_path / "link"),
    }[case]
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]

    assert predict.main([*argv, "--output", output]) == 2

    assert "invalid --output" in capsys.readouterr().err
    assert (folder / "a.csv").read_text() == "keep me"
    assert events_file.stat().st_size > 0
    assert len(list(fastavro.reader(events_file.open("rb")))) == 10
    assert (tmp_path / "link").is_symlink()
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)


def test_predict_scores_unlabelled_csv_rows_and_counts_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    with gzip.open(DATA / "data_jobs_2023_salaried.csv.gz", "rt") as source:
        rows = list(itertools.islice(csv.DictReader(source), 6))
    rows[0]["job_title_short"] = ""  # a prediction request
    rows[1]["salary_year_avg"] = "lots"  # not a number: skipped by the converter
    csv_file = tmp_path / "postings.csv"
    with open(csv_file, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    output = tmp_path / "scores.jsonl"
    argv = [str(csv_file), "--registry", str(tmp_path / "registry")]
    argv += ["--dataset", "job_postings", "--output", str(output)]

    assert predict.main(argv) == 0

    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 5
    assert all(len(line["top"]) == 5 for line in lines)
    out = capsys.readouterr().out
    assert "5 events read, 5 scored, 0 rejected" in out
    assert "CSV rows skipped before scoring, by reason: invalid_number 1" in out


def test_predict_names_reason_of_rejected_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    events = [dict(e) for e in EVENTS[:4]]
    events[2]["skills"] = []  # valid: the spec allows an empty skill list
    events[3]["salary_year_avg"] = float("nan")
    events_file = write_avro_events(tmp_path / "events.avro", events)
    output = tmp_path / "scores.jsonl"
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]

    assert predict.main([*argv, "--output", str(output)]) == 0

    lines = {
        line["event_id"]: line
        for line in map(json.loads, output.read_text().splitlines())
    }
    rejected = lines[events[3]["event_id"]]
    assert rejected["top"] == []
    assert rejected["rejected"].startswith("non_finite_number: ")
    assert "rejected" not in lines[events[2]["event_id"]]
    out = capsys.readouterr().out
    assert "4 events read, 3 scored, 1 rejected" in out
    assert "rejected events (their lines say why): non_finite_number 1" in out


def test_predict_truncated_file_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    whole = write_avro_events(tmp_path / "whole.avro", EVENTS)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.avro"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    output = tmp_path / "scores.jsonl"
    argv = [str(truncated), "--registry", str(tmp_path / "registry")]

    assert predict.main([*argv, "--output", str(output)]) == 1

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("streamlearn predict: failed: Avro file ")
    assert "truncated.avro" in err[0]
    assert not output.exists()
    assert not list(tmp_path.glob("beam-temp-*"))


@pytest.mark.parametrize("option", ["--top-k", "--batch-size"])
def test_predict_rejects_zero_option(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["events.avro", "--registry", "r", "--output", "o", option, "0"]
    with pytest.raises(SystemExit) as exit_:
        predict.main(argv)
    assert exit_.value.code == 2
    assert "expected 1 or more" in capsys.readouterr().err


DEPLOY_ARGS = [
    "--project",
    "demo-project",
    "--region",
    "us-central1",
    "--temp-location",
    "gs://demo-bucket/tmp",
    "--registry",
    "gs://demo-bucket/models",
    "--worker-gpu",
    "nvidia-l4",
    "--image",
    "us-docker.pkg.dev/demo-project/streamlearn/worker:0.1.0",
]


def test_deploy_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy.main([*DEPLOY_ARGS, "--dry-run"]) == 0
    assert "valid" in capsys.readouterr().out


def test_deploy_options() -> None:
    args = deploy.parse_args([*DEPLOY_ARGS, "--update", "--dry-run"])
    options = deploy.dataflow_options(args)
    assert options["streaming"] is True
    assert options["runner"] == "DataflowRunner"
    assert options["update"] is True
    assert options["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    assert options["sdk_container_image"].endswith("worker:0.1.0")


def test_deploy_invalid_temp_location() -> None:
    args = [*DEPLOY_ARGS, "--dry-run"]
    args[args.index("gs://demo-bucket/tmp")] = "gs://b/tmp"
    assert deploy.main(args) == 2


def test_deploy_bad_project_id_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*DEPLOY_ARGS, "--dry-run"]
    args[args.index("demo-project")] = "p"

    assert deploy.main(args) == 2

    err = capsys.readouterr().err
    assert err.startswith("streamlearn deploy: ")
    assert "Invalid Project ID (p)" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("option", ["--gpu-count", "--max-workers"])
def test_deploy_counts_at_least_one(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        deploy.main([*DEPLOY_ARGS, option, "0", "--dry-run"])
    assert exit_.value.code == 2
    assert "expected 1 or more" in capsys.readouterr().err


def test_transform_names_stable() -> None:
    settings = JobSettings("names", "demo-project", "job_postings", "gs://b/m", "/tmp")
    pipeline = beam.Pipeline(options=PipelineOptions(flags=[], streaming=True))
    build_pipeline(pipeline, settings, control="separate")
    labels = {
        node.full_label
        for node in pipeline.transforms_stack[0].parts  # top-level transforms
    }
    assert labels >= {
        "ReadEvents",
        "DecodeEvents",
        "WriteDeadLetters",
        "MergeDeadLetters",
        "ReadTicks",
        "AsTicks",
        "ReadPointerChanges",
        "AsPointerNotices",
        "MergeLearnerInputs",
        "KeyForLearner",
        "Learn",
        "WritePredictions",
    }


def test_predict_rejects_unknown_runner_and_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    events_file = write_avro_events(tmp_path / "events.avro", EVENTS[:10])
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]
    argv += ["--output", str(tmp_path / "out.jsonl")]

    assert predict.main([*argv, "--runner", "Nope"]) == 2
    assert "streamlearn predict: invalid --runner: " in capsys.readouterr().err

    with pytest.raises(SystemExit) as exited:
        predict.main([*argv, "--dataset", "nosuch"])
    assert exited.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_predict_fills_older_writer_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = publish_two_versions(tmp_path / "registry")
    # An older producer's schema without the nullable hourly salary.
    older = dict(SPEC.schema)
    older["fields"] = [
        f for f in SPEC.schema["fields"] if f["name"] != "salary_hour_avg"
    ]
    events = [
        {k: v for k, v in e.items() if k != "salary_hour_avg"} for e in EVENTS[:5]
    ]
    events_file = tmp_path / "older.avro"
    with open(events_file, "wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(older), events)
    output = tmp_path / "scores.jsonl"
    argv = [str(events_file), "--registry", str(tmp_path / "registry")]

    assert predict.main([*argv, "--version", "v1", "--output", str(output)]) == 0

    assert "5 events read, 5 scored, 0 rejected" in capsys.readouterr().out
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    with_null = [dict(e, salary_hour_avg=None) for e in EVENTS[:5]]
    expected = first.predict(with_null, k=5)
    assert [[label for label, _ in line["top"]] for line in lines] == [
        [label for label, _ in top] for top in expected
    ]


def test_predict_rejects_dataset_of_other_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_two_versions(tmp_path / "registry")
    csv_file = tmp_path / "salaries.csv"
    csv_file.write_text("work_year,job_title\n2024,Data Scientist\n")
    argv = [str(csv_file), "--registry", str(tmp_path / "registry")]
    argv += ["--dataset", "aijobs_salaries", "--output", str(tmp_path / "o.jsonl")]

    assert predict.main(argv) == 2

    err = capsys.readouterr().err
    assert "--dataset aijobs_salaries converts CSV rows to " in err
    assert "but the version reads 'JobPosting' events" in err
    assert not (tmp_path / "o.jsonl").exists()
