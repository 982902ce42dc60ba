"""Signed links to local files: ``/uploads/a.pdf?expires=…&signature=…``.

``await provider.url(expires=600)`` on a local storage appends an expiry (a Unix time) and an
HMAC-SHA256 of the key, that expiry and any response overrides (``download_name``,
``content_type``, carried in the query too) to the file's URL; the serving route
(``serve.py``) recomputes it before it looks at the disk, so a refused link says nothing about
whether the file exists.

The HMAC's key is derived from the app's ``SECRET_KEY`` with a salt of ours and the storage's
name: a link's signature is never valid as a Flask session's (itsdangerous salts its keys
likewise), and a link to one storage cannot fetch the same path from another. Links signed
with a key of ``SECRET_KEY_FALLBACKS`` still pass, as Flask's own signatures do.

Plain ``hmac`` and ``hashlib``, not itsdangerous: what is signed is a fixed tuple of fields,
not a payload to serialise, and the core package depends on neither Flask nor Quart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from werkzeug.datastructures import MultiDict

__all__ = ["MAX_EXPIRES", "PARAMS", "Grant", "LinkSigner", "derived_keys"]

#: The longest a signed link may be valid: a year (longer is a permanent URL: a public storage).
MAX_EXPIRES = 365 * 24 * 3600
#: The query parameters a signed link carries; a request with any of them is checked as one.
PARAMS = ("expires", "download_name", "content_type", "signature")
_SALT = b"async_store.signed-link\x00"
_EXPIRY = re.compile(r"[0-9]{1,12}", re.ASCII)
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)  # 32 bytes, base64url, unpadded
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MIMETYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f]*\"))*")


@dataclass(frozen=True)
class Grant:
    """What the route may answer a request with: the file, with a signed link's overrides."""

    #: Whether it came with a valid signed link (the answer is then ``Cache-Control: private``).
    signed: bool = False
    #: Download under this name, as an attachment.
    download_name: str | None = None
    #: Answer with this ``Content-Type``.
    content_type: str | None = None


_UNSIGNED = Grant()


def _check_download_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ValueError(f"download_name must be a file name of 1 to 255 characters, not {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"download_name must be a file name (no folder), not {name!r}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ValueError(f"download_name must not hold control characters: {name!r}")
    return name


def _check_content_type(value: object) -> str:
    if not isinstance(value, str) or not _MIMETYPE.fullmatch(value):
        raise ValueError(
            f"content_type must be a MIME type such as 'text/plain; charset=utf-8', not {value!r}"
        )
    return value


def derived_keys(app_config: Mapping[str, Any], salt: bytes) -> list[bytes]:
    """Keys of one purpose (``salt``: what signs, for which storage) derived from the app's
    ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``, the current one first; none without a key."""
    secret = app_config.get("SECRET_KEY")
    if not secret:
        return []
    fallbacks = app_config.get("SECRET_KEY_FALLBACKS") or []
    return [
        hmac.new(s if isinstance(s, bytes) else str(s).encode(), salt, hashlib.sha256).digest()
        for s in (secret, *fallbacks)
        if s
    ]


def _encode(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class LinkSigner:
    """Signs links to one storage's files and checks them, with the app's ``SECRET_KEY``.

    The keys are read from ``app_config`` at each call (no app context needed, a rotated key
    is seen at once).

    :param app_config: the app's ``config`` (the live mapping, not a copy).
    :param storage: the storage's name, part of the key: ``'default'`` or a ``STORE_STORAGES``
        name.
    :param clock: the current Unix time (``time.time``); tests pass another.
    """

    def __init__(
        self,
        app_config: Mapping[str, Any],
        storage: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app_config = app_config
        self.storage = storage
        self.clock = clock
        self._where = "" if storage == "default" else f"the storage {storage!r}: "

    def _keys(self) -> list[bytes]:
        """The derived keys, the current one first; none without a ``SECRET_KEY``."""
        return derived_keys(self._app_config, _SALT + self.storage.encode())

    @staticmethod
    def _signature(key: bytes, path: str, expires_at: int, grant: Grant) -> bytes:
        # JSON: the fields cannot run into each other ("a", "b/c" is not "a/b", "c").
        fields = [path, expires_at, grant.download_name, grant.content_type]
        message = json.dumps(fields, separators=(",", ":")).encode()
        return hmac.new(key, message, hashlib.sha256).digest()

    def query(
        self,
        path: str,
        expires: int,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """The query string that makes the URL of ``path`` a link valid for ``expires`` seconds.

        :raises ValueError: for ``expires`` out of range (1 to :data:`MAX_EXPIRES`), a
            ``download_name`` with a folder or control characters, or a ``content_type`` that is
            not a MIME type.
        :raises NotConfiguredError: naming ``SECRET_KEY`` when the app has none.
        """
        if isinstance(expires, bool) or not isinstance(expires, int):
            raise ValueError(f"expires must be a whole number of seconds, not {expires!r}")
        if not 1 <= expires <= MAX_EXPIRES:
            raise ValueError(
                f"expires must be 1 to {MAX_EXPIRES} seconds (a year), not {expires!r}; a link "
                f"for longer is a permanent URL: url() without expires, on a public storage"
            )
        grant = Grant(
            signed=True,
            download_name=None if download_name is None else _check_download_name(download_name),
            content_type=None if content_type is None else _check_content_type(content_type),
        )
        keys = self._keys()
        if not keys:
            raise NotConfiguredError(
                f"{self._where}a signed link to a local file is signed with the app's "
                f"SECRET_KEY, which is not set: set app.config['SECRET_KEY'] to a long random "
                f"value (python -c 'import secrets; print(secrets.token_hex(32))'), the same "
                f"in every worker."
            )
        expires_at = math.ceil(self.clock() + expires)
        params: dict[str, str] = {"expires": str(expires_at)}
        if grant.download_name is not None:
            params["download_name"] = grant.download_name
        if grant.content_type is not None:
            params["content_type"] = grant.content_type
        params["signature"] = _encode(self._signature(keys[0], path, expires_at, grant))
        return urlencode(params)

    def grant(self, path: str, args: MultiDict[str, str], *, signed_only: bool) -> Grant | None:
        """What a request for ``path`` with the query ``args`` may get; None: a 403.

        A request without any of :data:`PARAMS` is a plain one: granted unless ``signed_only``.
        One with any of them is checked as a signed link, on any storage: the signature, made
        for this exact path, expiry and overrides, and an expiry still ahead. A parameter given
        twice is refused.
        """
        if not any(name in args for name in PARAMS):
            return None if signed_only else _UNSIGNED
        values: dict[str, str] = {}
        for name in PARAMS:
            given = args.getlist(name)
            if len(given) > 1:
                return None
            if given:
                values[name] = given[0]
        expiry, signature = values.get("expires", ""), values.get("signature", "")
        if not _EXPIRY.fullmatch(expiry) or not _SIGNATURE.fullmatch(signature):
            return None
        expires_at = int(expiry)
        if self.clock() > expires_at:
            return None
        grant = Grant(True, values.get("download_name"), values.get("content_type"))
        for key in self._keys():
            # Compared as text: one spelling per signature (base64 would accept four).
            expected = _encode(self._signature(key, path, expires_at, grant))
            if hmac.compare_digest(expected, signature):
                return grant
        return None
