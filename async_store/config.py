"""The ``STORE_*`` configuration keys: one table of names, defaults, checks and doc lines.

The seed Flask-Store's keys keep their names and meaning; new keys follow the same pattern. Every
key is listed once, in :data:`SETTINGS`. ``Store.init_app``, ``Store.check_config``, the CLI's
environment reader (:func:`config_from_env`) and the docs read that table: a key is checked at
``init_app`` with a message naming it, its value and what is allowed, instead of failing on the
first upload; an unknown ``STORE_*`` key is a :class:`StoreConfigWarning` naming the closest
known one.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._checks import (
    acl,
    boolean,
    choice,
    content_types,
    domain,
    extensions,
    image_formats,
    image_variants,
    imaging,
    integer,
    object_params,
    optional,
    optional_text,
    part,
    path,
    positive,
    provider,
    seconds,
    server_url,
    sniffing,
    unset_if_empty,
    url_prefix,
)
from ._obstore_config import OBSTORE_ROWS as OBSTORE

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

__all__ = [
    "DEFAULTS",
    "SETTINGS",
    "Setting",
    "StoreConfig",
    "StoreConfigWarning",
    "config_from_env",
    "parse_value",
    "read_config",
]

MIB = 1024 * 1024

#: Backends a key belongs to: ``None`` for every backend.
Backend = str | None


class StoreConfigWarning(UserWarning):
    """A ``STORE_*`` key that async_store does not know (a typo, most likely)."""


@dataclass(frozen=True)
class Setting:
    """One config key: its default, its check, the backend it belongs to, a doc line."""

    key: str
    #: The default value, or a function of the app's folders (``Folders``) that returns it.
    default: Any
    #: ``check(key, value)`` returns the value to use (normalised) or raises NotConfiguredError.
    check: Callable[[str, Any], Any]
    doc: str
    backend: Backend = None
    #: Names, paths, URLs and secrets: given as text (environment), never parsed as JSON.
    text: bool = False


@dataclass(frozen=True)
class Folders:
    """What defaults may depend on: the app's folders and the provider's backend."""

    root_path: str
    instance_path: str
    #: ``"local"``, ``"s3"``, or None for a provider of its own (only the shared keys apply).
    backend: str | None


def _default_path(folders: Folders) -> str | None:
    # Never the current directory (the seed's default): the route would publish the app's code.
    if folders.backend == "local":
        return os.path.join(folders.instance_path, "uploads")
    if folders.backend == "s3":
        return ""  # the top of the bucket
    return None  # a provider of its own: its app_defaults, or the app, must set it


def _default_spool(folders: Folders) -> str:
    return os.path.join(folders.instance_path, "store-spool")


def _default_tus(folders: Folders) -> str:
    return os.path.join(folders.instance_path, "store-tus")


S = Setting
#: Every key, once. The README's configuration tables and the docs list the same keys.
SETTINGS: tuple[Setting, ...] = (
    S(
        "STORE_PROVIDER",
        "local",
        provider,
        "'local', 's3', a dotted path or a Provider class",
    ),
    S("STORE_PATH", _default_path, path, "local: the folder; S3: the key prefix", text=True),
    S(
        "STORE_DOMAIN",
        None,
        unset_if_empty(domain),
        "the base URL of absolute_url",
        text=True,
    ),
    S("STORE_URL_PREFIX", "/uploads", url_prefix, "the URL path of local files", text=True),
    S("STORE_SERVE_FILES", True, boolean, "register the route that serves local files"),
    S(
        "STORE_SERVE_SIGNED_ONLY",
        False,
        boolean,
        "the route serves only signed links (url(expires=...)); needs SECRET_KEY",
    ),
    S(
        "STORE_FSYNC",
        False,
        boolean,
        "flush each file and its folder to disk before publishing",
    ),
    S("STORE_CHUNK_SIZE", MIB, integer(4096, " bytes"), "chunk size for streaming copies"),
    # The body limit a Flask app without MAX_CONTENT_LENGTH gets (Quart's own default); None
    # keeps Flask's unlimited one. See Store.init_app.
    S(
        "STORE_MAX_CONTENT_LENGTH",
        16 * MIB,
        optional(integer(1, " bytes")),
        "Flask only: MAX_CONTENT_LENGTH for an app without one",
    ),
    # Validation (``_validate``): checked as the bytes stream in, by every save of the storage.
    S(
        "STORE_MAX_FILE_SIZE",
        None,
        optional(integer(1, " bytes")),
        "the largest file a save stores, bytes (None: no limit)",
    ),
    S(
        "STORE_ALLOWED_EXTENSIONS",
        None,
        extensions,
        "the extensions a file may have (None: any)",
    ),
    S(
        "STORE_ALLOWED_TYPES",
        None,
        sniffing(content_types),
        "the types a file may have, detected from its bytes (None: any)",
    ),
    S(
        "STORE_CHECK_CONTENT",
        False,
        sniffing(boolean),
        "refuse a file whose bytes are not what its extension says",
    ),
    # Images (``_images``): rules read from the header, variants made after the original.
    S("STORE_IMAGE_FORMATS", None, imaging(image_formats), "the image formats taken (None: any)"),
    S("STORE_IMAGE_MAX_WIDTH", None, imaging(optional(positive)), "the widest image, pixels"),
    S("STORE_IMAGE_MAX_HEIGHT", None, imaging(optional(positive)), "the tallest image, pixels"),
    S("STORE_IMAGE_MAX_PIXELS", None, imaging(optional(positive)), "the most pixels an image has"),
    S("STORE_IMAGE_VARIANTS", {}, imaging(image_variants), "variants of each image: {name: {...}}"),
    S("STORE_IMAGE_STRIP_METADATA", False, boolean, "originals without EXIF/GPS/XMP (not direct)"),
    S("STORE_STORAGES", {}, provider, "more storages: {name: {KEY: value}} (_storages.py)"),
    S("STORE_BACKGROUND", False, boolean, "save() returns once the file is spooled"),
    S("STORE_SPOOL_PATH", _default_spool, path, "where background uploads wait", text=True),
    S("STORE_BACKGROUND_RETRIES", 5, positive, "delivery attempts per upload"),
    S("STORE_BACKGROUND_BACKOFF", 0.5, seconds(zero=True), "seconds before the 2nd attempt"),
    S(
        "STORE_BACKGROUND_MAX_BACKOFF",
        30.0,
        seconds(zero=False),
        "longest wait between tries",
    ),
    S("STORE_BACKGROUND_CONCURRENCY", 4, positive, "deliveries at once, per event loop"),
    S(
        "STORE_BACKGROUND_DRAIN_TIMEOUT",
        30.0,
        seconds(zero=True),
        "shutdown's wait, seconds",
    ),
    # Resumable uploads (async_store.tus)
    S("STORE_TUS_PATH", _default_tus, path, "where unfinished tus uploads wait", text=True),
    S(
        "STORE_TUS_MAX_SIZE",
        5 * 1024 * MIB,
        optional(integer(1, " bytes")),
        "the largest tus upload, bytes (None: no limit)",
    ),
    S("STORE_TUS_EXPIRES", 86400.0, seconds(zero=False), "seconds a tus upload waits for more"),
    # S3
    S("STORE_S3_BUCKET", None, optional_text, "the bucket (required)", "s3", text=True),
    S("STORE_S3_REGION", None, optional_text, "the bucket's region", "s3", text=True),
    S("STORE_S3_ACCESS_KEY", None, optional_text, "static credentials", "s3", text=True),
    S("STORE_S3_SECRET_KEY", None, optional_text, "static credentials", "s3", text=True),
    S(
        "STORE_S3_SESSION_TOKEN",
        None,
        optional_text,
        "temporary credentials",
        "s3",
        text=True,
    ),
    S(
        "STORE_S3_ENDPOINT_URL",
        None,
        unset_if_empty(server_url),
        "an S3-compatible server",
        "s3",
        text=True,
    ),
    S(
        "STORE_S3_PUBLIC_ENDPOINT_URL",
        None,
        unset_if_empty(server_url),
        "that server as browsers reach it",
        "s3",
        text=True,
    ),
    S(
        "STORE_S3_ADDRESSING_STYLE",
        None,
        optional(choice("path", "virtual", "auto")),
        "botocore's addressing style",
        "s3",
    ),
    S("STORE_S3_ACL", "private", acl, "a canned ACL sent with each upload, or None", "s3"),
    S(
        "STORE_S3_OBJECT_PARAMS",
        {},
        object_params,
        "parameters sent with every upload",
        "s3",
    ),
    S("STORE_S3_CONDITIONAL_WRITES", True, boolean, "claim names with If-None-Match", "s3"),
    S(
        "STORE_S3_CHECKSUM",
        "auto",
        choice("auto", "sha256", "crc32", "off"),
        "the checksum the server verifies an upload with",
        "s3",
    ),
    S("STORE_S3_MULTIPART_THRESHOLD", 8 * MIB, part, "multipart from this size", "s3"),
    S("STORE_S3_PART_SIZE", 8 * MIB, part, "the size of each part", "s3"),
    S("STORE_S3_MAX_CONCURRENCY", 4, positive, "parts of one upload in flight", "s3"),
    # Upload content held in memory by all saves of an event loop together.
    S("STORE_S3_MAX_MEMORY", 128 * MIB, positive, "upload bytes in memory per loop", "s3"),
    # One client serves every request of a process (botocore's 10 is sized for s3transfer's 10
    # threads; aiohttp's own default is 100).
    S("STORE_S3_MAX_POOL_CONNECTIONS", 50, positive, "HTTP connections per loop", "s3"),
    S(
        "STORE_S3_MAX_ATTEMPTS",
        5,
        positive,
        "attempts per request, the first included",
        "s3",
    ),
    S("STORE_S3_CONNECT_TIMEOUT", 10, seconds(zero=False), "seconds to connect", "s3"),
    S("STORE_S3_READ_TIMEOUT", 60, seconds(zero=False), "seconds to wait for data", "s3"),
    # Direct-to-bucket uploads (``async_store.direct``): what the server signs for a browser.
    S("STORE_DIRECT_MAX_SIZE", 1024 * MIB, positive, "the largest direct upload, in bytes", "s3"),
    S(
        "STORE_DIRECT_CONTENT_TYPES",
        None,
        content_types,
        "the types a direct upload may have (None: any)",
        "s3",
    ),
    S("STORE_DIRECT_EXPIRES", 3600, integer(60), "seconds a signed upload URL is valid", "s3"),
    S(
        "STORE_DIRECT_MAX_AGE",
        86400,
        integer(60),
        "seconds a staged upload may wait for its confirm",
        "s3",
    ),
    # obstore: S3, GCS, Azure or memory through one backend (rows in _obstore_config)
    *(S(key, default, check, doc, "obstore", text) for key, default, check, doc, text in OBSTORE),
)
del S
_BY_KEY = {setting.key: setting for setting in SETTINGS}

#: Defaults that do not depend on the app (a plain mapping, for reading them in code).
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS if not callable(s.default)}


class StoreConfig(dict[str, Any]):
    """The ``STORE_*`` keys of one app, checked and normalised at ``init_app``.

    A plain mapping, so providers can read keys of their own (``config['STORE_S3_BUCKET']``).
    ``root_path`` is the app's root folder, against which relative paths are resolved, and
    ``instance_path`` its instance folder.
    """

    root_path: str = ""
    instance_path: str = ""

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


def defaults(folders: Folders) -> dict[str, Any]:
    """Every key's default for one app (the backend's keys and the shared ones)."""
    return {
        s.key: s.default(folders) if callable(s.default) else s.default
        for s in SETTINGS
        if s.backend in (None, folders.backend)
    }


def read_config(
    app_config: Mapping[str, Any],
    folders: Folders,
    extra_keys: Collection[str] = (),
    storage: str | None = None,
) -> StoreConfig:
    """The checked ``STORE_*`` config of one storage; changes nothing (no folder, no app.config).

    Every key of the storage's backend is present (its default where none is set), each
    checked and normalised by its :class:`Setting`.

    :param extra_keys: keys a custom provider reads (its ``REQUIRED_CONFIGURATION``): known.
    :param storage: the name of a storage of ``STORE_STORAGES`` (its warnings name it).
    :raises NotConfiguredError: naming the first wrong key, its value and what is allowed.
    """
    warn_unknown(app_config, extra_keys, storage)
    given = {k: v for k, v in app_config.items() if k.startswith("STORE_")}
    merged = {**defaults(folders), **given}
    config = StoreConfig()
    for key, value in merged.items():
        setting = _BY_KEY.get(key)
        in_scope = setting is not None and setting.backend in (None, folders.backend)
        config[key] = setting.check(key, value) if in_scope and setting else value
    config.root_path = folders.root_path
    config.instance_path = folders.instance_path
    return config


def warn_unknown(
    app_config: Mapping[str, Any], extra_keys: Collection[str] = (), storage: str | None = None
) -> None:
    """Warn about each ``STORE_*`` key no setting (nor the provider) knows, naming the closest."""
    known = [*_BY_KEY, *extra_keys]
    for key in app_config:
        if key.startswith("STORE_") and key not in _BY_KEY and key not in extra_keys:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if storage is None:
                hint = f": did you mean {close[0]}?" if close else " (ignored)"
                what = f"unknown config key {key}{hint}"
            else:  # the storage's dict names its keys without STORE_
                hint = f": did you mean {close[0][6:]}?" if close else " (ignored)"
                what = f"STORE_STORAGES[{storage!r}]: unknown key {key[6:]}{hint}"
            warnings.warn(what, StoreConfigWarning, stacklevel=find_caller())


def find_caller() -> int:
    """The stack level of the first frame outside async_store (where init_app was called)."""
    import sys

    frame, level = sys._getframe(1), 1
    package = os.path.dirname(__file__)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def parse_value(key: str, text: str) -> Any:
    """A ``STORE_*`` value given as text (environment, ``KEY=VALUE``) as a config value.

    JSON where it parses (``1048576``, ``true``, ``null``, ``{"CacheControl": "max-age=60"}``),
    else the string; names, paths, URLs and secrets (``STORE_PATH``, ``STORE_S3_BUCKET``,
    ``STORE_S3_SECRET_KEY``, …) and ``STORE_PROVIDER`` always stay strings.
    """
    setting = _BY_KEY.get(key)
    if key == "STORE_PROVIDER" or (setting.text if setting else _looks_like_text(key)):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _looks_like_text(key: str) -> bool:
    # A custom provider's keys: names, paths, URLs and secrets by their suffix.
    suffixes = ("_KEY", "_TOKEN", "_BUCKET", "_PATH", "_URL", "_DOMAIN", "_PREFIX", "_REGION")
    return key.endswith(suffixes)


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The non-empty ``STORE_*`` variables of ``environ`` (default ``os.environ``) as config::

        app.config.update(config_from_env())   # STORE_PROVIDER=s3 STORE_S3_BUCKET=… in the env

    Values go through :func:`parse_value`.
    """
    environ = os.environ if environ is None else environ
    return {k: parse_value(k, v) for k, v in environ.items() if k.startswith("STORE_") and v}
