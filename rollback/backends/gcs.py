"""A registry in Google Cloud Storage, at ``gs://bucket/prefix``.

Create-only writes use ``if_generation_match=0`` and compare-and-swap uses
``if_generation_match=G``; the service applies both atomically, so no lock
is needed. Every object upload is atomic on GCS: a reader sees the old or
the new object, never part of one.

With the environment variable ``STORAGE_EMULATOR_HOST`` set, the client
talks to that emulator with anonymous credentials; otherwise it uses the
application default credentials.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rollback.backends.base import Blob
from rollback.errors import RegistryError, RegistryNotFound, RegistryNotWritable

logger = logging.getLogger(__name__)

# Project used against an emulator, which accepts any project id.
EMULATOR_PROJECT = "streamlearn-local"


def parse_gcs_url(url: str) -> tuple[str, str]:
    """Split ``gs://bucket/some/prefix`` into ``("bucket", "some/prefix/")``."""
    if not url.startswith("gs://"):
        raise RegistryError(f"invalid GCS URL {url!r}: expected gs://bucket/prefix")
    bucket, _, prefix = url[len("gs://") :].partition("/")
    if not bucket:
        raise RegistryError(f"invalid GCS URL {url!r}: the bucket name is missing")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def make_client() -> Any:
    """Return a storage client for the emulator, if one is set, or for GCS."""
    from google.cloud import storage  # imported here: slow, and local use skips it

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


class GcsStorage:
    """Objects under ``prefix`` in one bucket; see the module docstring."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        from google.api_core import exceptions

        self._url = url
        self._bucket_name, self._prefix = parse_gcs_url(url)
        self._client = make_client() if client is None else client
        self._bucket = self._client.bucket(self._bucket_name)
        self._exceptions = exceptions

    @property
    def url(self) -> str:
        return self._url

    def exists(self) -> bool:
        try:
            return bool(self._bucket.exists())
        except self._exceptions.Forbidden as error:
            raise RegistryNotFound(
                f"cannot access bucket {self._bucket_name} of registry {self._url}: "
                f"{error.message}; check the credentials' permissions"
            ) from error

    def read(self, key: str) -> Blob | None:
        blob = self._bucket.blob(self._prefix + key)
        try:
            data = blob.download_as_bytes()
        except self._exceptions.NotFound:
            return None
        return Blob(data=data, generation=str(blob.generation))

    def create(self, key: str, data: bytes) -> bool:
        return self.swap(key, data, None)

    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        blob = self._bucket.blob(self._prefix + key)
        generation = 0 if expected is None else int(expected)
        try:
            blob.upload_from_string(data, if_generation_match=generation)
        except self._exceptions.PreconditionFailed:
            return False
        except self._exceptions.Forbidden as error:
            raise self._not_writable(key, error) from error
        return True

    def put(self, key: str, data: bytes) -> None:
        blob = self._bucket.blob(self._prefix + key)
        try:
            blob.upload_from_string(data)
        except self._exceptions.Forbidden as error:
            raise self._not_writable(key, error) from error

    def list_keys(self, prefix: str) -> list[str]:
        start = len(self._prefix)
        blobs = self._client.list_blobs(self._bucket_name, prefix=self._prefix + prefix)
        return [blob.name[start:] for blob in blobs]

    def folders_containing(self, prefix: str, name: str) -> list[str]:
        # One paged listing of the prefix, not one request per folder.
        folders = []
        for key in self.list_keys(prefix):
            folder, _, rest = key[len(prefix) :].partition("/")
            if rest == name:
                folders.append(folder)
        return folders

    def is_empty(self) -> bool:
        blobs = self._client.list_blobs(
            self._bucket_name, prefix=self._prefix, max_results=1
        )
        return not any(True for _ in blobs)

    def _not_writable(self, key: str, error: Any) -> RegistryNotWritable:
        return RegistryNotWritable(
            f"cannot write {key} in registry {self._url}: {error.message}; "
            "check the credentials' permissions on the bucket"
        )
