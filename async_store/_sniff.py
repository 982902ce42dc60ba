"""What an upload's bytes are: its first bytes sniffed by puremagic, held against its name.

puremagic (pure Python, no libmagic to install, maintained: its 2.x line for Python 3.12+,
1.x for older ones) matches the magic numbers at the start of the content. It cannot tell text
formats apart (a CSV, Markdown and plain text have no signature), and it lists every format
that shares a signature (a ZIP is also a DOCX, a JAR, an EPUB…). So the rule is:

* bytes it recognises must be what the extension says: one of the formats found has the
  extension, or its MIME type, or both are text, or the bytes are a ZIP and the extension
  names a format built on ZIP (DOCX, ODT, EPUB, JAR…);
* bytes it does not recognise pass, unless the extension names a format that always starts
  with a signature (:data:`SIGNED`: PNG, JPEG, PDF, ZIP…), or names text and the bytes are
  binary (NUL bytes, with no UTF-16/32 byte order mark).

The detected type (stored as the file's ``Content-Type``) is the format found; for text puremagic
cannot identify, the type the name gives.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass

from .exceptions import NotConfiguredError

__all__ = ["HEAD_SIZE", "SIGNED", "Sniffed", "extension_of", "is_textual", "require", "sniff"]

#: How many of the first bytes are read (and held back from the write) to sniff the type.
HEAD_SIZE = 8192

#: Extensions whose formats always start with a signature puremagic knows: bytes it does not
#: recognise under one of these names are not that format.
SIGNED = frozenset(
    {
        *("png", "jpg", "jpeg", "gif", "webp", "tif", "tiff", "pdf"),
        *("zip", "gz", "tgz", "7z", "rar"),
        *("docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "jar"),
    }
)
# Formats that are ZIP archives inside (their signature is ZIP's).
_ZIP_BASED = frozenset({"apk", "cbz", "epub", "jar", "kmz", "nupkg", "vsix", "whl", "xpi"})
_TEXT_TYPES = frozenset(
    {
        "application/ecmascript",
        "application/javascript",
        "application/json",
        "application/sql",
        "application/toml",
        "application/x-sh",
        "application/x-yaml",
        "application/xml",
        "application/yaml",
    }
)
# puremagic's names for types mimetypes calls otherwise.
_ALIASES = {
    "application/x-gzip": "application/gzip",
    "application/x-rar-compressed": "application/vnd.rar",
    "application/x-zip-compressed": "application/zip",
    "image/jpg": "image/jpeg",
    "image/x-icon": "image/vnd.microsoft.icon",
    "image/x-ms-bmp": "image/bmp",
}
# The signatures of 3 bytes or more (puremagic's confidence 0.3+); shorter ones ("BM") count
# only when they agree with the name.
_SURE = 0.3
_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")


@dataclass(frozen=True)
class Sniffed:
    """What the first bytes of a file are, against its name."""

    #: The MIME type found in the bytes; None when they match no known signature.
    mime: str | None
    #: What the bytes were found to be, for messages (``'PKZIP Archive file'``).
    label: str
    #: Why the bytes are not what the name says; None when they are (or may be).
    mismatch: str | None
    #: The type the name gives (``mimetypes``), None for an unknown extension.
    expected: str | None

    @property
    def content_type(self) -> str | None:
        """The type to store: the one found, else a text type the name gives (text has no
        signature), else None (unknown: the name's guess, unchecked)."""
        if self.mime is not None:
            return self.mime
        if self.expected is not None and is_textual(self.expected) and self.mismatch is None:
            return self.expected
        return None


def require(what: str) -> None:
    """Check that the sniffer is installed, for ``what`` (a key or an option) that needs it.

    :raises NotConfiguredError: naming the extra to install.
    """
    try:
        import puremagic  # noqa: F401
    except ImportError:
        raise NotConfiguredError(
            f"{what} detects types from the bytes with puremagic, which is not installed: "
            f"pip install async_store[validate]"
        ) from None


def extension_of(name: str) -> str:
    """The lowercased extension of ``name``, without the dot; '' for none."""
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem else ""


def is_textual(mime: str) -> bool:
    """Whether ``mime`` is a text format (which no signature identifies)."""
    return mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith(("+xml", "+json"))


def _normal(mime: str) -> str:
    mime = mime.lower()
    return _ALIASES.get(mime, mime)


def _binary(head: bytes) -> bool:
    return b"\x00" in head and not head.startswith(_BOMS)


def sniff(head: bytes, name: str) -> Sniffed:
    """What ``head`` (the first :data:`HEAD_SIZE` bytes, or all of a smaller file) is, held
    against ``name`` (the name the file is stored under)."""
    import puremagic

    ext = extension_of(name)
    guessed = mimetypes.guess_type(f"x.{ext}")[0] if ext else None
    expected = _normal(guessed) if guessed and guessed != "application/octet-stream" else None
    try:
        found = puremagic.magic_string(head) if head else []
    except puremagic.PureError:
        found = []

    def agrees(extension: str, mime: str) -> bool:
        if extension.lower() == f".{ext}" or (expected and _normal(mime) == expected):
            return True
        if extension != ".zip":
            return False
        return (
            ext in _ZIP_BASED
            or expected is not None
            and ("openxmlformats" in expected or "opendocument" in expected or "+zip" in expected)
        )

    matching = [m for m in found if m.confidence >= 0.2 and agrees(m.extension, m.mime_type)]
    if ext and matching:
        best = matching[0]
        return Sniffed(_normal(best.mime_type) or expected, best.name, None, expected)
    sure = [m for m in found if m.confidence >= _SURE]
    if not sure:
        if ext in SIGNED:
            why = f"its bytes are not {ext.upper()}: they do not start with its signature"
        elif expected is not None and is_textual(expected) and _binary(head):
            why = f"its bytes are binary, not {expected}"
        else:
            why = None
        return Sniffed(None, "unrecognised bytes", why, expected)
    top = [m for m in sure if m.confidence == sure[0].confidence]
    # A shared signature lists every format built on it: name the container (a ZIP).
    zipped = [m for m in top if m.extension == ".zip"]
    best = (zipped or [m for m in top if m.mime_type] or top)[0]
    mime = _normal(best.mime_type) if best.mime_type else "application/octet-stream"
    why = None
    if expected is not None and not (is_textual(expected) and is_textual(mime)):
        why = f"its bytes are {best.name} ({mime}), not {expected}"
    return Sniffed(mime, best.name, why, expected)
