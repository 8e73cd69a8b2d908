"""The ``streamlearn`` entry point: help text and subcommand dispatch."""

from __future__ import annotations

import pytest

from rollback.cli import main as rollback_main
from streaming.cli import SUBCOMMANDS, main


def test_help_examples_use_real_subcommands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("examples:\n")[1].split("\n\n")[0].splitlines()
    commands = [line.split()[1] for line in examples if "streamlearn " in line]
    assert len(commands) >= 2
    for command in commands:
        assert command in SUBCOMMANDS, command


# Every parser behind the two entry points, as argument lists of --help.
HELP_COMMANDS = [
    *([name, "--help"] for name in sorted(SUBCOMMANDS)),
    ["versions", "list", "--help"],
    ["versions", "describe", "--help"],
    ["alerts", "apply", "--help"],
]


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_subcommand_help_renders(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse %-formats each option's help, so a bare % raises TypeError.
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_rollback_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        rollback_main(["--help"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: rollback")


def test_unknown_subcommand_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuch"]) == 2
    assert "unknown subcommand 'nosuch'" in capsys.readouterr().err


def test_missing_subcommand_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "streamlearn: missing subcommand" in captured.err
    assert "usage: streamlearn SUBCOMMAND" in captured.err


def test_predict_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])

    out = " ".join(capsys.readouterr().out.split())
    assert (
        "--top-k TOP_K roles written per event, most probable first (default: 5)" in out
    )
    assert (
        "--batch-size BATCH_SIZE events scored per call of the learner (default: 512)"
        in out
    )
    assert "--runner RUNNER Beam runner (default: DirectRunner)" in out
    assert "The feature spec comes with the version." in out
    assert "{aijobs_salaries,electricity,job_postings,so_survey_2016}" in out
