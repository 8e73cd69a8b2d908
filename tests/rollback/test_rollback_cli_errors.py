"""How the commands fail: exit codes, one-line errors, hand-damaged registries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_helpers import FixedClock, make_fields, make_files, run

from rollback.layout import STATE_KEY, index_key
from rollback.manifest import _digest
from rollback.registry import Registry, open_registry, version_key


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A local registry with v1..v3 published, v3 serving."""
    registry = open_registry(tmp_path / "registry", create=True, clock=FixedClock())
    for seed in range(3):
        registry.publish(make_files(seed), make_fields(), "job", "ok")
    return registry


def assert_one_line(stderr: str, start: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(start), stderr


def rewrite_manifest(registry: Registry, version: int, files: object) -> None:
    """Replace the file entries of a manifest and recompute its own SHA-256."""
    path = Path(registry.url) / version_key(version, "manifest.json")
    body = json.loads(path.read_text())
    body.pop("manifest_sha256")
    body["files"] = files
    body["manifest_sha256"] = _digest(body)
    path.write_text(json.dumps(body))
    (Path(registry.url) / index_key(version)).unlink()


@pytest.mark.parametrize(
    "args",
    [
        ("--to", "v-1"),
        ("--to", "../x"),
        ("--to", "v12; rm"),
        ("--to", ""),
        ("--to", "v1000000000"),
        ("--resume", "--actor", " "),
        ("--announce-topic", "foo"),
        ("--to", "v1", "--reason", "line one\nline two"),
        ("--to", "v1", "--reason", "\x1b[31mred\x1b[0m"),
        ("--to", "v1", "--actor", "ops:ana\r"),
        ("--to", "v1", "--reason", "x" * 1001),
        ("--pause", "--reason", "   "),
        ("--pause",),
    ],
    ids=[
        "negative version",
        "path",
        "shell text",
        "empty version",
        "past max version",
        "blank actor",
        "topic without project",
        "newline in reason",
        "ANSI escape in reason",
        "carriage return in actor",
        "reason too long",
        "blank pause reason",
        "pause without reason",
    ],
)
def test_invalid_argument_exits_2(registry: Registry, args: tuple[str, ...]) -> None:
    result = run("rollback", *args, "--registry", registry.url)

    assert result.returncode == 2
    assert_one_line(result.stderr, "rollback: ")
    assert "invalid" in result.stderr or "--pause needs --reason" in result.stderr
    assert registry.serving() == 3
    assert len(registry.history()) == 3


def test_invalid_filter_exits_2(registry: Registry) -> None:
    result = run(
        "streamlearn", "versions", "list", "--filter", "=", "--registry", registry.url
    )

    assert result.returncode == 2
    assert_one_line(result.stderr, "streamlearn versions: invalid filter '='")


def test_longest_reason_accepted(registry: Registry) -> None:
    reason = "x" * 1000

    result = run(
        "rollback", "--to", "v1", "--reason", reason, "--registry", registry.url
    )

    assert result.returncode == 0, result.stderr
    assert registry.history()[-1].reason == reason


def test_leading_zeros_name_version(registry: Registry) -> None:
    result = run("rollback", "--to", "v0000000001", "--registry", registry.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "rolled back serving from v3 to v1\n"


def test_status_escapes_control_characters(registry: Registry) -> None:
    registry.pause("ops:ana\n", "incident\x1b[2J 7")

    result = run("rollback", "--status", "--registry", registry.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert "paused by ops:ana\\n at " in result.stdout
    assert "(incident\\x1b[2J 7)" in result.stdout


def test_no_topic_note_only_without_topic(registry: Registry) -> None:
    moved = run("rollback", "--to", "v1", "--registry", registry.url)
    paused = run("rollback", "--pause", "--reason", "x", "--registry", registry.url)

    assert moved.stderr == (
        "rollback: note: no announce topic is configured, so running jobs pick up "
        "the change at their next pointer check (the streaming job reads the "
        "pointer every 5 s)\n"
    )
    assert paused.stderr == ""


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ("outside", "invalid file name '../../outside'"),
        ({}, "it lists no files"),
    ],
)
def test_manifest_file_names_checked(
    registry: Registry, tmp_path: Path, files: object, problem: str
) -> None:
    if files == "outside":
        # A real file outside the registry, with its true SHA-256 and size:
        # without the name check, every command would accept v1.
        outside = tmp_path / "outside"
        outside.write_bytes(b"not a weights file")
        digest = hashlib.sha256(outside.read_bytes()).hexdigest()
        files = {"../../outside": {"sha256": digest, "size_bytes": 18}}
    rewrite_manifest(registry, 1, files)

    described = run(
        "streamlearn", "versions", "describe", "v1", "--registry", registry.url
    )
    planned = run("rollback", "--to", "v1", "--dry-run", "--registry", registry.url)

    assert described.returncode == 1
    assert_one_line(described.stderr, "streamlearn versions: version v1 is corrupt: ")
    assert problem in described.stderr
    assert planned.returncode == 1
    assert_one_line(planned.stderr, "rollback: version v1 is corrupt: ")
    assert problem in planned.stderr


def test_unknown_home_folder_one_line() -> None:
    result = run("rollback", "--status", "--registry", "~nosuchuser-streamlearn/x")

    assert result.returncode == 1
    assert_one_line(
        result.stderr, "rollback: invalid registry path '~nosuchuser-streamlearn/x'"
    )


def test_config_not_utf8_one_line(registry: Registry, tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes('[registry]\nurl = "caf\xe9"\n'.encode("latin-1"))

    result = run("rollback", "--status", env={"STREAMLEARN_CONFIG": str(config)})

    assert result.returncode == 1
    assert_one_line(result.stderr, f"rollback: cannot read config file {config}: ")
    assert "not UTF-8" in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[registry]\nurl = 5\n", "[registry] url has type int (5)"),
        ('[registry]\nannounce_topic = ["t"]\n', "announce_topic has type list"),
        ('[registry]\nulr = "/x"\n', "unknown key 'ulr' in [registry]"),
    ],
)
def test_config_value_checked(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "streamlearn.toml").write_text(text)

    result = run("rollback", "--status", cwd=tmp_path)

    assert result.returncode == 1
    assert_one_line(result.stderr, "rollback: invalid config file ")
    assert problem in result.stderr


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda state: [], "it contains a JSON list, not an object"),
        (
            lambda state: {**state, "serving": "abc"},
            "the state has serving 'abc', expected an int >= 1",
        ),
        (
            lambda state: {
                **state,
                "history": [
                    *state["history"][:-1],
                    {**state["history"][-1], "to_version": "3"},
                ],
            },
            "history entry 3 has to_version '3', expected an int >= 1",
        ),
        (lambda state: {**state, "serving": 1}, "serving is v1, but the last pointer"),
        (lambda state: {**state, "paused": "no"}, "paused is 'no', expected true"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [("rollback",), ("rollback", "--status"), ("streamlearn", "versions", "list")],
)
def test_damaged_state_one_line(
    registry: Registry,
    edit: Callable[[Any], Any],
    problem: str,
    command: tuple[str, ...],
) -> None:
    path = Path(registry.url) / STATE_KEY
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    result = run(*command, "--registry", registry.url)

    assert result.returncode == 1
    program = "rollback" if command[0] == "rollback" else "streamlearn versions"
    assert_one_line(
        result.stderr,
        f"{program}: registry state is damaged: "
        f"{STATE_KEY} in registry {registry.url}: ",
    )
    assert problem in result.stderr


def test_debug_prints_traceback(registry: Registry) -> None:
    (Path(registry.url) / STATE_KEY).write_text("[]")

    result = run("rollback", "--status", "--debug", "--registry", registry.url)

    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "rollback: registry state is damaged: "
    )


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (version_key(1, "manifest.json"), "manifest.json in registry"),
        (version_key(1, "weights.safetensors"), "weights.safetensors in registry"),
        (".lock", "cannot open the lock file"),
    ],
)
def test_folder_in_place_of_file(registry: Registry, key: str, problem: str) -> None:
    path = Path(registry.url) / key
    path.unlink(missing_ok=True)
    path.mkdir()

    result = run("rollback", "--to", "v1", "--registry", registry.url)

    assert result.returncode == 1
    assert_one_line(result.stderr, "rollback: ")
    assert problem in result.stderr
    assert registry.serving() == 3


def test_stray_version_folders_ignored(registry: Registry) -> None:
    versions = Path(registry.url) / "versions"
    (versions / "v\u00b2").mkdir()
    shutil.copytree(versions / "v000001", versions / "v12")

    listed = run(
        "streamlearn",
        "versions",
        "list",
        "--format",
        "json",
        "--registry",
        registry.url,
    )
    described = run(
        "streamlearn", "versions", "describe", "v12", "--registry", registry.url
    )

    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["v3", "v2", "v1"]
    assert described.stderr == (
        "streamlearn versions: unknown version 'v12': the registry holds v1..v3 "
        "(3 versions)\n"
    )


def test_incomplete_version_named(registry: Registry) -> None:
    folder = Path(registry.url) / "versions" / "v000004"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"left by a killed publish")

    result = run("rollback", "--to", "v4", "--registry", registry.url)

    assert result.returncode == 1
    assert_one_line(
        result.stderr,
        f"rollback: version v4 is incomplete: versions/v000004/ in registry "
        f"{registry.url} contains files but no manifest.json",
    )


def test_closed_pipe_exits_quietly(registry: Registry) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` does once it has its lines
    try:
        result = run(
            "streamlearn",
            "versions",
            "list",
            "--registry",
            registry.url,
            stdout=write_end,
        )
    finally:
        os.close(write_end)

    assert result.returncode == 141
    assert result.stderr == ""


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder other users can enter, unlike pytest's tmp_path under root."""
    folder = Path(tempfile.mkdtemp(prefix="streamlearn-registry-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(folder)


def test_unreadable_version_listed(shared_folder: Path) -> None:
    registry = open_registry(
        shared_folder / "registry", create=True, clock=FixedClock()
    )
    for seed in range(3):
        registry.publish(make_files(seed), make_fields(), "job", "ok")
    (Path(registry.url) / "versions" / "v000002").chmod(0)
    # Root reads any folder, so the command runs as an unprivileged user.
    as_user = "nobody" if os.geteuid() == 0 else None

    from_index = run(
        "streamlearn",
        "versions",
        "list",
        "--format",
        "json",
        "--registry",
        registry.url,
        as_user=as_user,
    )
    (Path(registry.url) / index_key(2)).unlink()
    from_files = run(
        "streamlearn",
        "versions",
        "list",
        "--format",
        "json",
        "--registry",
        registry.url,
        as_user=as_user,
    )

    assert from_index.returncode == 0, from_index.stderr
    assert [row["name"] for row in json.loads(from_index.stdout)] == ["v3", "v2", "v1"]
    assert from_files.returncode == 0, from_files.stderr
    rows = {row["name"]: row for row in json.loads(from_files.stdout)}
    assert sorted(rows) == ["v1", "v2", "v3"]
    assert rows["v2"]["status"] == "unreadable"
    assert rows["v2"]["error"] == (
        f"cannot read versions/v000002/manifest.json in registry {registry.url}: "
        "Permission denied; check the folder's permissions"
    )
