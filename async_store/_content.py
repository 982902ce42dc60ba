"""Which stored files a browser may show inline, for the local route and for S3 objects alike.

A browser runs what it renders: an uploaded HTML page, an SVG or an XML document with script
in it would run on the origin that serves it (the app's, or the bucket's for a public object or
a presigned link). Only passive types are shown inline; everything else is sent, or stored, as
an ``attachment``, which the browser downloads instead of rendering. One table, so the two
backends cannot drift apart.
"""

from __future__ import annotations

import os
import unicodedata
from urllib.parse import quote

from werkzeug.http import dump_options_header

from ._paths import content_type

__all__ = [
    "TYPE_ATTRIBUTE",
    "content_policy",
    "disposition",
    "disposition_header",
    "is_passive",
    "keep_type",
    "stored_type",
]

_PASSIVE_PREFIXES = ("image/", "audio/", "video/")
_PASSIVE_TYPES = frozenset({"text/plain", "text/csv", "application/pdf", "application/json"})
# Images that are documents: SVG carries script.
_ACTIVE_IMAGES = frozenset({"image/svg+xml"})
# RFC 5987 attr-chars, left unescaped in filename* (the set werkzeug uses).
_ATTR_CHARS = "!#$&+-.^_`|~"


def is_passive(mimetype: str) -> bool:
    """Whether a browser may render ``mimetype`` inline without running anything."""
    mimetype = mimetype.partition(";")[0].strip().lower()
    return mimetype in _PASSIVE_TYPES or (
        mimetype.startswith(_PASSIVE_PREFIXES) and mimetype not in _ACTIVE_IMAGES
    )


def content_policy(filename: str, stored: str | None = None) -> tuple[str, bool]:
    """Return ``(mimetype, as_attachment)`` for a stored file: its ``stored`` type (what its
    bytes showed a validation check) when known, else the one its name gives."""
    mimetype = stored or content_type(filename)
    return mimetype, not is_passive(mimetype)


#: Where a local file keeps the type its bytes showed (an extended attribute of the file).
TYPE_ATTRIBUTE = "user.async_store.content_type"


def stored_type(path: str) -> str | None:
    """The type a local file was stored with (see :data:`TYPE_ATTRIBUTE`), if it has one: None
    on file systems without extended attributes, or for files stored without a check."""
    try:
        return os.getxattr(path, TYPE_ATTRIBUTE).decode("ascii") or None
    except (OSError, AttributeError, UnicodeDecodeError):  # none, or no xattrs here (macOS)
        return None


def keep_type(fd: int, mimetype: str | None) -> None:
    """Keep ``mimetype`` with the file open on ``fd``, where the file system can (else the name
    gives the type, as before)."""
    if mimetype:
        try:
            os.setxattr(fd, TYPE_ATTRIBUTE, mimetype.encode("ascii"))
        except (OSError, AttributeError, UnicodeEncodeError):
            pass


def disposition(name: str, attachment: bool) -> tuple[str, dict[str, str]]:
    """``Content-Disposition`` as Flask's ``send_file`` sends it: the value and its parameters."""
    value = "attachment" if attachment else "inline"
    if name.isascii():
        return value, {"filename": name}
    # RFC 6266: an ASCII fallback, and the real name in filename*. Raw UTF-8 in the header (what
    # werkzeug's Headers.add would send) is read as Latin-1 by browsers: a garbled download name.
    simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return value, {"filename": simple, "filename*": f"UTF-8''{quote(name, safe=_ATTR_CHARS)}"}


def disposition_header(name: str, attachment: bool = True) -> str:
    """The whole ``Content-Disposition`` header value, for an S3 object or a presigned GET."""
    return dump_options_header(*disposition(name, attachment))
