"""The ``STORE_*`` configuration keys, their defaults and their checks.

The seed Flask-Store's keys keep their names and meaning. New keys follow the same pattern. All of
them are read once, at ``init_app``; a missing or wrong value raises
:class:`~async_store.exceptions.NotConfiguredError` there, naming the key and the fix, instead of
failing on the first upload.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

__all__ = ["DEFAULTS", "StoreConfig", "config_from_env", "parse_value", "read_config"]

#: Defaults shared by every provider; a provider adds its own in ``app_defaults``.
DEFAULTS: dict[str, Any] = {
    "STORE_PROVIDER": "local",
    "STORE_DOMAIN": None,
    "STORE_URL_PREFIX": "/uploads",
    # Register the route that serves local files under STORE_URL_PREFIX.
    "STORE_SERVE_FILES": True,
    # fsync a file before publishing it: survives power loss, costs a disk flush per file.
    "STORE_FSYNC": False,
    # Chunk size for streaming copies.
    "STORE_CHUNK_SIZE": 1024 * 1024,
    # Background uploads: save() returns once spooled (STORE_SPOOL_PATH), a task delivers.
    "STORE_BACKGROUND": False,
    "STORE_BACKGROUND_RETRIES": 5,
    "STORE_BACKGROUND_BACKOFF": 0.5,
    "STORE_BACKGROUND_MAX_BACKOFF": 30.0,
    "STORE_BACKGROUND_CONCURRENCY": 4,
    "STORE_BACKGROUND_DRAIN_TIMEOUT": 30.0,
    # The body limit a Flask app without MAX_CONTENT_LENGTH gets (Quart's own default); None
    # keeps Flask's unlimited one. See Store.init_app.
    "STORE_MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
}


class StoreConfig(dict[str, Any]):
    """The ``STORE_*`` keys of one app, as they were at ``init_app``.

    A plain mapping, so providers can read keys of their own (``config['STORE_S3_BUCKET']``).
    ``root_path`` is the app's root folder, against which relative paths are resolved.
    """

    root_path: str = ""

    def __repr__(self) -> str:
        shown = {k: ("***" if _is_secret(k) and v else v) for k, v in self.items()}
        return f"StoreConfig({shown!r})"

    def secrets(self) -> list[str]:
        """The values of credential keys, for scrubbing them from messages and logs."""
        return [str(v) for k, v in self.items() if _is_secret(k) and v]

    @property
    def path(self) -> str:
        return str(self["STORE_PATH"])

    @property
    def domain(self) -> str | None:
        value = self.get("STORE_DOMAIN")
        return str(value).rstrip("/") if value else None

    @property
    def url_prefix(self) -> str:
        return str(self["STORE_URL_PREFIX"]).rstrip("/")

    @property
    def chunk_size(self) -> int:
        return int(self["STORE_CHUNK_SIZE"])


def _is_secret(key: str) -> bool:
    return any(word in key for word in ("SECRET", "ACCESS_KEY", "TOKEN", "PASSWORD"))


def _check_prefix(value: Any) -> None:
    if not isinstance(value, str) or not value.startswith("/") or "://" in value:
        raise NotConfiguredError(
            f"STORE_URL_PREFIX must be a URL path starting with '/' such as '/uploads', "
            f"not {value!r}; put the scheme and host in STORE_DOMAIN instead."
        )
    if any(part in (".", "..") for part in value.split("/")):
        raise NotConfiguredError(f"STORE_URL_PREFIX {value!r} must not contain '.' or '..'.")


def _check_domain(value: Any) -> None:
    if value is None:
        return
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise NotConfiguredError(
            f"STORE_DOMAIN must be a base URL such as 'https://cdn.example.org' (or None for "
            f"relative URLs), not {value!r}."
        )


def read_config(app_config: MutableMapping[str, Any], root_path: str = "") -> StoreConfig:
    """Collect and check the ``STORE_*`` keys of one app.

    Defaults are written back into ``app_config`` with ``setdefault`` (so the app shows what is in
    force), then the shared keys are checked.
    """
    for key, value in DEFAULTS.items():
        app_config.setdefault(key, value)
    config = StoreConfig({k: v for k, v in app_config.items() if k.startswith("STORE_")})
    config.root_path = root_path
    _check_prefix(config["STORE_URL_PREFIX"])
    _check_domain(config["STORE_DOMAIN"])
    chunk = config["STORE_CHUNK_SIZE"]
    if not isinstance(chunk, int) or chunk < 4096:
        raise NotConfiguredError(
            f"STORE_CHUNK_SIZE must be an int of at least 4096, not {chunk!r}."
        )
    limit = config["STORE_MAX_CONTENT_LENGTH"]
    if limit is not None and (type(limit) is not int or limit <= 0):
        raise NotConfiguredError(
            f"STORE_MAX_CONTENT_LENGTH must be a number of bytes (the request body limit for a "
            f"Flask app without MAX_CONTENT_LENGTH) or None for no limit, not {limit!r}."
        )
    path = config.get("STORE_PATH")
    if not isinstance(path, (str, os.PathLike)):
        raise NotConfiguredError(
            f"STORE_PATH must be set to a path (a folder on disk for the local provider, a key "
            f"prefix for S3), not {path!r}."
        )
    config["STORE_PATH"] = os.fspath(path)
    return config


# Keys whose values are names, paths or secrets: never parsed as JSON ("0123" stays a string).
_TEXT_SUFFIXES = ("_KEY", "_TOKEN", "_BUCKET", "_PATH", "_URL", "_DOMAIN", "_PREFIX", "_REGION")


def parse_value(key: str, text: str) -> Any:
    """A ``STORE_*`` value given as text (environment, ``KEY=VALUE``) as a config value.

    JSON where it parses (``1048576``, ``true``, ``null``, ``{"CacheControl": "max-age=60"}``),
    else the string; names, paths, URLs and secrets (``STORE_PATH``, ``STORE_S3_BUCKET``,
    ``STORE_S3_SECRET_KEY``, …) and ``STORE_PROVIDER`` always stay strings.
    """
    if key.endswith(_TEXT_SUFFIXES) or key == "STORE_PROVIDER":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The non-empty ``STORE_*`` variables of ``environ`` (default ``os.environ``) as config::

        app.config.update(config_from_env())   # STORE_PROVIDER=s3 STORE_S3_BUCKET=… in the env

    Values go through :func:`parse_value`.
    """
    environ = os.environ if environ is None else environ
    return {k: parse_value(k, v) for k, v in environ.items() if k.startswith("STORE_") and v}
