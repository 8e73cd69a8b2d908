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
