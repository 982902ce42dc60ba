"""Backends: the I/O of a configured storage (local disk, S3, memory), one object each.

See :mod:`async_store.backends.base` for the interface a backend implements.
"""

from __future__ import annotations

from .base import Backend, NoFreeName, StoredFile, no_free_name

__all__ = ["Backend", "NoFreeName", "StoredFile", "no_free_name"]
