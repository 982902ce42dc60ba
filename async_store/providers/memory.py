"""The memory provider: files in a dict, for tests (``STORE_PROVIDER = "memory"``).

Every app (every ``Store.init_app``) gets a :class:`~async_store.backends.memory.MemoryBackend`
of its own, empty at the start; its files are gone when the process ends. Only the shared keys
apply (``STORE_PATH`` is an optional key prefix, default ``""``), no route serves the files,
and their URLs (``STORE_URL_PREFIX``) lead nowhere unless the app serves them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..backends.memory import MemoryBackend
from .base import Provider

if TYPE_CHECKING:
    from flask.sansio.app import App

__all__ = ["MemoryProvider"]


class MemoryProvider(Provider):
    """Stores files in memory, in the app's :class:`~async_store.backends.memory.MemoryBackend`
    (``store.state(app).provider_class.backend.files`` shows them)."""

    backend_class = MemoryBackend
    config_backend = "memory"

    @classmethod
    def app_defaults(cls, app: App) -> None:
        if app.config.get("STORE_PATH") is None:  # the table has no default for this backend
            app.config["STORE_PATH"] = ""
