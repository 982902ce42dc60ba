"""An S3 upload request's body and its checksum, as the S3 backend and tus's part uploads send
them (no aioboto3 import here: tus loads this without the s3 extra)."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import TYPE_CHECKING, Any

import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["UploadBody", "checksum", "part_algorithm", "put_algorithm"]

# How much of an upload body aiohttp is handed at a time: what the socket does not take at once
# is copied into the transport's buffer, so slices keep that copy small.
_SLICE = 1024 * 1024
# Bodies from this size are hashed in a worker thread: a part's hash would hold the loop for ms,
# and a small object's takes less than the hop.
_IN_THREAD = 256 * 1024


def part_algorithm(mode: str) -> str | None:
    """The checksum a multipart upload's parts carry under ``STORE_S3_CHECKSUM = mode``: the
    server verifies part by part (S3 has no whole-object SHA-256 for a multipart object, so
    ``'auto'`` takes CRC32, half the CPU)."""
    return {"sha256": "SHA256", "off": None}.get(mode, "CRC32")


def put_algorithm(mode: str, hashed: bool) -> str | None:
    """The checksum a single PUT carries: under ``'auto'`` the upload's own SHA-256 when it is
    ``hashed`` anyway (``checksum=True``: no second pass, and ``info()`` gives it back), else
    CRC32."""
    if mode == "auto":
        return "SHA256" if hashed else "CRC32"
    return part_algorithm(mode)


async def checksum(
    algorithm: str | None, body: bytes | bytearray | memoryview, digest: Any = None
) -> dict[str, str]:
    """The request parameter that carries ``body``'s checksum (``{}`` for none); ``digest``: a
    ``hashlib`` SHA-256 already fed the body, used instead of hashing it again."""
    if algorithm is None:
        return {}
    if algorithm == "SHA256" and digest is not None:
        value = digest.digest()
    elif len(body) >= _IN_THREAD:
        value = await anyio.to_thread.run_sync(_digest, algorithm, body)
    else:
        value = _digest(algorithm, body)
    return {f"Checksum{algorithm}": base64.b64encode(value).decode()}


def _digest(algorithm: str, body: bytes | bytearray | memoryview) -> bytes:
    if algorithm == "SHA256":
        return hashlib.sha256(body).digest()
    return zlib.crc32(body).to_bytes(4, "big")


class UploadBody:
    """An upload request's body (a part, a small object) as botocore and aiohttp send it
    without copying it.

    botocore wraps a ``bytes`` body in ``BytesIO`` and aiohttp copies that whole (``getbuffer``)
    and then again in 64 KiB reads: two copies of every byte sent, most of the S3 client's CPU
    per GiB besides the hashing. This body has a length and a position (botocore's size and its
    rewind before a retry) and is sent as memory views of its bytes, a slice at a time, so the
    only copy left is of what the socket cannot take at once.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self._at = 0

    def __len__(self) -> int:
        return self._data.nbytes

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._at, self._data.nbytes)[whence]
        self._at = max(0, min(self._data.nbytes, base + offset))
        return self._at

    def read(self, size: int = -1) -> bytes:
        """What botocore reads should it hash the body itself (an operation that requires a
        checksum the request does not carry)."""
        end = self._data.nbytes if size < 0 else min(self._data.nbytes, self._at + size)
        chunk = bytes(self._data[self._at : end])
        self._at = end
        return chunk

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        for start in range(self._at, self._data.nbytes, _SLICE):
            yield self._data[start : start + _SLICE]
