"""The registry contract, run against the local folder and the GCS server."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from registry_helpers import (
    FINGERPRINT,
    OTHER_FINGERPRINT,
    FixedClock,
    make_fields,
    make_files,
)

from rollback.backends.base import Storage
from rollback.errors import (
    AlreadyServing,
    CorruptVersion,
    IncompatibleVersion,
    InvalidInput,
    InvalidVersionName,
    NoPreviousVersion,
    PointerConflict,
    PromotionPaused,
    RegistryError,
    RegistryNotFound,
    VersionNotFound,
)
from rollback.layout import COUNTER_KEY, STATE_KEY, index_key
from rollback.manifest import _digest
from rollback.names import MAX_VERSION
from rollback.registry import Registry, open_registry, version_key


@pytest.fixture
def registry(registry_url: str, clock: FixedClock) -> Registry:
    return open_registry(registry_url, create=True, clock=clock)


def publish_many(registry: Registry, count: int) -> list[int]:
    return [
        registry.publish(make_files(seed), make_fields(), "job", f"candidate {seed}")
        for seed in range(count)
    ]


def test_publish_numbers_from_one(registry: Registry) -> None:
    assert publish_many(registry, 3) == [1, 2, 3]
    assert registry.versions() == [1, 2, 3]
    assert registry.serving() == 3


def test_publish_stores_files_and_manifest(registry: Registry) -> None:
    files = make_files(7)
    version = registry.publish(files, make_fields(accuracy=0.93), "job", "better")

    loaded = registry.read(f"v{version}")

    assert loaded.files == files
    manifest = loaded.manifest
    assert manifest.version == 1
    assert manifest.parent is None
    assert manifest.created_at.isoformat() == "2026-03-01T12:00:01+00:00"
    assert manifest.fields.fingerprint == FINGERPRINT
    assert manifest.fields.events_count == 4096
    assert manifest.fields.holdout_metrics == {"accuracy": 0.93, "log_loss": 0.31}
    assert manifest.fields.champion_metrics == {"accuracy": 0.88, "log_loss": 0.35}
    assert tuple(manifest.fields.label_vocabulary) == ("buy", "browse", "leave")
    assert manifest.fields.code_version == "abc1234"
    assert manifest.files["learner.json"].size_bytes == len(files["learner.json"])
    assert manifest.files["learner.json"].sha256 == (
        hashlib.sha256(files["learner.json"]).hexdigest()
    )


def test_parent_defaults_to_serving(registry: Registry) -> None:
    publish_many(registry, 2)
    registry.set_serving("v1", "ops:ana", "v2 is worse")

    version = registry.publish(make_files(9), make_fields(), "job", "retrained")

    assert registry.describe(version).parent == 1


def test_numbers_never_reused_after_rollback(registry: Registry) -> None:
    publish_many(registry, 3)
    registry.set_serving(1, "ops:ana", "bad labels since v2")

    version = registry.publish(make_files(4), make_fields(), "job", "retrained")

    assert version == 4
    assert registry.versions() == [1, 2, 3, 4]


def test_version_names_are_equivalent(registry: Registry) -> None:
    publish_many(registry, 12)
    for name in ("12", "v12", "V012", 12):
        assert registry.describe(name).version == 12


@pytest.mark.parametrize("name", ["v-1", "../x", "v12; rm", "v0", "", "12.0"])
def test_invalid_version_name_rejected(registry: Registry, name: str) -> None:
    with pytest.raises(InvalidVersionName):
        registry.describe(name)


def test_unknown_version_names_range(registry: Registry) -> None:
    publish_many(registry, 3)

    with pytest.raises(VersionNotFound) as raised:
        registry.set_serving("v99", "ops:ana", "try")

    assert str(raised.value) == (
        "unknown version 'v99': the registry holds v1..v3 (3 versions)"
    )
    assert registry.serving() == 3


def test_unknown_version_with_one_version(registry: Registry) -> None:
    publish_many(registry, 1)

    with pytest.raises(VersionNotFound) as raised:
        registry.set_serving("v99", "ops:ana", "try")

    assert str(raised.value) == "unknown version 'v99': the registry holds only v1"


def test_set_serving_records_history(registry: Registry) -> None:
    publish_many(registry, 3)

    change = registry.set_serving(
        2,
        "job",
        "accuracy fell below 0.8",
        kind="auto_rollback",
        details={"accuracy": 0.61, "threshold": 0.8},
    )

    assert registry.serving() == 2
    history = registry.history()
    assert [entry.kind for entry in history] == [
        "publish",
        "publish",
        "publish",
        "auto_rollback",
    ]
    assert [(entry.from_version, entry.to_version) for entry in history] == [
        (None, 1),
        (1, 2),
        (2, 3),
        (3, 2),
    ]
    assert history[-1] == change
    assert change.seq == 4
    assert change.actor == "job"
    assert change.reason == "accuracy fell below 0.8"
    assert change.details == {"accuracy": 0.61, "threshold": 0.8}


def test_set_serving_expected_mismatch(registry: Registry) -> None:
    publish_many(registry, 3)

    with pytest.raises(PointerConflict):
        registry.set_serving(1, "ops:ana", "stale view", expected="v2")

    assert registry.serving() == 3
    assert len(registry.history()) == 3


def test_set_serving_already_there_despite_stale_expected(registry: Registry) -> None:
    publish_many(registry, 3)

    # A racing operator moved the pointer to the same version first.
    with pytest.raises(AlreadyServing):
        registry.set_serving(3, "ops:ana", "same request", expected="v1")

    assert registry.serving() == 3
    assert len(registry.history()) == 3


def test_set_serving_expected_match(registry: Registry) -> None:
    publish_many(registry, 3)

    registry.set_serving(1, "ops:ana", "fresh view", expected=3)

    assert registry.serving() == 1


class RollbackAfterManifest:
    """A store that lets an operator roll back right after a manifest write."""

    def __init__(self, storage: Storage, operator: Registry) -> None:
        self.storage = storage
        self.operator = operator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def create(self, key: str, data: bytes) -> bool:
        created = self.storage.create(key, data)
        if key.endswith("/manifest.json"):
            self.operator.rollback("v1", "ops:ana", "raced the publish")
        return created


def test_publish_race_keeps_version(registry: Registry, clock: FixedClock) -> None:
    publish_many(registry, 2)
    operator = open_registry(registry.url)
    racing = Registry(RollbackAfterManifest(registry.storage, operator), clock=clock)

    with pytest.raises(PointerConflict) as raised:
        racing.publish(make_files(5), make_fields(), "job", "late", expected=2)

    assert raised.value.version == 3
    assert registry.versions() == [1, 2, 3]
    assert registry.read(3).files == make_files(5)
    assert registry.serving() == 1
    assert registry.history()[-1].actor == "ops:ana"


def test_already_serving_rejected(registry: Registry) -> None:
    publish_many(registry, 2)

    with pytest.raises(AlreadyServing):
        registry.set_serving(2, "ops:ana", "no-op")

    assert len(registry.history()) == 2


def test_publish_without_moving_pointer(registry: Registry) -> None:
    publish_many(registry, 1)

    version = registry.publish(
        make_files(2), make_fields(), "job", "shadow", move_pointer=False
    )

    assert version == 2
    assert registry.serving() == 1
    assert len(registry.history()) == 1


def test_previous_skips_rolled_back(registry: Registry) -> None:
    publish_many(registry, 3)
    registry.set_serving(2, "job", "v3 failed", kind="auto_rollback")

    # v3 was rolled back and v2 serves: the previous version is v1, not v3.
    assert registry.previous_version() == 1
    change = registry.rollback(None, "ops:ana", "v2 also bad")
    assert (change.from_version, change.to_version) == (2, 1)
    assert registry.serving() == 1


def test_previous_of_first_version_missing(registry: Registry) -> None:
    publish_many(registry, 1)

    with pytest.raises(NoPreviousVersion):
        registry.rollback(None, "ops:ana", "nothing to go back to")


def test_pause_keeps_pointer_on_publish(registry: Registry) -> None:
    publish_many(registry, 1)
    registry.pause("ops:ana", "incident 7")

    with pytest.raises(PromotionPaused) as raised:
        registry.publish(make_files(2), make_fields(), "job", "validated")

    assert isinstance(raised.value, PointerConflict)
    assert raised.value.version == 2
    assert registry.is_paused()
    assert registry.versions() == [1, 2]
    assert registry.serving() == 1
    with pytest.raises(PromotionPaused):
        registry.set_serving(2, "job", "promote", kind="promote")
    assert registry.serving() == 1


def test_pause_allows_rollback(registry: Registry) -> None:
    publish_many(registry, 2)
    registry.pause("ops:ana", "incident 7")

    registry.rollback("v1", "ops:ana", "v2 misbehaves")

    assert registry.serving() == 1
    registry.resume("ops:ana", "fixed")
    assert not registry.is_paused()
    registry.set_serving(2, "job", "re-validated", kind="promote")
    assert registry.serving() == 2
    kinds = [entry.kind for entry in registry.history()]
    assert kinds == ["publish", "publish", "pause", "rollback", "resume", "promote"]


def test_pause_holds_back_automatic_rollback(registry: Registry) -> None:
    # The job checks the pause before it scores its kept versions; an
    # operator who pauses meanwhile must still find the pointer unmoved.
    publish_many(registry, 2)
    registry.pause("ops:ana", "incident 7")

    with pytest.raises(PromotionPaused, match="v1 was not rolled back to"):
        registry.set_serving(
            1, "job", "drift", expected=2, kind="auto_rollback", details={}
        )

    assert registry.serving() == 2
    kinds = [entry.kind for entry in registry.history()]
    assert kinds == ["publish", "publish", "pause"]


def test_incompatible_fingerprint_rejected(registry: Registry) -> None:
    registry.publish(make_files(1), make_fields(), "job", "first")
    registry.publish(
        make_files(2), make_fields(fingerprint=OTHER_FINGERPRINT), "job", "new spec"
    )
    registry.set_running_fingerprint(OTHER_FINGERPRINT, "job")

    with pytest.raises(IncompatibleVersion) as raised:
        registry.rollback("v1", "ops:ana", "try old")

    message = str(raised.value)
    assert "version v1 is incompatible" in message
    assert FINGERPRINT in message
    assert OTHER_FINGERPRINT in message
    assert "compatible versions, newest first: v2" in message
    assert registry.serving() == 2


def test_state_format_mismatch_rejected(registry: Registry) -> None:
    for state_format in ("online-learner/1", "", "online-learner/2"):
        fields = make_fields(state_format=state_format)
        registry.publish(make_files(1), fields, "job", state_format)
    registry.set_running_fingerprint(
        FINGERPRINT, "job", state_format="online-learner/2"
    )

    with pytest.raises(IncompatibleVersion) as raised:
        registry.rollback("v1", "ops:ana", "try old")
    undeclared = registry.rollback("v2", "ops:ana", "declares no format")

    assert str(raised.value) == (
        "version v1 is incompatible: its learner state format 'online-learner/1' "
        "differs from the running job's 'online-learner/2', so the job could not "
        "load it; pick a version with the same format"
    )
    assert undeclared.to_version == 2
    assert registry.running_state_format() == "online-learner/2"


def test_compatible_with_serving_by_default(registry: Registry) -> None:
    registry.publish(make_files(1), make_fields(), "job", "first")
    registry.publish(
        make_files(2), make_fields(fingerprint=OTHER_FINGERPRINT), "job", "new spec"
    )

    # No running fingerprint recorded: the serving version's is the reference.
    with pytest.raises(IncompatibleVersion):
        registry.set_serving(1, "ops:ana", "try old")
    assert registry.running_fingerprint() is None


@pytest.mark.parametrize(
    ("damage", "expected_message"),
    [
        (lambda data: data[:-10], "has {short} bytes, the manifest records {full}"),
        (lambda data: b"\xff" + data[1:], "does not match its SHA-256"),
    ],
    ids=["truncated", "altered"],
)
def test_corrupt_file_rejected(
    registry: Registry, damage: object, expected_message: str
) -> None:
    publish_many(registry, 12)
    key = version_key(12, "weights.safetensors")
    original = registry.storage.read(key)
    assert original is not None
    size = len(original.data)
    expected_message = expected_message.format(short=size - 10, full=size)
    registry.storage.put(key, damage(original.data))  # type: ignore[operator]
    registry.set_serving(1, "ops:ana", "move away")

    with pytest.raises(CorruptVersion) as raised:
        registry.set_serving(12, "ops:ana", "back to v12")

    assert str(raised.value).startswith(
        "version v12 is corrupt: file weights.safetensors "
    )
    assert expected_message in str(raised.value)
    assert registry.serving() == 1
    with pytest.raises(CorruptVersion):
        registry.read(12)


def test_corrupt_manifest_rejected(registry: Registry) -> None:
    publish_many(registry, 2)
    key = version_key(1, "manifest.json")
    blob = registry.storage.read(key)
    assert blob is not None
    edited = json.loads(blob.data)
    edited["metrics"]["holdout"]["accuracy"] = 0.99
    registry.storage.put(key, json.dumps(edited).encode())

    with pytest.raises(CorruptVersion) as raised:
        registry.set_serving(1, "ops:ana", "back")

    assert "version v1 is corrupt: manifest.json" in str(raised.value)
    assert "SHA-256" in str(raised.value)
    assert registry.serving() == 2


def test_invalid_file_names_rejected(registry: Registry) -> None:
    for name in ("../weights", ".hidden", "a/b", "manifest.json", ""):
        with pytest.raises(InvalidInput):
            registry.publish({name: b"x"}, make_fields(), "job", "bad name")
    assert registry.versions() == []


def test_manifest_path_name_rejected(registry: Registry) -> None:
    publish_many(registry, 2)
    key = version_key(1, "manifest.json")
    blob = registry.storage.read(key)
    assert blob is not None
    body = json.loads(blob.data)
    body.pop("manifest_sha256")
    data = make_files(0)["learner.json"]
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    # The key would reach v1's own learner.json through the parent folder.
    body["files"] = {"../v000001/learner.json": entry}
    body["manifest_sha256"] = _digest(body)
    registry.storage.put(key, json.dumps(body).encode())
    registry.storage.put(index_key(1), b"{}")

    with pytest.raises(CorruptVersion) as raised:
        registry.describe(1)
    with pytest.raises(CorruptVersion):
        registry.set_serving(1, "ops:ana", "back")

    assert "invalid file name '../v000001/learner.json'" in str(raised.value)
    assert registry.serving() == 2


def test_incomplete_version_named(registry: Registry) -> None:
    publish_many(registry, 2)
    registry.storage.put(version_key(3, "weights.safetensors"), b"killed publish")

    with pytest.raises(VersionNotFound) as raised:
        registry.describe(3)

    assert str(raised.value) == (
        f"version v3 is incomplete: versions/v000003/ in registry {registry.url} "
        "contains files but no manifest.json, so its publish was killed or the "
        "manifest was removed by hand; roll back to another version"
    )


def test_publish_stops_at_max_version(registry: Registry) -> None:
    publish_many(registry, 1)
    registry.storage.put(
        COUNTER_KEY, json.dumps({"next_version": MAX_VERSION}).encode()
    )

    last = registry.publish(make_files(1), make_fields(), "job", "last number")
    with pytest.raises(RegistryError) as raised:
        registry.publish(make_files(2), make_fields(), "job", "past the last")

    assert last == MAX_VERSION
    assert registry.describe(f"v{MAX_VERSION}").version == MAX_VERSION
    assert "has used every version number up to v999999999" in str(raised.value)
    assert registry.versions() == [1, MAX_VERSION]
    assert registry.serving() == MAX_VERSION


def test_reopen_sees_same_state(registry_url: str, clock: FixedClock) -> None:
    first = open_registry(registry_url, create=True, clock=clock)
    publish_many(first, 2)
    first.pause("ops:ana", "incident")

    second = open_registry(registry_url)

    assert second.versions() == [1, 2]
    assert second.serving() == 2
    assert second.is_paused()
    assert second.history() == first.history()


def test_open_missing_registry_rejected(registry_url: str) -> None:
    with pytest.raises(RegistryNotFound):
        open_registry(registry_url)


def test_counter_behind_versions_rejected(registry: Registry) -> None:
    publish_many(registry, 3)
    registry.storage.put(COUNTER_KEY, b'{"next_version": 2}')

    with pytest.raises(RegistryError, match="version v2 already has a file"):
        registry.publish(make_files(9), make_fields(), "job", "after a bad edit")

    assert registry.read(2).files == make_files(1)
    assert registry.serving() == 3


def test_damaged_state_named(registry: Registry) -> None:
    publish_many(registry, 1)
    registry.storage.put(STATE_KEY, b'{"format": "streamlearn-state/1", "serv')

    with pytest.raises(
        RegistryError, match=r"^registry state is damaged: state\.json in registry "
    ):
        registry.serving()


def test_publish_stale_expected_stores_nothing(registry: Registry) -> None:
    publish_many(registry, 2)

    with pytest.raises(PointerConflict) as raised:
        registry.publish(make_files(5), make_fields(), "job", "stale", expected=1)

    assert raised.value.version is None
    assert registry.versions() == [1, 2]


def test_rollback_details_stored_as_json(registry: Registry) -> None:
    publish_many(registry, 2)

    registry.set_serving(
        1,
        "job",
        "drift",
        kind="auto_rollback",
        details={"accuracy": float("nan"), "threshold": 0.8},
    )

    assert registry.history()[-1].details == {"accuracy": "nan", "threshold": 0.8}
    state_blob = registry.storage.read(STATE_KEY)
    assert state_blob is not None
    assert b"NaN" not in state_blob.data
    with pytest.raises(InvalidInput, match="invalid details"):
        registry.set_serving(2, "job", "x", kind="auto_rollback", details={"a": {1}})
    assert registry.serving() == 1


def test_manifests_from_index_or_files(registry: Registry) -> None:
    publish_many(registry, 4)
    expected = {number: registry.describe(number) for number in range(1, 5)}
    key = index_key(1)
    blob = registry.storage.read(key)
    assert blob is not None
    index = json.loads(blob.data)
    assert sorted(index["manifests"]) == ["1", "2", "3", "4"]

    assert registry.manifests([1, 2, 3, 4]) == expected

    # One entry altered, one missing (a publisher killed before its index
    # update): both are read from their manifest files instead.
    index["manifests"]["2"]["events"]["count"] = 1
    del index["manifests"]["3"]
    registry.storage.put(key, json.dumps(index).encode())
    assert registry.manifests([1, 2, 3, 4]) == expected

    registry.storage.put(key, b"{not json")
    assert registry.manifests([1, 2, 3, 4]) == expected

    registry.publish(make_files(9), make_fields(), "job", "after damage")
    repaired = registry.storage.read(key)
    assert repaired is not None
    assert sorted(json.loads(repaired.data)["manifests"]) == ["5"]
