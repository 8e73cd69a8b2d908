from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from online_model.cli import convert_main, learn_main
from online_model.datasets import read_events
from online_model.learner import OnlineLearner


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
    assert 0.0 <= summary["top1"] <= 1.0
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
    report = json.loads(capsys.readouterr().out)
    assert code == 0
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
