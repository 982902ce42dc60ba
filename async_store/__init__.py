"""async_store: async-first file storage for Quart and Flask.

::

    from async_store import Store

    store = Store(app)
    url = await store.Provider((await request.files)["afile"]).save()
"""

from __future__ import annotations

from .exceptions import (
    NotConfiguredError,
    NotFoundError,
    ProviderError,
    StoreError,
    UnsafePathError,
    UploadError,
)
from .extension import Store, StoreState, store_provider
from .providers.base import Provider
from .providers.local import LocalProvider
from .sync import SyncFile, SyncProvider

__version__ = "0.1.0"

__all__ = [
    "LocalProvider",
    "NotConfiguredError",
    "NotFoundError",
    "Provider",
    "ProviderError",
    "Store",
    "StoreError",
    "StoreState",
    "SyncFile",
    "SyncProvider",
    "UnsafePathError",
    "UploadError",
    "store_provider",
]
