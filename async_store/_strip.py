"""An image's metadata left out of its original as it streams into the store, byte for byte.

A phone's photo says where it was taken (EXIF GPS), with which camera (its serial number), and
an editor's XMP or IPTC its history and author. Variants drop all of it by re-encoding
(``_render``); the original is stored as it came, unless the rules say
``ImageRules(strip_metadata=True)`` (``STORE_IMAGE_STRIP_METADATA``). Then the segments and
chunks that carry metadata are left out and everything else, the compressed pixels above all,
is copied as it is: nothing is re-encoded, so nothing is lost.

- **JPEG**: its segments are walked from SOI to SOS. APP1 (EXIF, XMP), APP13 (IPTC,
  Photoshop), COM and the other APPn go; APP0 (JFIF), APP2 ``ICC_PROFILE`` (the colours) and
  APP14 (Adobe: the colour transform) stay, as do the tables and the frame. An EXIF orientation
  other than 1 is kept in a minimal EXIF of that one tag, else the photo would show turned.
  From SOS on (the image data, and whatever follows it) every byte is copied.
- **PNG**: ``eXIf``, ``tEXt``, ``zTXt``, ``iTXt`` and ``tIME`` go, wherever they are (after
  IDAT too); the other chunks stay with their CRCs. An orientation other than 1 stays, in a
  minimal ``eXIf`` of its own.
- **WebP**: its size is in its first bytes and its EXIF and XMP chunks come last, after the
  image data: leaving them out would take the whole file in memory. They are overwritten
  instead, as they stream by, keeping their size: XMP by a ``JUNK`` chunk (RIFF's own filler,
  which readers skip) full of zeros, its VP8X flag cleared; EXIF by a minimal EXIF (the
  orientation, if not 1) padded with zeros. The file keeps its size and loses its metadata.
- Anything else is stored unchanged.

Until the image data starts (at most :data:`HOLD` bytes in) the original is held back too: a
file whose header does not parse, or that ends before its image data (truncated, garbage that
starts like an image), is stored unchanged, never half stripped. Past that point a part that
does not parse ends the stripping, and the rest is copied as it came.

Pure functions of the bytes, no I/O: ``Source`` runs a :class:`Stripper` where it reads an
upload's chunks, on the event loop or in its worker thread.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["HOLD", "Stripper", "exif_orientation"]

#: The most bytes held back, original and stripped, while the header is read (the same as the
#: image rules' read-ahead): a header this large starts streaming before its image data.
HOLD = 256 * 1024

_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_DROPPED = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"})
_WEBP_PIXELS = frozenset({b"VP8 ", b"VP8L", b"ALPH", b"ANMF"})
_VP8X_XMP = 0x04  # the flag that says an XMP chunk follows
_SOS, _APP0, _APP1, _APP2, _APP14, _COM = 0xDA, 0xE0, 0xE1, 0xE2, 0xEE, 0xFE
# Markers without a length: TEM and the restart markers (rare before SOS, but legal).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_ORIENTATION = 0x0112


class _Revert(Exception):
    """The header did not parse while the original was still held: store the original."""


def exif_orientation(tiff: bytes) -> int | None:
    """The orientation (1–8) an EXIF block's TIFF data (after ``Exif\\0\\0``) declares in its
    first directory; None when it declares none or cannot be read."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    magic, offset = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    for at in range(offset + 2, min(offset + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind, number, value = struct.unpack_from(order + "HHIH", tiff, at)
        if tag == _ORIENTATION:
            return value if kind == 3 and number == 1 and 1 <= value <= 8 else None
    return None


def _tiff_of(exif: bytes) -> bytes:
    # Some writers put JPEG's "Exif\0\0" before the TIFF data in PNG and WebP too.
    return exif[6:] if exif.startswith(b"Exif\0\0") else exif


def _tiff(orientation: int | None) -> bytes:
    """A minimal EXIF block (TIFF data): one directory holding the orientation when it is not
    1, else nothing."""
    entries = b""
    if orientation is not None and orientation != 1:
        entries = struct.pack(">HHIHH", _ORIENTATION, 3, 1, orientation, 0)
    return b"MM\0\x2a" + struct.pack(">IH", 8, len(entries) // 12) + entries + bytes(4)


class Stripper:
    """One file's bytes in, the bytes to store out: ``feed(chunk)`` for each chunk as it is
    read, then ``end()``; either may return ``b""`` (bytes held back, or left out)."""

    def __init__(self) -> None:
        # The original while it may still be stored instead (None once the image data began).
        self._held: list[bytes] | None = []
        self._held_size = 0
        self._out: list[bytes | memoryview] = []
        # The header being parsed: ``_step`` runs when it holds ``_need`` bytes.
        self._buf = bytearray()
        self._need = 12
        self._step: Callable[[], None] = self._detect
        # Bytes to copy, to leave out, or to overwrite with zeros, before the next header.
        self._copy = self._skip = self._zero = 0
        self._verbatim = False  # the rest is copied as it is
        self._exif_seen = False

    def feed(self, chunk: bytes) -> bytes:
        """What to store of the next ``chunk`` (and of the ones held back before it)."""
        if self._held is None and self._verbatim:
            return chunk  # the image data: no copy at all
        if self._held is not None:
            self._held.append(chunk)
            self._held_size += len(chunk)
        try:
            self._run(memoryview(chunk))
        except _Revert:
            pass
        if self._held is not None and self._held_size > HOLD:
            self._held = None  # a header this large streams: held, it would take memory
        return self._flush()

    def end(self) -> bytes:
        """What is left to store once the file is read."""
        if self._held is not None:
            # It ended before its image data: no image this parses, stored as it came.
            self._out, self._held = list(self._held), None
        elif self._buf:
            self._out.append(bytes(self._buf))  # a header cut short: kept as it is
            self._buf.clear()
        return self._flush()

    def _flush(self) -> bytes:
        if self._held is not None or not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _run(self, data: memoryview) -> None:
        # ``data`` is always a view of a whole bytes object (``data.obj``), never a slice.
        pos, end = 0, len(data)
        while pos < end:
            if self._verbatim:
                self._out.append(data[pos:] if pos else cast("bytes", data.obj))
                return
            if self._copy or self._skip or self._zero:
                n = min(end - pos, self._copy or self._skip or self._zero)
                if self._copy:
                    # A whole chunk copied (a PNG's IDAT, say) is the chunk: no copy of it.
                    whole = pos == 0 and n == end
                    self._out.append(cast("bytes", data.obj) if whole else data[pos : pos + n])
                    self._copy -= n
                elif self._skip:
                    self._skip -= n
                else:
                    self._out.append(bytes(n))
                    self._zero -= n
                pos += n
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                self._step()

    def _emit(self, data: bytes | bytearray) -> None:
        self._out.append(bytes(data))

    def _emit_smallest(self, minimal: bytes, original: bytes) -> None:
        # Never more bytes than came, so that a size known in advance stays an upper bound: an
        # original smaller than the minimal block holds nothing but the orientation anyway.
        self._emit(minimal if len(minimal) <= len(original) else original)

    def _next(self, need: int, step: Callable[[], None]) -> None:
        """The header parsed: the next one is ``need`` bytes, read by ``step``."""
        self._buf.clear()
        self._need, self._step = need, step

    def _begin_pixels(self) -> None:
        self._held = None  # the image data: what was held back is stored, stripped

    def _unchanged(self) -> None:
        """No image this parses: the original from here on (all of it, while it is held)."""
        if self._held is not None:
            self._out, self._held = list(self._held), None
            self._buf.clear()
            self._verbatim = True
            raise _Revert
        self._emit(self._buf)
        self._buf.clear()
        self._verbatim = True

    # --- which format -------------------------------------------------------------------------

    def _detect(self) -> None:
        head = bytes(self._buf)
        if head[:3] == b"\xff\xd8\xff":
            used, need, step = 2, 2, self._jpeg_marker
        elif head[:8] == _PNG:
            used, need, step = 8, 8, self._png_chunk
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            used, need, step = 12, 8, self._webp_chunk
        else:
            self._unchanged()
            return
        self._emit(head[:used])
        self._next(need, step)
        self._run(memoryview(head[used:]))  # the first header's start, read with the signature

    # --- JPEG: segments until SOS ------------------------------------------------------------

    def _jpeg_marker(self) -> None:
        buf = self._buf
        if buf[0] != 0xFF:
            self._unchanged()
        elif buf[1] == 0xFF:  # a fill byte before the marker
            del buf[0]
        elif buf[1] in _STANDALONE:
            self._emit(buf)
            self._next(2, self._jpeg_marker)
        elif buf[1] in (0x00, 0xD8, 0xD9):  # no marker, a second SOI, EOI before any image
            self._unchanged()
        else:
            self._need, self._step = 4, self._jpeg_length

    def _jpeg_length(self) -> None:
        marker, length = self._buf[1], int.from_bytes(self._buf[2:4], "big")
        if length < 2:
            self._unchanged()
        elif marker == _SOS:  # the image data: the rest is copied
            self._emit(self._buf)
            self._buf.clear()
            self._begin_pixels()
            self._verbatim = True
        elif _APP0 <= marker <= 0xEF or marker == _COM:  # read whole: is it metadata?
            self._need, self._step = 2 + length, self._jpeg_segment
        else:  # tables, the frame: copied as they come
            self._emit(self._buf)
            self._next(2, self._jpeg_marker)
            self._copy = length - 2

    def _jpeg_segment(self) -> None:
        segment, marker = bytes(self._buf), self._buf[1]
        payload = segment[4:]
        if marker in (_APP0, _APP14) or (marker == _APP2 and payload.startswith(b"ICC_PROFILE\0")):
            self._emit(segment)
        elif marker == _APP1 and payload.startswith(b"Exif\0\0") and not self._exif_seen:
            self._exif_seen = True
            orientation = exif_orientation(payload[6:])
            if orientation is not None and orientation != 1:
                data = b"Exif\0\0" + _tiff(orientation)
                self._emit_smallest(b"\xff\xe1" + struct.pack(">H", len(data) + 2) + data, segment)
        self._next(2, self._jpeg_marker)

    # --- PNG: chunks, to the end -------------------------------------------------------------

    def _png_chunk(self) -> None:
        length, kind = int.from_bytes(self._buf[:4], "big"), bytes(self._buf[4:8])
        if length > 0x7FFFFFFF or not kind.isalpha():
            self._unchanged()
            return
        if kind == b"eXIf" and length <= HOLD:  # read whole, for its orientation
            self._need, self._step = 12 + length, self._png_exif
            return
        if kind in _PNG_DROPPED:
            self._skip = length + 4  # its data and CRC
        else:
            self._emit(self._buf)
            self._copy = length + 4
        self._next(8, self._png_chunk)
        if kind == b"IDAT":
            self._begin_pixels()
        elif kind == b"IEND":
            self._copy, self._verbatim = 0, True  # its CRC, and anything after, as they are

    def _png_exif(self) -> None:
        chunk = bytes(self._buf)
        orientation = exif_orientation(_tiff_of(chunk[8:-4]))
        if orientation is not None and orientation != 1:
            data = b"eXIf" + _tiff(orientation)
            crc = zlib.crc32(data).to_bytes(4, "big")
            self._emit_smallest(struct.pack(">I", len(data) - 4) + data + crc, chunk)
        self._next(8, self._png_chunk)

    # --- WebP: RIFF chunks, EXIF and XMP overwritten -----------------------------------------

    def _webp_chunk(self) -> None:
        kind, size = bytes(self._buf[:4]), int.from_bytes(self._buf[4:8], "little")
        padded = size + (size & 1)
        if not all(0x20 <= c < 0x7F for c in kind):
            self._unchanged()
        elif kind == b"VP8X" and size == 10:
            self._need, self._step = 18, self._vp8x
        elif kind == b"EXIF" and 14 <= size <= HOLD:  # read whole, for its orientation
            self._need, self._step = 8 + padded, self._webp_exif
        elif kind == b"EXIF" and size > HOLD:  # an empty EXIF block, then zeros
            empty = _tiff(None)
            self._emit(self._buf + empty)
            self._next(8, self._webp_chunk)
            self._zero = padded - len(empty)
        elif kind in (b"EXIF", b"XMP "):
            self._emit(b"JUNK" + self._buf[4:8])
            self._next(8, self._webp_chunk)
            self._zero = padded
        else:
            self._emit(self._buf)
            self._next(8, self._webp_chunk)
            self._copy = padded
            if kind in _WEBP_PIXELS:
                self._begin_pixels()

    def _webp_exif(self) -> None:
        size = int.from_bytes(self._buf[4:8], "little")
        tiff = _tiff(exif_orientation(_tiff_of(bytes(self._buf[8 : 8 + size]))))
        if len(tiff) > size:
            tiff = _tiff(None)
        self._emit(self._buf[:8] + tiff + bytes(len(self._buf) - 8 - len(tiff)))
        self._next(8, self._webp_chunk)

    def _vp8x(self) -> None:
        self._buf[8] &= ~_VP8X_XMP & 0xFF
        self._emit(self._buf)
        self._next(8, self._webp_chunk)
