"""``scripts/demo --help``: the help text renders without side effects."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from rollback.registry import open_registry
from streaming.demo import burst_account, parse_args
from tests.rollback.registry_helpers import make_fields, make_files

REPOSITORY = Path(__file__).resolve().parents[2]


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Reply 200 to every GET, as a running emulator does, and record its path."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def emulator_stand_in() -> Iterator[tuple[int, list[str]]]:
    """Yield the port of a local HTTP server and the paths requested from it."""
    paths: list[str] = []
    handler = type("Handler", (_RecordingHandler,), {"paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="emulator-stand-in")
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_demo_help_shows_burst_shares(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])

    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "events, 6% of the stream, starting 40% of the way in" in out


def test_demo_script_help_skips_emulator(
    emulator_stand_in: tuple[int, list[str]],
) -> None:
    port, paths = emulator_stand_in
    # scripts/emulator sends a GET to PUBSUB_PORT to check for a running
    # emulator, so any request here means the script went past --help.
    environment = {**os.environ, "PUBSUB_PORT": str(port)}
    environment.pop("PUBSUB_EMULATOR_HOST", None)

    finished = subprocess.run(
        [str(REPOSITORY / "scripts" / "demo"), "--help"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("usage: scripts/demo")
    assert paths == []


def test_demo_rejects_abbreviated_help(capsys: pytest.CaptureFixture[str]) -> None:
    # scripts/demo only skips the emulator for -h and --help exactly.
    with pytest.raises(SystemExit) as raised:
        parse_args(["--he"])

    assert raised.value.code == 2
    assert "unrecognized arguments: --he" in capsys.readouterr().err


def test_burst_account_names_versions(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)
    for day in (1, 2, 3, 4):
        fields = make_fields(
            event_time_min=datetime(2023, 1, 1, tzinfo=UTC),
            event_time_max=datetime(2023, 1, day, 12, tzinfo=UTC),
        )
        registry.publish(make_files(day), fields, actor="job", reason="test")

    text = burst_account(registry, datetime(2023, 1, 3, tzinfo=UTC))

    lines = text.splitlines()
    assert lines[0] == "wrong labels: the burst starts at event time 2023-01-03 00:00"
    assert (
        lines[1]
        == "  v3 to v4 learned events from that time on, some with wrong labels"
    )
    assert lines[2] == (
        "  v2 is the last version published before the burst; to serve it "
        f"again: .venv/bin/rollback --registry {registry.url} --to v2 --reason "
        "'wrong labels from 2023-01-03 00:00'"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "-5"], "expected 1 or more"),
        (["--unlabelled-fraction", "1.5"], "expected 0 to 1"),
        (["--keep-runs", "-1"], "expected 0 or more"),
        (["--device", "tpu"], "expected cpu, cuda or cuda:N"),
    ],
    ids=["limit", "fraction", "keep-runs", "device"],
)
def test_demo_rejects_bad_values(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)

    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
