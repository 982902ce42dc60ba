"""The checks of the config table (``config.SETTINGS``): ``check(key, value)`` returns the value
to use, normalised, or raises :class:`NotConfiguredError` naming the key, the value and what is
allowed. Numbers and booleans may come as text (``os.environ.get(...)``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MIB = 1024 * 1024


def _refuse(key: str, value: Any, allowed: str) -> NotConfiguredError:
    return NotConfiguredError(f"{key} must be {allowed}, not {value!r}.")


def boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _refuse(key, value, "True or False")


def integer(minimum: int, unit: str = "") -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        number = value
        if isinstance(value, str):
            try:
                number = int(value.strip().replace("_", ""))
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
            raise _refuse(key, value, f"a whole number of at least {minimum:,}{unit}")
        return number

    return check


def seconds(*, zero: bool) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or number != number  # NaN
            or number < 0
            or (number == 0 and not zero)
            or number == float("inf")
        ):
            what = "zero or more" if zero else "more than zero"
            raise _refuse(key, value, f"a number of seconds, {what}")
        return float(number)

    return check


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def optional(key: str, value: Any) -> Any:
        return None if value is None else check(key, value)

    return optional


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _refuse(key, value, "a non-empty string")
    return value


def choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise _refuse(key, value, "one of " + ", ".join(map(repr, choices)))
        return str(value)

    return check


def path(key: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise NotConfiguredError(
            f"{key} must be set to a path (a folder on disk for the local provider, a key "
            f"prefix for S3), not {value!r}."
        )
    return os.fspath(value)


def server_url(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _refuse(key, value, "a URL such as 'http://127.0.0.1:8333'")
    return value


def domain(key: str, value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise NotConfiguredError(
            f"STORE_DOMAIN must be a base URL such as 'https://cdn.example.org' (or None for "
            f"relative URLs), not {value!r}."
        )
    return str(value)


def url_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "://" in value:
        raise NotConfiguredError(
            f"STORE_URL_PREFIX must be a URL path starting with '/' such as '/uploads', "
            f"not {value!r}; put the scheme and host in STORE_DOMAIN instead."
        )
    if any(part in (".", "..") for part in value.split("/")):
        raise NotConfiguredError(f"STORE_URL_PREFIX {value!r} must not contain '.' or '..'.")
    return value


def signing_secret(app_config: Mapping[str, Any], signed_only: bool, where: str = "") -> None:
    """A storage that serves only signed links needs the app's ``SECRET_KEY`` to check them
    (checked when its route is registered, at ``init_app``: ``store check`` reports it).

    :param where: how messages name the storage's keys: ``''`` (the ``STORE_*`` ones) or
        ``"STORE_STORAGES['docs']"``.
    """
    if signed_only and not app_config.get("SECRET_KEY"):
        key = f"{where}: SERVE_SIGNED_ONLY" if where else "STORE_SERVE_SIGNED_ONLY"
        raise NotConfiguredError(
            f"{key} is on, but the app has no SECRET_KEY to sign and check links with: every "
            f"request would be refused. Set app.config['SECRET_KEY'] to a long random value "
            f"(python -c 'import secrets; print(secrets.token_hex(32))') before init_app."
        )


def provider(key: str, value: Any) -> Any:
    return value  # resolved (and checked) by providers.get_provider_class, before the table


_CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
#: What STORE_S3_OBJECT_PARAMS may set (PutObject / CreateMultipartUpload parameter names).
OBJECT_PARAMS = frozenset(
    {
        "CacheControl",
        "ContentDisposition",
        "ContentEncoding",
        "ContentLanguage",
        "ContentType",
        "Expires",
        "Metadata",
        "ServerSideEncryption",
        "SSEKMSKeyId",
        "StorageClass",
        "Tagging",
    }
)


def acl(key: str, value: Any) -> str | None:
    if value is not None and value not in _CANNED_ACLS:
        raise NotConfiguredError(
            f"STORE_S3_ACL must be a canned ACL ({', '.join(sorted(_CANNED_ACLS))}) or None "
            f"to send none (R2 and buckets with ACLs disabled), not {value!r}."
        )
    return None if value is None else str(value)


def object_params(key: str, value: Any) -> dict[str, Any]:
    value = {} if value is None else value
    unknown = set(value) - OBJECT_PARAMS if isinstance(value, dict) else set()
    if not isinstance(value, dict) or unknown:
        raise NotConfiguredError(
            f"STORE_S3_OBJECT_PARAMS takes a dict of {', '.join(sorted(OBJECT_PARAMS))}; "
            f"unknown: {', '.join(sorted(unknown)) or repr(value)}."
        )
    return value


def part(key: str, value: Any) -> int:
    return integer(5 * MIB, " bytes (5 MiB, S3's smallest part)")(key, value)


def content_types(key: str, value: Any) -> tuple[str, ...] | None:
    """MIME types (``'application/pdf'``) or families (``'image/*'``); None: any type."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    types = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else ()
    good = bool(types) and all(
        isinstance(t, str) and t.count("/") == 1 and all(t.split("/")) and " " not in t
        for t in types
    )
    if not good:
        raise _refuse(key, value, "a list of MIME types such as ['image/*', 'application/pdf']")
    return tuple(t.lower() for t in types)


def extensions(key: str, value: Any) -> frozenset[str] | None:
    """File extensions (``['jpg', 'png', 'tar.gz']``, a dot and case do not matter); None: any."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    names = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else ()
    cleaned = [e.strip().lstrip(".").lower() for e in names if isinstance(e, str)]
    bad = not names or len(cleaned) != len(names) or not all(cleaned)
    if bad or any("/" in e for e in cleaned):
        raise _refuse(key, value, "a list of file extensions such as ['jpg', 'png', 'pdf']")
    return frozenset(cleaned)


def sniffing(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check``, and, for a value that turns type detection on, that the sniffer is there."""

    def sniffs(key: str, value: Any) -> Any:
        value = check(key, value)
        if value:
            from ._sniff import require

            require(key)
        return value

    return sniffs


def imaging(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check``, and, for a value that turns an image rule on, that Pillow (and the sniffer
    the rules read types with) is there."""

    def images(key: str, value: Any) -> Any:
        value = check(key, value)
        if value:
            from ._images import require_images
            from ._sniff import require

            require_images(key)
            require(key)
        return value

    return images


def image_formats(key: str, value: Any) -> frozenset[str] | None:
    """Image formats (Pillow's names: ``['jpeg', 'png', 'webp']``); None: any."""
    from ._images import image_formats as formats

    try:
        return formats(value)
    except (ValueError, TypeError):
        raise _refuse(
            key, value, "a list of image formats such as ['jpeg', 'png', 'webp']"
        ) from None


def image_variants(key: str, value: Any) -> dict[str, Any]:
    """Declared variants: ``{name: {"size": [w, h], "format": "webp"}}`` or ``Variant`` objects."""
    from ._images import variants_of

    try:
        return variants_of(value)
    except (ValueError, TypeError) as exc:
        raise NotConfiguredError(
            f"{key} must be a dict of variants such as {{'thumb': {{'size': [256, 256], "
            f"'format': 'webp'}}, 'preview': {{'width': 1280}}}}: {exc}."
        ) from None


def unset_if_empty(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    # ``os.environ.get("S3_REGION", "")`` and the like: an empty string means not set.
    def optional(key: str, value: Any) -> Any:
        return None if value is None or value == "" else check(key, value)

    return optional


positive = integer(1)
optional_text = unset_if_empty(text)
