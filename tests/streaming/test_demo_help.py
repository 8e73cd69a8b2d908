"""``scripts/demo --help``: the help text renders without side effects."""

from __future__ import annotations

import pytest

from streaming.demo import parse_args


def test_demo_help_shows_burst_shares(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])

    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "give 6% of the events, from 40% of the stream on" in out
