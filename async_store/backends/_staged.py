"""A file that arrived in the bucket another way (a direct upload, a tus upload sent in parts)
becomes a stored file as a save would make it: the storage's rules checked, then copied by the
server to a free name, never over another file, and the staged object removed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._validate import Check, Rules
from ..exceptions import BadUploadError
from .base import candidates

if TYPE_CHECKING:
    from .s3 import S3Backend

__all__ = ["cleanup_staged", "publish_staged", "remove_staged"]


async def publish_staged(
    backend: S3Backend,
    rules: Rules,
    staged: str,
    location: str,
    name: str,
    client_name: str | None,
    size: int,
) -> tuple[str, str | None]:
    """Check the object at ``staged`` (store-relative, ``size`` bytes) against ``rules``, store
    it under ``name`` (or a collision name) in ``location``, and remove it: (the stored name,
    the type found in its bytes, when a rule looked).

    :raises BadUploadError: a refusal of the rules; the staged object is removed then too.
    """
    check = Check(rules, name, client_name)
    found = None
    try:
        check.before(size)
        if check.reads_head:
            async with backend.open(staged, 0, min(size, check.head_size)) as f:
                head = await f.read()
            info = check.inspect(head, size)
            await check.validate(info)
            found = info.content_type
    except BadUploadError:
        await remove_staged(backend, staged)
        raise
    stored = await backend.adopt(staged, location, candidates(name), size=size, content_type=found)
    await remove_staged(backend, staged)
    return stored, found


async def remove_staged(backend: S3Backend, staged: str) -> None:
    """Delete a staged object (one request: no HEAD first, as ``delete()`` makes)."""
    async with backend.requests(staged) as s3:
        await s3.delete_object(Bucket=backend.bucket, Key=backend.object_key(staged))


async def cleanup_staged(backend: S3Backend, prefix: str, older_than: float) -> tuple[int, int]:
    """Below the staged ``prefix``: remove the objects last written more than ``older_than``
    seconds ago, and abort the multipart uploads that long idle (no part since; S3 bills parts
    until they are aborted). (objects removed, uploads aborted)."""
    now = datetime.now(UTC)
    bucket, key = backend.bucket, backend.object_key(prefix)
    objects = uploads = 0
    async with backend.requests(prefix) as s3:
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", ()):
                if (now - obj["LastModified"]).total_seconds() > older_than:
                    await s3.delete_object(Bucket=bucket, Key=obj["Key"])
                    objects += 1
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key)
        async for page in pages:
            for upload in page.get("Uploads", ()):
                if (now - await _last_active(s3, bucket, upload)).total_seconds() > older_than:
                    await s3.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    uploads += 1
    return objects, uploads


async def _last_active(s3: Any, bucket: str, upload: dict[str, Any]) -> datetime:
    """When a multipart upload last received a part (its start, without one): a long upload
    still under way (a tus upload over days) is not idle for its age."""
    latest: datetime = upload["Initiated"]
    parts = s3.get_paginator("list_parts").paginate(
        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    async for page in parts:
        for part in page.get("Parts", ()):
            latest = max(latest, part["LastModified"])
    return latest
