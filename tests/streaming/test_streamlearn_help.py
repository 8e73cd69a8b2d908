"""The ``streamlearn`` entry point: help text and subcommand dispatch."""

from __future__ import annotations

import pytest

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


def test_unknown_subcommand_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuch"]) == 2
    assert "unknown subcommand 'nosuch'" in capsys.readouterr().err
