"""The tus 1.0 headers: what a request may say, checked once for Quart and Flask alike.

Every parser here takes a plain mapping of headers and either returns a value or raises
:class:`TusError` carrying the status the protocol asks for (400 for a malformed header, 412 for
another protocol version, 415 for a PATCH that is not ``application/offset+octet-stream``). No
framework, no I/O: the views turn a :class:`TusError` into a response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Mapping

    from werkzeug.datastructures import Headers

    from ._state import UploadInfo

__all__ = [
    "CHECKSUMS",
    "EXTENSIONS",
    "OFFSET_TYPE",
    "VERSION",
    "TusError",
    "base_headers",
    "check_version",
    "content_length",
    "http_date",
    "parse_checksum",
    "parse_length",
    "parse_metadata",
    "parse_offset",
    "require_offset_type",
    "state_headers",
]

#: The one protocol version served.
VERSION = "1.0.0"
#: The extensions served, as ``Tus-Extension`` lists them.
EXTENSIONS = ("creation", "creation-with-upload", "termination", "expiration", "checksum")
#: ``Upload-Checksum`` algorithms, by their tus name (lowercase, as the protocol requires).
CHECKSUMS: dict[str, str] = {"sha1": "sha1", "sha256": "sha256", "sha512": "sha512", "md5": "md5"}
#: The content type of a PATCH body (and of a creation-with-upload POST).
OFFSET_TYPE = "application/offset+octet-stream"

# A decimal number of at most 19 digits: fits an int64, as tus clients expect.
_NUMBER = re.compile(r"[0-9]{1,19}\Z")
# Metadata keys: no spaces or commas (the protocol), and printable ASCII (they are echoed back
# in a header: nothing that could smuggle one).
_KEY = re.compile(r"[!-+\--~]+\Z")
_MAX_METADATA = 8192


class TusError(Exception):
    """A request the protocol refuses, with the status to answer and why."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def base_headers() -> dict[str, str]:
    """What every answer carries."""
    return {"Tus-Resumable": VERSION, "Cache-Control": "no-store"}


def check_version(headers: Headers) -> None:
    """``Tus-Resumable`` must name the version served: 412 with ``Tus-Version`` otherwise."""
    given = headers.get("Tus-Resumable")
    if given != VERSION:
        said = f"Tus-Resumable: {given}" if given is not None else "no Tus-Resumable header"
        raise TusError(
            412,
            f"this server speaks tus {VERSION}; the request has {said}",
            {"Tus-Version": VERSION},
        )


def _number(headers: Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _NUMBER.match(value.strip()):
        raise TusError(400, f"{name} must be a whole number of bytes, not {value!r}")
    return int(value)


def parse_offset(headers: Headers) -> int:
    """The ``Upload-Offset`` a PATCH must carry."""
    offset = _number(headers, "Upload-Offset")
    if offset is None:
        raise TusError(400, "a PATCH needs an Upload-Offset header")
    return offset


def parse_length(headers: Headers, max_size: int | None) -> int:
    """The ``Upload-Length`` of a creation POST; 413 over ``max_size``.

    A deferred length (``Upload-Defer-Length``) is not served: 400, as for no length at all.
    """
    if "Upload-Defer-Length" in headers:
        raise TusError(400, "Upload-Defer-Length is not supported: send Upload-Length")
    length = _number(headers, "Upload-Length")
    if length is None:
        raise TusError(400, "creating an upload needs an Upload-Length header")
    if max_size is not None and length > max_size:
        raise TusError(
            413,
            f"Upload-Length {length:,} is over this server's limit of {max_size:,} bytes",
            {"Tus-Max-Size": str(max_size)},
        )
    return length


def require_offset_type(headers: Headers) -> None:
    """A PATCH body must be ``application/offset+octet-stream``: 415 otherwise."""
    given = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if given != OFFSET_TYPE:
        raise TusError(415, f"a PATCH body must be Content-Type: {OFFSET_TYPE}")


def parse_metadata(value: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs, decoded (UTF-8, invalid
    bytes replaced). A key may come without a value (an empty one)."""
    if value is None or not value.strip():
        return {}
    if len(value) > _MAX_METADATA:
        raise TusError(400, f"Upload-Metadata is longer than {_MAX_METADATA} characters")
    metadata: dict[str, str] = {}
    for pair in value.split(","):
        key, _, encoded = pair.strip().partition(" ")
        encoded = encoded.strip()
        if not _KEY.match(key) or key in metadata or " " in encoded:
            raise TusError(400, f"Upload-Metadata: a bad or repeated pair {pair.strip()!r}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise TusError(400, f"Upload-Metadata: {key}'s value is not base64") from None
        metadata[key] = raw.decode("utf-8", "replace")
    return metadata


def parse_checksum(headers: Headers) -> tuple[Any, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>`` as a fresh ``hashlib`` object and the
    digest it must end with; None without the header. 400 for an algorithm not served."""
    value = headers.get("Upload-Checksum")
    if value is None:
        return None
    name, _, encoded = value.strip().partition(" ")
    if name not in CHECKSUMS:
        raise TusError(
            400,
            f"Upload-Checksum: {name!r} is not supported; use one of {', '.join(CHECKSUMS)}",
        )
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise TusError(400, "Upload-Checksum: the digest is not base64") from None
    digest = hashlib.new(CHECKSUMS[name])
    if len(expected) != digest.digest_size:
        raise TusError(400, f"Upload-Checksum: not a {name} digest (wrong length)")
    return digest, expected


def http_date(timestamp: float) -> str:
    """``Upload-Expires``'s format (RFC 9110's IMF-fixdate)."""
    return formatdate(timestamp, usegmt=True)


def content_length(headers: Headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def state_headers(info: UploadInfo, *, head: bool = False) -> dict[str, str]:
    """An upload's headers: its offset, and its length and metadata for a HEAD; where it is
    stored once published, else when it expires."""
    headers = {**base_headers(), "Upload-Offset": str(info.offset)}
    if head:
        headers["Upload-Length"] = str(info.length)
        if info.raw_metadata:
            headers["Upload-Metadata"] = info.raw_metadata
    if info.stored_path is not None:
        headers["Upload-Stored-Path"] = quote(info.stored_path, safe="/")
        headers["Upload-Stored-Url"] = quote(info.stored_url or "", safe=_URL_SAFE)
    else:
        headers["Upload-Expires"] = http_date(info.expires)
    return headers
