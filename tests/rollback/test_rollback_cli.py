"""The ``rollback`` and ``streamlearn versions`` commands, run as processes."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_helpers import (
    OTHER_FINGERPRINT,
    FixedClock,
    make_fields,
    make_files,
    pull,
    run,
)

from rollback.cli import main as rollback_main
from rollback.config import load_config
from rollback.layout import index_key
from rollback.registry import Registry, open_registry, version_key

NO_TOPIC_NOTE = (
    "rollback: note: no announce topic is configured, so running jobs pick up "
    "the change at their next pointer check (the streaming job reads the "
    "pointer every 5 s)\n"
)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A local registry with v1..v3 published, v3 serving."""
    registry = open_registry(tmp_path / "registry", create=True, clock=FixedClock())
    for seed in range(3):
        registry.publish(
            make_files(seed), make_fields(accuracy=0.8 + seed / 100), "job", "ok"
        )
    return registry


def test_cli_imports_no_torch_or_beam(registry: Registry) -> None:
    probe = (
        "import sys, json\n"
        "from rollback.cli import main, versions_main\n"
        f"main(['--status', '--registry', {registry.url!r}])\n"
        f"versions_main(['list', '--registry', {registry.url!r}])\n"
        "heavy = ('torch', 'apache_beam', 'google.cloud.storage',\n"
        "         'google.cloud.pubsub')\n"
        "print(json.dumps([name for name in heavy if name in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_rollback_to_prints_one_line(registry: Registry) -> None:
    result = run(
        "rollback", "--to", "V001", "--reason", "v3 bad", "--registry", registry.url
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "rolled back serving from v3 to v1\n"
    assert result.stderr == NO_TOPIC_NOTE
    assert registry.serving() == 1
    last = registry.history()[-1]
    assert last.kind == "rollback"
    assert last.reason == "v3 bad"
    assert last.actor.startswith("operator:")


def test_rollback_without_target_uses_history(registry: Registry) -> None:
    registry.set_serving(2, "job", "v3 failed", kind="auto_rollback")

    # Timeline v1, v2, v3, v2: the target is the version before v2.
    result = run("rollback", "--registry", registry.url)

    assert result.stdout == "rolled back serving from v2 to v1\n"
    assert registry.serving() == 1


def test_rollback_without_target_never_moves_forward(registry: Registry) -> None:
    registry.set_serving(1, "job", "v3 failed", kind="auto_rollback")

    # Timeline v1, v2, v3, v1: v2 is newer than v1, so there is no target.
    result = run("rollback", "--registry", registry.url)

    assert result.returncode == 1
    assert "no served version older than v1" in result.stderr
    assert registry.serving() == 1


def test_status_names_default_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = open_registry(tmp_path / "registry", create=True, clock=FixedClock())
    for seed in range(9):
        registry.publish(make_files(seed), make_fields(), "job", "ok")

    assert rollback_main(["--status", "--registry", registry.url]) == 0
    before = capsys.readouterr().out
    registry.rollback("v5", "ops:ana", "v6 to v9 bad")
    assert rollback_main(["--status", "--registry", registry.url]) == 0
    after = capsys.readouterr().out

    assert before.endswith("; 'rollback' would return to v8\n")
    # v6 to v8 were skipped by the operator, so the target is older than v5.
    assert after.endswith("; 'rollback' would return to v4\n")


def test_status_json_while_paused(registry: Registry) -> None:
    registry.rollback("v2", "ops:ana", "v3 bad")
    registry.pause("ops:bo", "incident 7")

    result = run("rollback", "--status", "--format", "json", "--registry", registry.url)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["serving"] == "v2"
    assert document["paused"] is True
    assert set(document["pause"]) == {"actor", "time", "reason"}
    assert document["pause"]["actor"] == "ops:bo"
    assert document["pause"]["reason"] == "incident 7"
    assert document["pause"]["time"] == registry.history()[-1].time.isoformat()
    assert document["rollback_target"] == "v1"


def test_status_json_without_versions(tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "registry", create=True)

    result = run("rollback", "--status", "--format", "json", "--registry", registry.url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "serving": None,
        "paused": False,
        "pause": None,
        "rollback_target": None,
    }


def test_format_json_needs_status(registry: Registry) -> None:
    result = run(
        "rollback", "--to", "v1", "--format", "json", "--registry", registry.url
    )

    assert result.returncode == 2
    assert result.stderr == (
        "rollback: --format json needs --status, as in "
        "'rollback --status --format json'\n"
    )
    assert registry.serving() == 3


def test_dry_run_changes_nothing(registry: Registry) -> None:
    result = run("rollback", "--dry-run", "--registry", registry.url)

    assert result.returncode == 0
    assert result.stdout == (
        "would roll back serving from v3 to v2 (dry run, nothing changed)\n"
    )
    assert registry.serving() == 3
    assert len(registry.history()) == 3


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        (
            "v99",
            1,
            "rollback: unknown version 'v99': the registry holds v1..v3 (3 versions)",
        ),
        ("v-1", 2, "rollback: invalid version 'v-1': expected N, vN or VN"),
        ("v12; rm", 2, "rollback: invalid version 'v12; rm': expected N, vN or VN"),
        ("../x", 2, "rollback: invalid version '../x': expected N, vN or VN"),
        ("", 2, "rollback: invalid version '': expected N, vN or VN"),
        ("v1000000000", 2, "rollback: invalid version 'v1000000000': the largest"),
    ],
)
def test_refusal_is_one_line(
    registry: Registry, target: str, code: int, message: str
) -> None:
    result = run("rollback", "--to", target, "--registry", registry.url)

    assert result.returncode == code
    assert result.stdout == ""
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert registry.serving() == 3


@pytest.mark.parametrize("option", ["--reason", "--dry-run"])
def test_rollback_to_serving_succeeds(registry: Registry, option: str) -> None:
    arguments = ["--reason", "again"] if option == "--reason" else [option]

    result = run("rollback", "--to", "v3", *arguments, "--registry", registry.url)

    assert result.returncode == 0
    assert result.stdout == "version v3 serves already; nothing to do\n"
    assert result.stderr == ""
    assert registry.serving() == 3
    assert len(registry.history()) == 3


def test_invalid_name_checked_before_store(tmp_path: Path) -> None:
    result = run("rollback", "--to", "../x", "--registry", str(tmp_path / "none"))

    assert result.returncode == 2
    assert "invalid version '../x'" in result.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("version", "advice"),
    [
        (1, ""),
        # The serving version: not "serves already; nothing to do".
        (
            3,
            ". It serves already: move serving to an intact version with "
            "'rollback --to', or publish a new one",
        ),
    ],
)
def test_corrupt_target_refused(registry: Registry, version: int, advice: str) -> None:
    path = Path(registry.url) / version_key(version, "weights.safetensors")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:10])

    result = run("rollback", "--to", f"v{version}", "--registry", registry.url)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"rollback: version v{version} is corrupt: file weights.safetensors has "
        f"10 bytes, the manifest records {size}{advice}\n"
    )
    assert registry.serving() == 3


def test_rollback_to_deleted_serving_fails(registry: Registry) -> None:
    shutil.rmtree((Path(registry.url) / version_key(3, "manifest.json")).parent)

    result = run("rollback", "--to", "v3", "--registry", registry.url)

    assert result.returncode == 1
    assert result.stderr.startswith("rollback: unknown version 'v3'")
    assert "It serves already: move serving to an intact version" in result.stderr


def test_rollback_away_from_damaged_manifest(registry: Registry) -> None:
    # No job recorded a fingerprint, so the serving version's manifest is
    # the reference, and it cannot be read.
    (Path(registry.url) / version_key(3, "manifest.json")).write_text("{")

    result = run("rollback", "--to", "v2", "--registry", registry.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "rolled back serving from v3 to v2\n"
    assert result.stderr.startswith(
        "rollback: warning: did not check that v2 is compatible: no job "
        "recorded its fingerprint, and the serving version's manifest cannot "
        "be read (version v3 is corrupt: manifest.json is unreadable"
    )
    assert registry.serving() == 2


class _Planted:
    """A pickle that creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_unparsable_weights_refused(registry: Registry, tmp_path: Path) -> None:
    # Files whose SHA-256 matches the manifest, but the weights are a pickle.
    marker = tmp_path / "unpickled"
    files = make_files(7)
    files["weights.safetensors"] = pickle.dumps(_Planted(marker))
    planted = registry.publish(
        files, make_fields(), "job", "planted", move_pointer=False
    )

    result = run("rollback", "--to", f"v{planted}", "--registry", registry.url)

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"rollback: version v{planted} is corrupt: file weights.safetensors is "
        "not a valid safetensors file ("
    )
    assert registry.serving() == 3
    assert not marker.exists()


def test_incompatible_target_refused(registry: Registry) -> None:
    registry.set_running_fingerprint(OTHER_FINGERPRINT, "job")

    result = run("rollback", "--to", "v1", "--registry", registry.url)

    assert result.returncode == 1
    assert "version v1 is incompatible" in result.stderr
    assert "no stored version is compatible" in result.stderr
    assert registry.serving() == 3


@pytest.mark.parametrize("case", ["missing", "other files", "a file", "empty"])
def test_bad_registry_path_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "target"
    if case == "other files":
        path.mkdir()
        (path / "notes.txt").write_text("not a registry")
    elif case == "a file":
        path.write_text("not a registry")
    elif case == "empty":
        path.mkdir()

    result = run("rollback", "--to", "v1", "--registry", str(path))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert str(path) in result.stderr


def test_pause_and_resume(registry: Registry) -> None:
    missing_reason = run("rollback", "--pause", "--registry", registry.url)
    paused = run(
        "rollback", "--pause", "--reason", "incident 7", "--registry", registry.url
    )
    status = run("rollback", "--status", "--registry", registry.url)
    again = run("rollback", "--pause", "--reason", "twice", "--registry", registry.url)
    resumed = run("rollback", "--resume", "--registry", registry.url)
    resumed_again = run("rollback", "--resume", "--registry", registry.url)

    assert missing_reason.returncode == 2
    assert paused.stdout == "paused automatic promotion; v3 serves\n"
    assert "automatic promotion paused by operator:" in status.stdout
    assert "(incident 7)" in status.stdout
    assert again.returncode == 0
    assert "already paused" in again.stdout
    assert "UTC (incident 7)" in again.stdout
    assert "the reason 'twice' was not recorded" in again.stdout
    assert resumed.stdout == "resumed automatic promotion; v3 serves\n"
    assert resumed_again.returncode == 0
    assert resumed_again.stdout.startswith(
        "automatic promotion is not paused (resumed by operator:"
    )
    assert not registry.is_paused()


def test_repeated_pause_escapes_stored_actor(registry: Registry) -> None:
    registry.pause("job:\x1b[31mred", "through the API")

    again = run("rollback", "--pause", "--reason", "twice", "--registry", registry.url)

    assert again.returncode == 0
    assert "paused by job:\\x1b[31mred" in again.stdout
    assert "\x1b" not in again.stdout


def test_registry_from_environment(registry: Registry, tmp_path: Path) -> None:
    result = run(
        "rollback",
        "--to",
        "v2",
        env={"STREAMLEARN_REGISTRY": registry.url},
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert registry.serving() == 2


def test_config_precedence(tmp_path: Path) -> None:
    (tmp_path / "streamlearn.toml").write_text(
        '[registry]\nurl = "/from/file"\nannounce_topic = "projects/p/topics/t"\n'
    )
    environ = {"STREAMLEARN_REGISTRY": "/from/env"}

    by_option = load_config("/from/option", None, environ, tmp_path)
    by_env = load_config(None, None, environ, tmp_path)
    by_file = load_config(None, None, {}, tmp_path)
    by_default = load_config(None, None, {}, tmp_path / "elsewhere")

    assert by_option.registry == "/from/option"
    assert by_env.registry == "/from/env"
    assert by_file.registry == "/from/file"
    assert by_file.announce_topic == "projects/p/topics/t"
    assert by_default.registry == "./runs/registry"
    assert by_default.announce_topic is None


def test_help_shows_examples() -> None:
    rollback_help = run("rollback", "--help")
    versions_help = run("streamlearn", "versions", "list", "--help")

    assert "rollback --to v12" in rollback_help.stdout
    assert "streamlearn versions list --filter" in versions_help.stdout


def test_versions_list_table(registry: Registry) -> None:
    registry.set_serving(1, "ops:ana", "v3 bad")

    result = run("streamlearn", "versions", "list", "--registry", registry.url)

    rows = [re.split(r"\s{2,}", line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stderr
    assert rows[0] == [
        "VERSION",
        "STATUS",
        "PARENT",
        "CREATED",
        "EVENTS",
        "HOLDOUT METRICS",
    ]
    assert rows[1][:3] == ["v3", "rolled back", "v2"]
    assert rows[2][:3] == ["v2", "retired", "v1"]
    assert rows[3][:3] == ["v1", "serving", "-"]
    assert rows[1][3] == "2026-03-01 12:00:05"
    assert rows[1][4:] == ["4096", "accuracy=0.82 log_loss=0.31"]
    assert len(rows) == 4


def test_versions_list_filter_limit_json(registry: Registry) -> None:
    result = run(
        "streamlearn",
        "versions",
        "list",
        "--registry",
        registry.url,
        "--filter",
        "metrics.holdout.accuracy>=0.81",
        "--limit",
        "1",
        "--format",
        "json",
    )

    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == ["v3"]
    assert rows[0]["status"] == "serving"
    assert rows[0]["metrics"]["holdout"]["accuracy"] == pytest.approx(0.82)


def test_versions_list_bad_filter(registry: Registry) -> None:
    result = run(
        "streamlearn",
        "versions",
        "list",
        "--registry",
        registry.url,
        "--filter",
        "metrics.holdout.acc>0.5",
    )

    assert result.returncode == 2
    assert "no version has the key metrics.holdout.acc" in result.stderr


def test_versions_describe_text(registry: Registry) -> None:
    registry.set_serving(1, "ops:ana", "v3 bad")

    result = run(
        "streamlearn", "versions", "describe", "v3", "--registry", registry.url
    )

    fields = dict(
        line.split(":", 1) for line in result.stdout.splitlines() if ":" in line
    )
    assert result.returncode == 0, result.stderr
    assert fields["status"].strip() == "rolled back"
    assert fields["lineage"].strip() == "v3 <- v2 <- v1"
    assert fields["integrity"].strip() == "ok (2 files, SHA-256 checked)"
    assert fields["holdout metrics"].strip() == "accuracy=0.82 log_loss=0.31"
    assert "(ended by rollback)" in result.stdout


def test_versions_describe_json(registry: Registry) -> None:
    result = run(
        "streamlearn",
        "versions",
        "describe",
        "2",
        "--format",
        "json",
        "--registry",
        registry.url,
    )

    document = json.loads(result.stdout)
    assert document["name"] == "v2"
    assert document["status"] == "retired"
    assert document["lineage"] == ["v2", "v1"]
    assert len(document["served"]) == 1
    assert document["served"][0]["ended_by"] == "publish"
    assert document["events"]["count"] == 4096


def test_versions_describe_unknown(registry: Registry) -> None:
    result = run(
        "streamlearn", "versions", "describe", "v7", "--registry", registry.url
    )

    assert result.returncode == 1
    assert result.stderr == (
        "streamlearn versions: unknown version 'v7': the registry holds v1..v3 "
        "(3 versions)\n"
    )


def test_rollback_announces_on_topic(
    registry: Registry, topic_and_subscription: tuple[str, str]
) -> None:
    topic, subscription = topic_and_subscription
    emulator = {"PUBSUB_EMULATOR_HOST": os.environ.get("PUBSUB_EMULATOR_HOST", "")}

    result = run(
        "rollback",
        "--to",
        "v2",
        "--registry",
        registry.url,
        env={**emulator, "STREAMLEARN_ANNOUNCE_TOPIC": topic},
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (message,) = pull(subscription, 1)
    assert message.attributes["serving_version"] == "v2"
    assert message.attributes["previous_version"] == "v3"
    assert message.attributes["kind"] == "rollback"


def test_failed_announcement_warns(
    registry: Registry, topic_and_subscription: tuple[str, str]
) -> None:
    topic, _ = topic_and_subscription
    emulator = {"PUBSUB_EMULATOR_HOST": os.environ.get("PUBSUB_EMULATOR_HOST", "")}

    result = run(
        "rollback",
        "--to",
        "v2",
        "--registry",
        registry.url,
        "--announce-topic",
        topic + "-missing",
        env=emulator,
    )

    assert result.returncode == 0
    assert result.stdout == "rolled back serving from v3 to v2\n"
    assert result.stderr.startswith(
        "rollback: warning: the change is made but was not announced"
    )
    assert registry.serving() == 2


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` reject new entries, also for root (chattr +i)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_read_only_registry_one_line(registry: Registry) -> None:
    with read_only(Path(registry.url)):
        result = run("rollback", "--to", "v1", "--registry", registry.url)

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"rollback: cannot write state.json in registry {registry.url}: "
    )
    assert "check the folder's permissions" in result.stderr
    assert result.stderr.count("\n") == 1
    assert registry.serving() == 3


def test_versions_list_shows_corrupt(registry: Registry) -> None:
    (Path(registry.url) / version_key(2, "manifest.json")).write_text("{")

    from_index = run("streamlearn", "versions", "list", "--registry", registry.url)
    (Path(registry.url) / index_key(2)).unlink()
    from_files = run("streamlearn", "versions", "list", "--registry", registry.url)
    described = run(
        "streamlearn", "versions", "describe", "v2", "--registry", registry.url
    )

    # The index keeps an intact copy of the manifest, so the listing shows
    # v2 until the index is gone; describe reads the file itself.
    indexed_rows = [
        re.split(r"\s{2,}", line) for line in from_index.stdout.splitlines()
    ]
    file_rows = [re.split(r"\s{2,}", line) for line in from_files.stdout.splitlines()]
    assert indexed_rows[2][:2] == ["v2", "retired"]
    assert file_rows[2] == [
        "v2",
        "corrupt",
        "version v2 is corrupt: manifest.json is unreadable (Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1)); roll back to "
        "another version",
    ]
    assert file_rows[1][:2] == ["v3", "serving"]
    assert described.returncode == 1
    assert described.stderr.startswith(
        "streamlearn versions: version v2 is corrupt: manifest.json is unreadable"
    )


def test_versions_describe_corrupt_file(registry: Registry) -> None:
    (Path(registry.url) / version_key(1, "learner.json")).write_text("{}")

    result = run(
        "streamlearn", "versions", "describe", "v1", "--registry", registry.url
    )

    integrity = [
        line for line in result.stdout.splitlines() if line.startswith("integrity")
    ]
    assert result.returncode == 0, result.stderr
    assert integrity == [
        "integrity:        CORRUPT: version v1 is corrupt: file learner.json has 2 "
        "bytes, the manifest records 11"
    ]


def test_commands_on_gcs_registry(gcs_bucket: str, gcs_endpoint: str) -> None:
    url = f"gs://{gcs_bucket}/models"
    registry = open_registry(url, create=True, clock=FixedClock())
    for seed in range(3):
        registry.publish(make_files(seed), make_fields(), "job", "ok")
    emulator = {"STORAGE_EMULATOR_HOST": gcs_endpoint}

    rolled = run("rollback", "--to", "v1", "--registry", url, env=emulator)
    listed = run(
        "streamlearn",
        "versions",
        "list",
        "--format",
        "json",
        env={**emulator, "STREAMLEARN_REGISTRY": url},
    )

    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout == "rolled back serving from v3 to v1\n"
    assert registry.serving() == 1
    statuses = {row["name"]: row["status"] for row in json.loads(listed.stdout)}
    assert statuses == {"v3": "rolled back", "v2": "retired", "v1": "serving"}


def test_versions_list_filter_by_name(registry: Registry) -> None:
    result = run(
        "streamlearn",
        "versions",
        "list",
        "--registry",
        registry.url,
        "--filter",
        "name=v2 OR name=V3",
        "--format",
        "json",
    )

    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == ["v3", "v2"]


def test_versions_list_unquoted_time_hint(registry: Registry) -> None:
    result = run(
        "streamlearn",
        "versions",
        "list",
        "--registry",
        registry.url,
        "--filter",
        "created_at>2026-03-01T12:00:00",
    )

    assert result.returncode == 2
    assert "unexpected ':'" in result.stderr
    assert "quote a value with spaces, a colon" in result.stderr


@pytest.mark.parametrize(
    ("start", "target", "printed", "reason"),
    [
        (None, "v1", "rolled back serving from v3 to v1", "manual rollback"),
        (1, "v3", "moved serving from v1 to v3", "manual move"),
    ],
    ids=["back", "forward"],
)
def test_rollback_to_default_reason(
    registry: Registry, start: int | None, target: str, printed: str, reason: str
) -> None:
    if start is not None:
        registry.set_serving(start, "job", "setup")

    result = run("rollback", "--to", target, "--registry", registry.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout == printed + "\n"
    assert registry.history()[-1].reason == f"{reason}, no reason given"
