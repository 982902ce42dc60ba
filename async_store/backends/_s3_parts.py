"""The S3 backend's pieces of a transfer: one multipart upload, and an object's body, read."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio

from .._multipart import Claims, Parts
from ._s3_bodies import UploadBody, checksum
from ._s3_clients import ClientError, raise_if_taken

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

__all__ = ["Body", "S3Parts", "last_byte"]


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
