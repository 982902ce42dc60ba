"""An image's rules (``ImageRules``) checked from its first bytes: its header, never its pixels.

``Image.open`` on the head reads the header only (format, size, EXIF orientation), and nothing
is decoded. Formats put the size early: PNG, GIF and BMP in their first 30 bytes; JPEG in its
SOF marker, after the EXIF, XMP and ICC segments (up to 64 KiB each); so an image rule reads
:data:`IMAGE_HEAD_SIZE` bytes ahead where the other rules read 8 KiB. WebP's header is parsed
here (its 30 bytes): Pillow's WebP plugin hands the whole file to libwebp, which refuses a part.
A file that claims to be an image and whose header is not in those bytes is refused (422):
its size cannot be checked, and an unchecked size is how a decompression bomb gets in.

Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``, a global any code may change) runs inside
``Image.open``; the limit that counts is the rule's ``max_pixels``, checked here against the
declared size. What Pillow refuses first (over twice its global) is refused the same way.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .exceptions import DisallowedTypeError, InvalidFileError

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from ._images import ImageRules

__all__ = ["IMAGE_HEAD_SIZE", "Bomb", "Header", "check_image", "orientation_of", "read_header"]

#: How many of the first bytes an image rule reads ahead (and holds back from the write).
IMAGE_HEAD_SIZE = 256 * 1024
# EXIF orientations that turn the image a quarter (width and height swap when shown).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class Header:
    """What an image's header declares."""

    #: Pillow's name of the format, lowercased (``'jpeg'``, ``'png'``, ``'webp'``).
    format: str
    #: Its width and height as shown (its EXIF orientation applied), pixels.
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


class Bomb(Exception):
    """Pillow refused to open an image this large (over its global limit)."""

    def __init__(self, pixels: int | None) -> None:
        super().__init__(pixels)
        self.pixels = pixels


def _webp(head: bytes) -> Header | None:
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, 24 bits each, minus one
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
    elif chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: after the start code
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        height = int.from_bytes(head[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(head[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        return None
    return Header("webp", width, height)


def orientation_of(image: PILImage.Image) -> int | None:
    """The EXIF orientation an opened image declares in its header, read without decoding it
    (``getexif()`` of a PNG decodes the image to look for EXIF after the pixels)."""
    from PIL import Image

    data = image.info.get("exif")
    if not isinstance(data, bytes):
        return None
    exif = Image.Exif()
    try:
        exif.load(data)
    except (OSError, SyntaxError, ValueError, struct.error):
        return None
    value = exif.get(0x0112)
    return value if isinstance(value, int) else None


def read_header(head: bytes) -> Header | None:
    """The format and size ``head`` (an image's first bytes, or all of it) declares; None when
    it is no image Pillow reads, or its header is not all there.

    :raises Bomb: when Pillow refuses it as a decompression bomb (its global limit).
    """
    webp = _webp(head)
    if webp is not None:
        return webp
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(head)) as image:
            width, height = image.size
            orientation = orientation_of(image)
            fmt = str(image.format).lower()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _PIXELS.search(str(exc))
        raise Bomb(int(found.group(1)) if found else None) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        return None
    except UserWarning:  # a plugin's note on a file it cannot read, raised as an error
        return None
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return Header(fmt, width, height)


def _n(limit: int | None) -> str | None:
    return None if limit is None else f"{limit:,}"


def _is_image(mime: str | None) -> bool:
    # SVG is XML: no header gives its size (and Pillow does not read it).
    return mime is not None and mime.startswith("image/") and mime != "image/svg+xml"


def check_image(
    rules: ImageRules,
    head: bytes,
    complete: bool,
    mime: str | None,
    file: str,
    client_name: str | None,
) -> Header | None:
    """Check an upload against ``rules`` from its first bytes (``complete``: all of it), whose
    sniffed type is ``mime``; ``file`` names it in messages. The header read, if any.

    :raises DisallowedTypeError: an image of a format ``formats`` does not take, or no image
        where ``formats`` is set.
    :raises InvalidFileError: an image over a size rule, or whose size cannot be read.
    """
    if not _is_image(mime) and rules.formats is None:
        return None  # not an image: the size rules are for images
    formats = sorted(rules.formats) if rules.formats is not None else None

    def refuse(
        rule: str,
        value: object,
        why: str,
        found: object,
        error: type[InvalidFileError | DisallowedTypeError] = InvalidFileError,
    ) -> InvalidFileError | DisallowedTypeError:
        shown = f"images.{rule}" if value is None else f"images.{rule}={value}"
        return error(
            f"the file {file} is refused by the rule {shown}: {why}",
            rule=f"images.{rule}",
            filename=client_name,
            found=found,
        )

    try:
        header = read_header(head)
    except Bomb as bomb:
        claimed = f"{bomb.pixels:,} pixels" if bomb.pixels else "more pixels than Pillow takes"
        why = f"it claims {claimed}, too many to decode (a decompression bomb)"
        raise refuse("max_pixels", _n(rules.max_pixels), why, bomb.pixels) from bomb
    if header is None:
        if not _is_image(mime):
            why = f"its bytes are {mime or 'of no known type'}, not an image"
            raise refuse("formats", formats, why, mime, DisallowedTypeError)
        if complete:
            why = f"its bytes start as {mime} but are not an image Pillow can read"
        else:
            why = (
                f"its bytes are {mime}, whose size is not declared in its first "
                f"{IMAGE_HEAD_SIZE // 1024} KiB: it cannot be checked"
            )
        raise refuse("header", None, why, mime)
    if formats is not None and header.format not in formats:
        why = f"it is a {header.format.upper()} image"
        raise refuse("formats", formats, why, header.format, DisallowedTypeError)
    size = f"it is {header.width:,}×{header.height:,}"
    dims = (header.width, header.height)
    if rules.max_width is not None and header.width > rules.max_width:
        raise refuse("max_width", _n(rules.max_width), size, dims)
    if rules.max_height is not None and header.height > rules.max_height:
        raise refuse("max_height", _n(rules.max_height), size, dims)
    if rules.max_pixels is not None and header.pixels > rules.max_pixels:
        why = f"{size} ({header.pixels:,} pixels)"
        raise refuse("max_pixels", _n(rules.max_pixels), why, dims)
    return header
