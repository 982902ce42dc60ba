"""The S3 provider: files in an S3 bucket (AWS S3 or any S3-compatible server), by the seed's
class names and dotted paths. The I/O is :class:`~async_store.backends.s3.S3Backend`'s; this
module adds the config check, and needs aioboto3 like the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..backends.s3 import S3Backend
from ..exceptions import NotConfiguredError
from .base import Provider

if TYPE_CHECKING:
    from flask.sansio.app import App

    from ..config import StoreConfig

__all__ = ["S3GeventProvider", "S3Provider"]


class S3Provider(Provider):
    """Stores files in the bucket ``STORE_S3_BUCKET``, below the key prefix ``STORE_PATH``.

    ``STORE_DOMAIN`` is the public base URL (a CDN, or the bucket's own URL); without it,
    :attr:`absolute_url` points at the bucket on ``STORE_S3_PUBLIC_ENDPOINT_URL``,
    ``STORE_S3_ENDPOINT_URL`` or AWS. Private objects are fetched with :meth:`url`, a presigned
    GET. See the README for every ``STORE_S3_*`` key.
    """

    REQUIRED_CONFIGURATION: ClassVar[tuple[str, ...]] = ("STORE_S3_BUCKET",)
    config_backend = "s3"
    backend_class = S3Backend

    @classmethod
    def check_config(cls, config: StoreConfig) -> None:
        # Each key's own check is in the config table (async_store.config.SETTINGS).
        super().check_config(config)
        has_key = config["STORE_S3_ACCESS_KEY"] is not None
        if has_key != (config["STORE_S3_SECRET_KEY"] is not None):
            raise NotConfiguredError(
                "STORE_S3_ACCESS_KEY and STORE_S3_SECRET_KEY go together: set both, or neither "
                "to use boto's credential chain (environment, ~/.aws, instance role)."
            )
        config["STORE_PATH"] = config.path.strip("/")


class S3GeventProvider(S3Provider):
    """The seed's gevent provider, kept by name: an S3 provider with background uploads on."""

    @classmethod
    def app_defaults(cls, app: App) -> None:
        app.config.setdefault("STORE_BACKGROUND", True)
