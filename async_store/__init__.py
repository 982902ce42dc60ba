"""async_store: async-first file storage for Quart and Flask.

::

    from async_store import Store

    store = Store(app)
    url = await store.Provider((await request.files)["afile"]).save()
    stored = await store.save_request(fields=["afile"])   # streamed as the body arrives
"""

from __future__ import annotations

from ._images import ImageRules, Variant
from ._ingest import StoredForm
from ._validate import Rules, UploadInfo
from ._variants import make_variants
from .config import StoreConfigWarning
from .exceptions import (
    BadUploadError,
    ContentMismatchError,
    DisallowedTypeError,
    FileTooLargeError,
    InvalidFileError,
    NotConfiguredError,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    StoreError,
    UnsafePathError,
    UploadError,
    UploadTooLargeError,
)
from .extension import AsyncStore, Store, StoreState, SyncStore, store_provider
from .providers.base import Provider
from .providers.local import LocalProvider
from .sync import SyncFile, SyncProvider

__version__ = "0.1.0"

__all__ = [
    "AsyncStore",
    "BadUploadError",
    "ContentMismatchError",
    "DisallowedTypeError",
    "FileTooLargeError",
    "ImageRules",
    "InvalidFileError",
    "LocalProvider",
    "NotConfiguredError",
    "NotFoundError",
    "Provider",
    "ProviderError",
    "ProviderUnavailableError",
    "Rules",
    "Store",
    "StoreConfigWarning",
    "StoreError",
    "StoreState",
    "StoredForm",
    "SyncFile",
    "SyncProvider",
    "SyncStore",
    "UnsafePathError",
    "UploadError",
    "UploadInfo",
    "UploadTooLargeError",
    "Variant",
    "make_variants",
    "store_provider",
]
