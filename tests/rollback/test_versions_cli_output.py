"""``streamlearn versions``: help examples and JSON output on a registry whose
manifests carry the metrics the streaming job writes."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
from registry_helpers import FixedClock, make_fields, make_files

from online_model.evaluation import Metrics
from rollback.cli import versions_main
from rollback.listing import EXAMPLES
from rollback.registry import Registry, open_registry


def job_metrics(top1_accuracy: float) -> dict[str, float]:
    """Return holdout metrics as the job stores them: every value a float."""
    metrics = Metrics(
        n_events=2000,
        top1_accuracy=top1_accuracy,
        top_k=5,
        top_k_hit_rate=0.97,
        log_loss=0.4,
        macro_precision=0.8,
        macro_recall=0.7,
        macro_f1=0.75,
        n_labels=10,
    )
    return {key: float(value) for key, value in dataclasses.asdict(metrics).items()}


@pytest.fixture
def job_registry(tmp_path: Path) -> Registry:
    """A local registry with v1..v11, v11 serving, and the job's metric names."""
    registry = open_registry(tmp_path / "registry", create=True, clock=FixedClock())
    for seed in range(11):
        metrics = job_metrics(top1_accuracy=0.85 + seed / 100)
        fields = make_fields(holdout_metrics=metrics, champion_metrics=metrics)
        registry.publish(make_files(seed), fields, "job", "ok")
    return registry


def example_filters() -> list[str]:
    """Return the --filter expressions of the help's examples."""
    filters = []
    for line in EXAMPLES.splitlines():
        if "--filter" not in line:
            continue
        words = shlex.split(line)
        filters.append(words[words.index("--filter") + 1])
    return filters


def test_help_has_filter_examples() -> None:
    assert len(example_filters()) >= 2


@pytest.mark.parametrize("expression", example_filters())
def test_help_filter_example_runs(
    job_registry: Registry, expression: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = versions_main(
        ["list", "--registry", job_registry.url, "--filter", expression]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(r"^v\d+ ", captured.out, re.MULTILINE), captured.out


@pytest.mark.parametrize(
    "argv",
    [["list", "--format", "json"], ["describe", "v11", "--format", "json"]],
    ids=["list", "describe"],
)
def test_json_counts_stay_integers(
    job_registry: Registry, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = versions_main([*argv, "--registry", job_registry.url])

    out = capsys.readouterr().out
    assert code == 0
    document = json.loads(out)
    newest = document[0] if isinstance(document, list) else document
    for table in ("holdout", "champion"):
        metrics = newest["metrics"][table]
        assert metrics["n_events"] == 2000
        assert isinstance(metrics["n_events"], int)
        assert isinstance(metrics["top_k"], int)
        assert isinstance(metrics["n_labels"], int)
        assert metrics["top1_accuracy"] == pytest.approx(0.95)
        assert isinstance(metrics["log_loss"], float)
    assert '"n_events": 2000.0' not in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("list", "--limit N print at most N versions, the newest (default: all)"),
        ("list", "--format {table,json} table: one line per version;"),
        ("describe", "--format {text,json} text: one field per line;"),
    ],
)
def test_versions_option_help(
    command: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        versions_main([command, "--help"])

    assert expected in " ".join(capsys.readouterr().out.split())


@pytest.fixture
def moved_registry(tmp_path: Path) -> Registry:
    """v1..v3 published, then a rollback to v1, a pause and a move to v2."""
    registry = open_registry(tmp_path / "registry", create=True, clock=FixedClock())
    for seed in range(3):
        registry.publish(make_files(seed), make_fields(), "job", f"gate {seed + 1}")
    registry.rollback("v1", "ops:ana", "v3 mislabels")
    registry.pause("ops:ana", "incident\x1b7")
    registry.rollback("v2", "ops:bo", "v2 is fine")
    return registry


def test_history_table_newest_first(
    moved_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    code = versions_main(["history", "--registry", moved_registry.url])

    lines = capsys.readouterr().out.splitlines()
    rows = [re.split(r"\s{2,}", line) for line in lines]
    assert code == 0
    assert rows[0] == ["TIME", "FROM", "TO", "KIND", "ACTOR", "REASON"]
    assert rows[1][1:] == ["v1", "v2", "rollback", "ops:bo", "v2 is fine"]
    assert rows[2][1:] == ["-", "-", "pause", "ops:ana", "incident\\x1b7"]
    assert rows[3][1:] == ["v3", "v1", "rollback", "ops:ana", "v3 mislabels"]
    assert rows[4][1:] == ["v2", "v3", "publish", "job", "gate 3"]
    assert rows[6][1:] == ["none", "v1", "publish", "job", "gate 1"]
    assert len(rows) == 7
    assert rows[1][0] > rows[6][0]


def test_history_limit_json(
    moved_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    code = versions_main(
        [
            "history",
            "--limit",
            "2",
            "--format",
            "json",
            "--registry",
            moved_registry.url,
        ]
    )

    entries = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [entry["seq"] for entry in entries] == [6, 5]
    assert entries[0]["from_version"] == 1
    assert entries[0]["to_version"] == 2
    assert entries[0]["actor"] == "ops:bo"
    assert entries[0]["reason"] == "v2 is fine"
    assert entries[0]["kind"] == "rollback"
    assert entries[1]["kind"] == "pause"
    assert entries[0]["time"] > entries[1]["time"]


def test_history_empty_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = open_registry(tmp_path / "registry", create=True)

    code = versions_main(["history", "--registry", registry.url])

    assert code == 0
    assert capsys.readouterr().out == "TIME  FROM  TO  KIND  ACTOR  REASON\n"
