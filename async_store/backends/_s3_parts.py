"""The S3 backend's pieces of a transfer: an upload request's body and checksum, one multipart
upload, and an object's body, read."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import zlib
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .._multipart import Claims, Parts
from ._s3_clients import ClientError, raise_if_taken

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractContextManager

__all__ = [
    "Body",
    "S3Parts",
    "UploadBody",
    "checksum",
    "last_byte",
    "part_algorithm",
    "put_algorithm",
]

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


class S3Parts(Parts):
    """One S3 multipart upload: parts by number, completed with the conditional write."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        upload_id: str,
        extra: dict[str, str],
        claims: Claims,
        algorithm: str | None = None,
    ) -> None:
        self._s3, self._bucket, self._key, self._id = s3, bucket, key, upload_id
        self._extra, self._claims, self._algorithm = extra, claims, algorithm
        self._parts: dict[int, dict[str, Any]] = {}  # what CompleteMultipartUpload lists

    async def send(self, number: int, body: bytes) -> None:
        part: dict[str, Any] = {"PartNumber": number, **await checksum(self._algorithm, body)}
        response = await self._s3.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._id, Body=UploadBody(body), **part
        )
        self._parts[number] = {**part, "ETag": response["ETag"]}

    async def copy(self, source: dict[str, str], size: int, part_size: int) -> None:
        """Copy the object ``source`` (``size`` bytes) in ranges of ``part_size``, then
        :meth:`complete`; aborted when anything fails or the caller is cancelled."""
        try:
            ranges = range(0, size, part_size) if size else [None]
            for number, start in enumerate(ranges, start=1):
                where = {} if start is None else {"CopySourceRange": _range(start, size, part_size)}
                response = await self._s3.upload_part_copy(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._id,
                    PartNumber=number,
                    CopySource=source,
                    **where,
                )
                etag = response["CopyPartResult"]["ETag"]
                self._parts[number] = {"PartNumber": number, "ETag": etag}
            await self.complete()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.abort()
            raise

    async def complete(self) -> None:
        parts = [self._parts[n] for n in sorted(self._parts)]
        try:
            async with self._claims.claiming(self._key):
                await self._s3.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._id,
                    MultipartUpload={"Parts": parts},
                    **self._extra,
                )
        except ClientError as exc:
            raise_if_taken(exc)
            raise

    async def abort(self) -> None:
        """Abort, again while parts show up: a part upload still in flight (cancelled here, not
        at the server) may land after the abort and bring it back, as S3's documentation
        warns."""
        where = {"Bucket": self._bucket, "Key": self._key, "UploadId": self._id}
        for _ in range(3):
            await self._s3.abort_multipart_upload(**where)
            await anyio.sleep(0.2)
            try:
                listed = await self._s3.list_parts(**where)
            except ClientError:
                return  # NoSuchUpload: gone for good
            if not listed.get("Parts"):
                return


class Body:
    """The stored object (or a range of it), read in chunks: ``await f.read(n)``."""

    def __init__(self, stream: Any, errors: Callable[[], AbstractContextManager[None]]) -> None:
        self._stream = stream
        self._errors = errors

    async def read(self, size: int = -1) -> bytes:
        if self._stream is None:
            return b""
        with self._errors():
            if size is None or size < 0:
                return bytes(await self._stream.read())
            # Like a local file: ``size`` bytes unless the object ends first (the network hands
            # over whatever arrived, often less).
            data = bytearray()
            while len(data) < size:
                chunk = await self._stream.read(size - len(data))
                if not chunk:
                    break
                data += chunk
            return bytes(data)


def _range(start: int, size: int, part_size: int) -> str:
    return f"bytes={start}-{min(size, start + part_size) - 1}"


def last_byte(end: int | None) -> str:
    """A Range header's last byte (inclusive) for an exclusive ``end``; '' for the end."""
    return "" if end is None else str(end - 1)
