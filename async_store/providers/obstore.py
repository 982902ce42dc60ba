"""The obstore provider: files in S3, Google Cloud Storage, Azure Blob or memory through
obstore (``STORE_PROVIDER = "obstore"``, ``pip install 'async_store[obstore]'``). The I/O is
:class:`~async_store.backends.obstore.ObstoreBackend`'s; this module adds the config check."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..backends._obstore_store import build
from ..backends.obstore import ObstoreBackend
from .base import Provider

if TYPE_CHECKING:
    from flask.sansio.app import App

    from ..config import StoreConfig

__all__ = ["ObstoreProvider"]


class ObstoreProvider(Provider):
    """Stores files in the store ``STORE_OBSTORE_URL`` (``s3://bucket/prefix``, ``gs://bucket``,
    ``az://container``, ``memory://``), below the key prefix ``STORE_PATH`` (default ``""``).

    ``STORE_OBSTORE_OPTIONS`` is passed to ``obstore.store.from_url``: endpoint, region,
    credentials, ``client_options``, ``retry_config``. ``STORE_DOMAIN`` is the public base URL
    of :attr:`absolute_url` (the bucket's URL, or a CDN); :meth:`url` with ``expires`` signs a
    GET. See the obstore page of the docs for what it promises and what it does not.
    """

    REQUIRED_CONFIGURATION: ClassVar[tuple[str, ...]] = ("STORE_OBSTORE_URL",)
    config_backend = "obstore"
    backend_class = ObstoreBackend

    @classmethod
    def app_defaults(cls, app: App) -> None:
        if app.config.get("STORE_PATH") is None:  # the table has no default for this backend
            app.config["STORE_PATH"] = ""

    @classmethod
    def check_config(cls, config: StoreConfig) -> None:
        # Each key's own check is in the config table (async_store._obstore_config).
        super().check_config(config)
        config["STORE_PATH"] = config.path.strip("/")
        build(config)  # obstore's own check of the options: no request is made
