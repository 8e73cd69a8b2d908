"""Control messages of this run and of earlier runs in the same run folder."""

from __future__ import annotations

from pathlib import Path

from apache_beam.io.gcp.pubsub import PubsubMessage

from streaming.job import KEPT_CONTROL_TOKENS, _record_control_token
from streaming.pipeline import (
    CONTROL_ATTRIBUTE,
    CONTROL_TICK,
    CONTROL_TOKEN_ATTRIBUTE,
    control_problem,
)


def tick(token: str) -> PubsubMessage:
    return PubsubMessage(
        b"", {CONTROL_ATTRIBUTE: CONTROL_TICK, CONTROL_TOKEN_ATTRIBUTE: token}
    )


def test_earlier_run_tick_is_control_message() -> None:
    assert control_problem(tick("now"), "now") is None
    assert control_problem(tick("before"), "now", ("before",)) is None
    problem = control_problem(tick("forged"), "now", ("before",))
    assert problem is not None
    assert "not sent by this run" in problem


def test_run_folder_keeps_recent_tokens(tmp_path: Path) -> None:
    assert _record_control_token(tmp_path, "first") == ()
    assert _record_control_token(tmp_path, "second") == ("first",)
    for number in range(KEPT_CONTROL_TOKENS + 5):
        _record_control_token(tmp_path, f"t{number}")

    earlier = _record_control_token(tmp_path, "last")

    assert len(earlier) == KEPT_CONTROL_TOKENS
    assert earlier[-1] == f"t{KEPT_CONTROL_TOKENS + 4}"
