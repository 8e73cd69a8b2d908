"""``scripts/demo --help``: the help text renders without side effects."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from streaming.demo import parse_args

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
