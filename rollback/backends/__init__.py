"""Object stores the registry keeps its files in: a local folder or GCS."""

from __future__ import annotations

from rollback.backends.base import Blob, Storage

__all__ = ["Blob", "Storage"]
