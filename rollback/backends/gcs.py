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

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from rollback.backends.base import Blob
from rollback.errors import RegistryError, RegistryNotWritable

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
    import google.cloud.storage as storage  # imported here: slow, local use skips it

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
        with self._request("check bucket", ""):
            return bool(self._bucket.exists())

    def read(self, key: str) -> Blob | None:
        blob = self._bucket.blob(self._prefix + key)
        with self._request("read", key):
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
        with self._request("write", key):
            try:
                blob.upload_from_string(data, if_generation_match=generation)
            except self._exceptions.PreconditionFailed:
                return False
        return True

    def put(self, key: str, data: bytes) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        blob = self._bucket.blob(self._prefix + key)
        with self._request("write", key):
            # Retrying is safe here: the registry puts only keys that one
            # writer owns, such as the files of the version it numbered.
            blob.upload_from_string(data, retry=DEFAULT_RETRY)

    def list_keys(self, prefix: str) -> list[str]:
        start = len(self._prefix)
        with self._request("list", prefix):
            blobs = self._client.list_blobs(
                self._bucket_name, prefix=self._prefix + prefix
            )
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
        with self._request("list", ""):
            blobs = self._client.list_blobs(
                self._bucket_name, prefix=self._prefix, max_results=1
            )
            return not any(True for _ in blobs)

    @contextlib.contextmanager
    def _request(self, action: str, key: str) -> Iterator[None]:
        """Turn the client's errors into registry errors naming the key."""
        target = f"{key} in registry {self._url}" if key else f"registry {self._url}"
        try:
            yield
        except self._exceptions.Forbidden as error:
            denied = RegistryNotWritable if action == "write" else RegistryError
            raise denied(
                f"cannot {action} {target}: {error.message}; check the "
                "credentials' permissions on the bucket"
            ) from error
        except self._exceptions.GoogleAPIError as error:
            raise RegistryError(
                f"failed to {action} {target}: {error}; retry, or check the "
                "bucket and STORAGE_EMULATOR_HOST"
            ) from error
