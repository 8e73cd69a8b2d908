"""Layout of a registry, in a local folder or under a GCS prefix.

registry.json                   marker naming the format
counter.json                    next version number (compare-and-swap)
state.json                      pointer, pause flag, history (compare-and-swap)
running.json                    fingerprint of the running job
versions/v000012/manifest.json  written last: the version exists once it does
versions/v000012/<file>         the version's files
index/000000.json               copies of manifests v1..v999, to list without
                                one read per version (a cache, see registry)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from rollback.backends.base import Blob, Storage
from rollback.errors import NotARegistry, RegistryError, RegistryNotFound

logger = logging.getLogger(__name__)

DEFAULT_REGISTRY = "./runs/registry"
MARKER_KEY = "registry.json"
MARKER_FORMAT = "streamlearn-registry/1"
COUNTER_KEY = "counter.json"
STATE_KEY = "state.json"
RUNNING_KEY = "running.json"
VERSIONS_PREFIX = "versions/"
INDEX_PREFIX = "index/"
# Versions per index shard: a publish rewrites one shard, so shards stay
# small (about 700 KB at 1,000 typical manifests) however many versions exist.
INDEX_SHARD_SIZE = 1000
# ASCII digits only: str.isdigit() also accepts digits such as '²'.
_VERSION_FOLDER = re.compile(r"v([0-9]{6,9})")


def version_key(version: int, name: str) -> str:
    """Return the storage key of one file of a version."""
    return f"{version_prefix(version)}{name}"


def version_prefix(version: int) -> str:
    """Return the key prefix of a version's folder, such as ``versions/v000012/``."""
    return f"{VERSIONS_PREFIX}v{version:06d}/"


def parse_version_folder(folder: str) -> int | None:
    """Return the number of a version folder name such as ``v000012``.

    Returns None for any other name, such as a folder made by hand
    (``v12``, ``v²``), because ``version_key`` would never reach it.
    """
    match = _VERSION_FOLDER.fullmatch(folder)
    if match is None:
        return None
    number = int(match.group(1))
    if number < 1 or folder != f"v{number:06d}":
        return None
    return number


def index_key(version: int) -> str:
    """Return the key of the index shard that lists ``version``."""
    return f"{INDEX_PREFIX}{version // INDEX_SHARD_SIZE:06d}.json"


def open_storage(url: str | Path) -> Storage:
    """Return the backend for a registry URL: ``gs://...`` or a local path."""
    text = str(url)
    if text.startswith("gs://"):
        from rollback.backends.gcs import GcsStorage  # loads google-cloud-storage

        return GcsStorage(text)
    if "://" in text and not text.startswith("file://"):
        raise RegistryError(
            f"unsupported registry URL {text!r}: use a local path, file://PATH "
            "or gs://bucket/prefix"
        )
    from rollback.backends.local import LocalStorage

    return LocalStorage(text.removeprefix("file://"))


def check_marker(storage: Storage, create: bool) -> None:
    """Check that ``storage`` is a registry, or make it one if ``create``."""
    url = storage.url
    # The marker first: one request on the usual path, and on GCS it needs
    # no permission on the bucket itself.
    marker = storage.read(MARKER_KEY)
    if marker is not None:
        check_marker_content(url, marker)
        return
    if not storage.exists():
        if not create or url.startswith("gs://"):
            raise RegistryNotFound(
                f"no registry at {url}: it does not exist; pass --registry, set "
                "STREAMLEARN_REGISTRY, or let the job publish a first version"
            )
    else:
        if not storage.is_empty():
            raise NotARegistry(
                f"{url} is not a registry: it contains other files but no "
                f"{MARKER_KEY}; pass an empty or new folder, or an existing registry"
            )
        if not create:
            raise RegistryNotFound(
                f"registry {url} is empty: no version has been published yet"
            )
    body = json.dumps({"format": MARKER_FORMAT}).encode()
    if not storage.create(MARKER_KEY, body):
        marker = storage.read(MARKER_KEY)  # created by a racing process
        if marker is not None:
            check_marker_content(url, marker)
    logger.info("created registry at %s", url)


def check_marker_content(url: str, marker: Blob) -> None:
    try:
        found = json.loads(marker.data).get("format")
    except (ValueError, AttributeError):
        found = None
    if found != MARKER_FORMAT:
        raise NotARegistry(
            f"{url} is not a registry of this kind: {MARKER_KEY} has format "
            f"{found!r}, expected {MARKER_FORMAT!r}"
        )


def parse_counter(url: str, blob: Blob) -> int:
    """Return the next version number stored in ``counter.json``."""
    try:
        number = json.loads(blob.data)["next_version"]
    except (ValueError, KeyError, TypeError) as error:
        raise RegistryError(
            f"{COUNTER_KEY} in registry {url} is damaged ({error}); set it to "
            '{"next_version": N} with N above every version number'
        ) from error
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise RegistryError(
            f"{COUNTER_KEY} in registry {url} contains next_version {number!r}; "
            "expected an int >= 1"
        )
    return number
