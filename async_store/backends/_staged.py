"""A file that arrived in the bucket another way (a direct upload, a tus upload sent in parts)
becomes a stored file as a save would make it: the storage's rules checked, then copied by the
server to a free name, never over another file, and the staged object removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._validate import Check, Rules
from ..exceptions import BadUploadError
from .base import candidates

if TYPE_CHECKING:
    from .s3 import S3Backend

__all__ = ["HEAD", "publish_staged", "remove_staged"]

#: What a rule that sniffs the type reads of a staged object: what a save reads first.
HEAD = 8192


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
            async with backend.open(staged, 0, min(size, HEAD)) as f:
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
