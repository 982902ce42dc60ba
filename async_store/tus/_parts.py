"""A tus upload into an S3 storage, sent in parts as they fill: the local folder keeps only the
tail (less than ``STORE_S3_PART_SIZE``), not the whole file.

Once an upload's bytes on disk reach a part, the part goes to a multipart upload at a hidden
staged key (``.tus/ID/name``), is recorded in ``info.json`` and cut from the local file
(:meth:`Held.rebase`), all under the upload's lock, so a PATCH on another worker continues
where this one stopped. When the last byte is in, the tail is the last part, the multipart upload
is completed at the staged key and the object is copied by the server to its final name, never
over another file (:meth:`S3Backend.adopt`, as a direct upload's confirm does), and the staged
object goes. A failed step leaves the upload as it was: the next request retries it. A part
uploaded but not recorded (a worker killed in between) is uploaded again under its number,
which replaces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .._paths import clean_filename
from .._paths import content_type as guess_type
from ..backends._s3_bodies import UploadBody, checksum, part_algorithm
from ..backends._staged import publish_staged

if TYPE_CHECKING:
    from .._validate import Rules
    from ..backends.s3 import S3Backend
    from ._state import Held

__all__ = ["STAGING", "S3Parts"]

#: The hidden folder of a storage that holds tus uploads on their way.
STAGING = ".tus"


class S3Parts:
    """Sends tus uploads into one S3 storage in parts of ``part_size``."""

    def __init__(self, backend: S3Backend, part_size: int) -> None:
        self.backend = backend
        self.part_size = part_size
        self.algorithm = part_algorithm(backend.config["STORE_S3_CHECKSUM"])

    def _staged(self, held: Held, name: str) -> str:
        return str(held.info.extra.get("key") or f"{STAGING}/{held.info.id}/{clean_filename(name)}")

    async def send_full_parts(self, held: Held, name: str) -> None:
        """Upload every whole part the local tail holds."""
        while held.info.offset - held.base >= self.part_size:
            await self._send(held, name, self.part_size)

    async def _send(self, held: Held, name: str, size: int) -> None:
        key = self._staged(held, name)
        object_key = self.backend.object_key(key)
        async with self.backend.requests(key) as s3:
            if "upload_id" not in held.info.extra:
                args: dict[str, Any] = {"ContentType": guess_type(name)}
                if self.algorithm is not None:
                    args["ChecksumAlgorithm"] = self.algorithm
                created = await s3.create_multipart_upload(
                    Bucket=self.backend.bucket, Key=object_key, **args
                )
                await anyio.to_thread.run_sync(
                    held.note, {"upload_id": created["UploadId"], "key": key}
                )
            body = await anyio.to_thread.run_sync(held.read_head, size)
            number = len(held.info.extra.get("parts", ())) + 1
            part: dict[str, Any] = {"PartNumber": number, **await checksum(self.algorithm, body)}
            response = await s3.upload_part(
                Bucket=self.backend.bucket,
                Key=object_key,
                UploadId=held.info.extra["upload_id"],
                Body=UploadBody(body),
                **part,
            )
        part["ETag"] = response["ETag"]
        await anyio.to_thread.run_sync(held.rebase, held.base + len(body), part)

    async def publish(
        self, held: Held, location: str, name: str, rules: Rules
    ) -> tuple[str, str | None]:
        """The finished upload, checked against ``rules`` and stored under its name in
        ``location``: (the path it got, the type its bytes showed when a rule looked).

        :raises BadUploadError: a refusal of the rules (the staged object is gone then).
        """
        tail = held.info.offset - held.base
        if tail or not held.info.extra.get("parts"):
            await self._send(held, name, tail)
        key = self._staged(held, name)
        parts = held.info.extra["parts"]
        async with self.backend.requests(key) as s3:
            await s3.complete_multipart_upload(
                Bucket=self.backend.bucket,
                Key=self.backend.object_key(key),
                UploadId=held.info.extra["upload_id"],
                MultipartUpload={"Parts": parts},
            )
        stored, found = await publish_staged(
            self.backend, rules, key, location, clean_filename(name), name, held.info.length
        )
        return (f"{location}/{stored}" if location else stored), found

    async def abort(self, held: Held) -> None:
        """Throw away the parts of an upload removed before it finished."""
        upload_id = held.info.extra.get("upload_id")
        if upload_id is None:
            return
        key = str(held.info.extra["key"])
        async with self.backend.requests(key) as s3:
            await s3.abort_multipart_upload(
                Bucket=self.backend.bucket, Key=self.backend.object_key(key), UploadId=upload_id
            )
