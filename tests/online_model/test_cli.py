from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from online_model.cli import convert_main, learn_main
from online_model.datasets import convert, iter_events, read_events, write_events
from online_model.learner import OnlineLearner
from online_model.spec import load_spec


def test_learn_prints_json_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = learn_main(
        [
            "--dataset",
            "electricity",
            "--limit",
            "600",
            "--micro-batch",
            "200",
            "--format",
            "json",
            "--device",
            "cpu",
            "--save",
            str(tmp_path / "state"),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["events"] == 600
    assert summary["scored"] == 600
    assert summary["labels"] == ["UP", "DOWN"]
    # The same run, scored by hand.
    events = list(itertools.islice(iter_events("electricity"), 600))
    learner = OnlineLearner(load_spec("electricity"), seed=0, device="cpu")
    scored = [
        record
        for start in range(0, 600, 200)
        for record in learner.learn(events[start : start + 200]).scored
    ]
    hits = sum(record.predicted_label == record.true_label for record in scored)
    loss = -sum(math.log(max(r.true_label_probability, 1e-15)) for r in scored)
    assert summary["top1"] == pytest.approx(hits / 600)
    assert summary["log_loss"] == pytest.approx(loss / 600)
    assert summary["conversion"]["events"] == 600
    assert len(summary["examples"]) == 3
    restored = OnlineLearner.load(tmp_path / "state")
    assert restored.examples_seen == 600


def test_learn_rejects_bad_micro_batch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        learn_main(["--micro-batch", "0"])
    assert caught.value.code == 2
    assert "argument --micro-batch: invalid value '0': expected 1 or more" in (
        capsys.readouterr().err
    )


def test_convert_writes_limited_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "postings.avro"
    code = convert_main(
        [
            "--dataset",
            "job_postings",
            "--out",
            str(out),
            "--limit",
            "50",
            "--format",
            "json",
        ]
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0
    # 50 events end before the first progress line, so stderr stays empty.
    assert captured.err == ""
    assert report["events"] == 50
    assert report["rows_read"] == 32672
    events = list(read_events(out))
    assert len(events) == 50
    assert events[0]["event_id"] == "data_jobs_2023_salaried:6781"


def test_convert_missing_source_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = convert_main(
        [
            "--dataset",
            "electricity",
            "--out",
            str(tmp_path / "x.avro"),
            "--source",
            str(tmp_path / "absent.arff"),
        ]
    )
    assert code == 1
    assert "not found" in capsys.readouterr().err


def test_learn_reads_avro_events(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "elec.avro"
    assert (
        convert_main(["--dataset", "electricity", "--out", str(out), "--limit", "300"])
        == 0
    )
    capsys.readouterr()
    code = learn_main(
        [
            "--dataset",
            "electricity",
            "--events",
            str(out),
            "--format",
            "json",
            "--device",
            "cpu",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["events"] == 300
    assert summary["conversion"]["source"] == str(out)


def _learn_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run learn with arguments it must reject; return the error output."""
    with pytest.raises(SystemExit) as caught:
        learn_main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


def test_learn_rejects_unknown_device(capsys: pytest.CaptureFixture[str]) -> None:
    err = _learn_error(["--device", "banana"], capsys)
    assert "invalid device 'banana': expected cpu, cuda or cuda:N" in err
    err = _learn_error(["--device", "meta"], capsys)
    assert "invalid device 'meta'" in err


def test_learn_cuda_without_cuda(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _learn_error(["--device", "cuda:7"], capsys)
    assert "device 'cuda:7': no CUDA device is available; use --device cpu" in err


def test_learn_cuda_index_too_high(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = _learn_error(["--device", "cuda:7"], capsys)
    assert (
        "'cuda:7' not found: this machine has 1 CUDA devices (cuda:0 to cuda:0)" in err
    )


def test_learn_save_onto_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    err = _learn_error(["--device", "cpu", "--save", str(target)], capsys)
    assert "is an existing file; pass a folder" in err
    assert target.read_bytes() == b"keep me"


def test_learn_rejects_negative_limit(capsys: pytest.CaptureFixture[str]) -> None:
    err = _learn_error(["--limit", "-5"], capsys)
    assert "invalid value '-5': expected 0 or more" in err


@pytest.fixture(scope="module")
def electricity_avro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Avro file of 3,000 Electricity events, several data blocks long."""
    out = tmp_path_factory.mktemp("events") / "elec.avro"
    convert("electricity", out, limit=3000)
    return out


def _learn_events_error(
    events: Path, dataset: str, capsys: pytest.CaptureFixture[str]
) -> str:
    """Run learn on an events file it must reject; return the one error line."""
    code = learn_main(
        ["--dataset", dataset, "--events", str(events), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("streamlearn learn: ")
    return err


def test_learn_truncated_avro_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, electricity_avro: Path
) -> None:
    data = electricity_avro.read_bytes()
    truncated = tmp_path / "truncated.avro"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    err = _learn_events_error(truncated, "electricity", capsys)
    assert f"Avro file {str(truncated)!r} is invalid after " in err
    assert "EOFError" in err


def test_learn_corrupt_avro_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, electricity_avro: Path
) -> None:
    data = bytearray(electricity_avro.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.avro"
    corrupt.write_bytes(bytes(data))
    err = _learn_events_error(corrupt, "electricity", capsys)
    assert f"Avro file {str(corrupt)!r} is invalid after " in err


def test_learn_other_schema_rejected(
    capsys: pytest.CaptureFixture[str], electricity_avro: Path
) -> None:
    err = _learn_events_error(electricity_avro, "job_postings", capsys)
    assert f"Avro file {str(electricity_avro)!r} lacks the fields" in err
    assert "of the event schema 'JobPosting'" in err


def test_learn_events_not_avro(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "postings.csv"
    csv_file.write_text("job_title_short\nData Analyst\n")
    err = _learn_events_error(csv_file, "job_postings", capsys)
    assert f"--events file {str(csv_file)!r} is not an Avro file" in err
    assert f"streamlearn convert --dataset job_postings --source {csv_file}" in err
    err = _learn_events_error(tmp_path, "job_postings", capsys)
    assert f"input {str(tmp_path)!r} is not a file" in err
    err = _learn_events_error(tmp_path / "absent.avro", "job_postings", capsys)
    assert "absent.avro' not found" in err


def test_convert_missing_column_keeps_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "salaries.csv"
    source.write_text("work_year,job_title\n2024,Data Scientist\n")
    out = tmp_path / "salaries.avro"
    out.write_bytes(b"previous events")
    code = convert_main(
        ["--dataset", "aijobs_salaries", "--source", str(source), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert f"CSV file {str(source)!r} lacks the required column(s)" in err
    assert "'salary_in_usd'" in err
    assert out.read_bytes() == b"previous events"


def test_learn_without_scored_events_shows_no_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "elec.avro"
    assert convert_main(["--dataset", "electricity", "--out", str(out)]) == 0
    unlabelled = tmp_path / "unlabelled.avro"
    events = [dict(e, **{"class": None}) for e in read_events(out)][:50]
    with open(unlabelled, "wb") as stream:
        write_events(events, "electricity", stream)
    capsys.readouterr()

    code = learn_main(
        ["--dataset", "electricity", "--events", str(unlabelled), "--device", "cpu"]
    )

    out_text = capsys.readouterr().out
    assert code == 0
    assert "prequential metrics: none, because no labelled event was scored" in out_text
    assert "log loss" not in out_text
    assert "example predictions" not in out_text

    code = learn_main(
        [
            "--dataset",
            "electricity",
            "--events",
            str(unlabelled),
            "--device",
            "cpu",
            "--format",
            "json",
        ]
    )

    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["scored"] == 0
    assert summary["top1"] is None
    assert summary["log_loss"] is None
