"""Direct-to-bucket uploads of one S3 storage: what the endpoints sign, and the confirm step.

The browser sends the bytes to the bucket; the app only signs. What it signs is the server's
choice, never the client's: the key (a staged one, :mod:`._keys`), the size range and the
content type (conditions of a presigned POST; a multipart upload's type is set when the server
creates it, its size checked before it is completed), for ``STORE_DIRECT_EXPIRES`` seconds.
Nothing staged is a stored file until :meth:`DirectUploads.confirm` looks at what arrived and
copies it to its final name, never over another file; ``store cleanup`` removes what was never
confirmed.
"""

from __future__ import annotations

import fnmatch
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote

from .._paths import clean_filename, clean_location
from .._paths import content_type as guess_type
from .._record import FileRecord
from .._variants import declared, variants_of_new_file
from ..backends._part_urls import part_urls
from ..backends._staged import cleanup_staged, publish_staged, remove_staged
from ..backends.background import direct
from ..exceptions import (
    BadUploadError,
    DisallowedTypeError,
    NotConfiguredError,
    NotFoundError,
    UploadTooLargeError,
)
from ._keys import STAGING, StagedKeys

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._validate import Rules
    from ..backends.s3 import S3Backend
    from ..extension import StoreState

__all__ = ["DirectUploads"]

log = logging.getLogger("async_store.direct")

#: S3's part numbers.
_MAX_PARTS = 10_000


class DirectUploads:
    """Direct uploads into one S3 storage of an app.

    :param state: the storage (``store['documents']``).
    :param app_config: the app's config: ``SECRET_KEY`` signs the staged keys.
    :raises NotConfiguredError: when the storage does not keep its files in S3.
    """

    def __init__(self, state: StoreState[Any], app_config: Mapping[str, Any]) -> None:
        backend = direct(state.provider_class.backend)
        if backend.kind != "s3":  # by kind: importing the S3 backend needs aioboto3
            raise NotConfiguredError(
                f"direct uploads go straight to a bucket, and the storage {state.name!r} keeps "
                f"its files in {backend.kind!r}: use an S3 storage (PROVIDER 's3'), or the "
                f"resumable uploads (async_store.tus), which store into any storage."
            )
        self.state, self.backend = state, cast("S3Backend", backend)
        config = state.config
        self.max_size = int(config["STORE_DIRECT_MAX_SIZE"])
        self.content_types: tuple[str, ...] | None = config["STORE_DIRECT_CONTENT_TYPES"]
        self.expires = int(config["STORE_DIRECT_EXPIRES"])
        self.max_age = int(config["STORE_DIRECT_MAX_AGE"])
        self.keys = StagedKeys(app_config, state.name)
        self._prefix = f"{config.path}/" if config.path else ""

    # --- what a client may ask for ----------------------------------------------------------------

    def _wanted(self, filename: object, content_type: object) -> tuple[str, str, str]:
        """(the cleaned name, the content type, the client's name) a new upload may have.

        :raises BadUploadError: without a file name.
        :raises DisallowedTypeError: for a type the storage does not take.
        """
        if not isinstance(filename, str) or not filename.strip():
            raise BadUploadError("a direct upload needs the file's name ('filename')")
        name = clean_filename(filename)
        declared = content_type if isinstance(content_type, str) and content_type else None
        mimetype = (declared or guess_type(name)).split(";")[0].strip().lower()
        self._check_type(mimetype, filename)
        return name, mimetype, filename

    def _check_type(self, mimetype: str, filename: str) -> None:
        allowed = self.content_types
        if allowed is not None and not any(fnmatch.fnmatchcase(mimetype, t) for t in allowed):
            raise DisallowedTypeError(
                f"{filename!r} is of type {mimetype!r}, and the storage {self.state.name!r} "
                f"takes only {', '.join(allowed)} (STORE_DIRECT_CONTENT_TYPES)"
            )

    def _staged(self, key: object) -> tuple[str, str]:
        """(the store-relative staged key, its name) of a bucket key a client handed back.

        :raises BadUploadError: for a key this server did not issue (or too long ago).
        """
        checked = None
        if isinstance(key, str) and key.startswith(self._prefix):
            relative = key[len(self._prefix) :]
            checked = self.keys.check(relative, self.max_age)
        if checked is None:
            raise BadUploadError(
                f"{key!r} is not a direct upload of the storage {self.state.name!r} issued in "
                f"the last {self.max_age} s (STORE_DIRECT_MAX_AGE)"
            )
        return relative, checked[0]

    def _metadata(self, client_name: str) -> dict[str, str]:
        # Header values are ASCII: the client's name goes percent-encoded.
        return {"filename": quote(client_name, safe="")}

    # --- single uploads: a presigned POST ---------------------------------------------------------

    async def params(self, filename: object, content_type: object) -> dict[str, Any]:
        """A presigned POST for one new file (Uppy's ``GET /s3/params``): its URL and form
        fields, with the key, the type and the size range as signed conditions."""
        name, mimetype, client_name = self._wanted(filename, content_type)
        relative = self.keys.issue(name)
        key = self.backend.object_key(relative)
        meta = {f"x-amz-meta-{k}": v for k, v in self._metadata(client_name).items()}
        fields = {"Content-Type": mimetype, **meta}
        conditions: list[Any] = [{k: v} for k, v in fields.items()]
        conditions.append(["content-length-range", 0, self.max_size])
        async with self.backend.requests(relative, "public") as s3:
            post = await s3.generate_presigned_post(
                self.backend.bucket,
                key,
                Fields=fields,
                Conditions=conditions,
                ExpiresIn=self.expires,
            )
        return {"method": "POST", "url": post["url"], "fields": post["fields"], "headers": {}}

    # --- multipart uploads ------------------------------------------------------------------------

    async def create(self, filename: object, content_type: object) -> dict[str, str]:
        """Begin a multipart upload of a new file (``POST /s3/multipart``): its id and key."""
        name, mimetype, client_name = self._wanted(filename, content_type)
        relative = self.keys.issue(name)
        key = self.backend.object_key(relative)
        async with self.backend.requests(relative) as s3:
            created = await s3.create_multipart_upload(
                Bucket=self.backend.bucket,
                Key=key,
                ContentType=mimetype,
                Metadata=self._metadata(client_name),
            )
        return {"uploadId": str(created["UploadId"]), "key": key}

    async def sign_parts(self, key: object, upload_id: object, numbers: list[Any]) -> list[str]:
        """Presigned ``UploadPart`` URLs for the parts ``numbers`` of an upload begun here."""
        relative, _ = self._staged(key)
        if not isinstance(upload_id, str) or not upload_id:
            raise BadUploadError("an uploadId is needed")
        parts = []
        for number in numbers:
            part = int(number) if isinstance(number, (int, str)) and str(number).isdigit() else 0
            if not 1 <= part <= _MAX_PARTS:
                raise BadUploadError(f"a part number is 1 to {_MAX_PARTS}, not {number!r}")
            parts.append(part)
        async with self.backend.requests(relative, "public") as s3:
            key = self.backend.object_key(relative)
            return await part_urls(s3, self.backend.bucket, key, upload_id, parts, self.expires)

    async def list_parts(self, key: object, upload_id: object) -> list[dict[str, Any]]:
        """The parts that arrived (``GET /s3/multipart/ID``): how a client resumes."""
        relative, _ = self._staged(key)
        found: list[dict[str, Any]] = []
        async with self.backend.requests(relative) as s3:
            pages = s3.get_paginator("list_parts").paginate(
                Bucket=self.backend.bucket,
                Key=self.backend.object_key(relative),
                UploadId=str(upload_id),
            )
            async for page in pages:
                found.extend(
                    {"PartNumber": p["PartNumber"], "Size": p["Size"], "ETag": p["ETag"]}
                    for p in page.get("Parts", ())
                )
        return found

    async def complete(self, key: object, upload_id: object, parts: object) -> dict[str, str]:
        """Complete a multipart upload (``POST /s3/multipart/ID/complete``) in staging, then
        check its size: over the limit, the staged object is deleted at once.

        The size is the assembled object's (a HEAD), not a listing of the parts before: listing
        a large upload's parts cost botocore more than everything else the app does for it (it
        parses the whole XML twice), and a completed object is still only staged: nothing
        becomes a stored file before ``confirm``, which checks the size again.

        :raises UploadTooLargeError: over ``STORE_DIRECT_MAX_SIZE``.
        """
        relative, _ = self._staged(key)
        listed = _parts_of(parts)
        async with self.backend.requests(relative) as s3:
            await s3.complete_multipart_upload(
                Bucket=self.backend.bucket,
                Key=self.backend.object_key(relative),
                UploadId=str(upload_id),
                MultipartUpload={"Parts": listed},
            )
        head = await self.backend.head(relative)
        total = int(head["ContentLength"]) if head is not None else 0
        if total > self.max_size:
            await remove_staged(self.backend, relative)
            raise UploadTooLargeError(
                f"the upload is {total:,} bytes, over the {self.max_size:,} bytes the storage "
                f"{self.state.name!r} takes (STORE_DIRECT_MAX_SIZE); it was deleted"
            )
        return {"key": str(key), "location": str(key)}

    async def abort(self, key: object, upload_id: object) -> None:
        """Throw an upload's parts away (``DELETE /s3/multipart/ID``)."""
        relative, _ = self._staged(key)
        async with self.backend.requests(relative) as s3:
            await s3.abort_multipart_upload(
                Bucket=self.backend.bucket,
                Key=self.backend.object_key(relative),
                UploadId=str(upload_id),
            )

    # --- confirm: a staged upload becomes a stored file -------------------------------------------

    async def confirm(
        self, key: object, location: str = "", validate: Rules | None = None
    ) -> FileRecord:
        """Look at what arrived at the staged ``key``, store it under its name in ``location``
        (a collision name when that is taken, never over another file), remove the staged
        object, and return the stored file's record.

        :raises BadUploadError: for a key this server did not issue, or too long ago.
        :raises NotFoundError: when nothing arrived there (or it was confirmed already).
        :raises UploadTooLargeError: over ``STORE_DIRECT_MAX_SIZE`` (the staged object goes).
        :raises DisallowedTypeError: for a stored type the storage does not take (it goes).
        :raises BadUploadError: a refusal of the storage's rules or ``validate``'s, which are
            checked as a save checks them (the first bytes read for a type rule); it goes too.
        """
        relative, name = self._staged(key)
        location = clean_location(location)
        head = await self.backend.head(relative)
        if head is None:
            raise NotFoundError(
                f"nothing arrived at the direct upload {key!r} (not uploaded yet, or confirmed "
                f"already)"
            )
        size = int(head["ContentLength"])
        mimetype = str(head.get("ContentType") or guess_type(name)).split(";")[0].lower()
        client_name = unquote(str((head.get("Metadata") or {}).get("filename") or name))
        try:
            if size > self.max_size:
                raise UploadTooLargeError(
                    f"{client_name!r} is {size:,} bytes, over the {self.max_size:,} bytes the "
                    f"storage {self.state.name!r} takes (STORE_DIRECT_MAX_SIZE)"
                )
            self._check_type(mimetype, client_name)
        except (UploadTooLargeError, DisallowedTypeError):
            await remove_staged(self.backend, relative)
            raise
        # The storage's own rules too (STORE_MAX_FILE_SIZE, types from the bytes, ...).
        rules = self.state.provider_class.storage_rules().merged(validate)
        stored, found = await publish_staged(
            self.backend, rules, relative, location, name, client_name, size
        )
        path = f"{location}/{stored}" if location else stored
        record = FileRecord(
            self.state.name,
            path,
            size=size,
            content_type=found or mimetype,
            filename=client_name,
            stored_at=datetime.now(UTC),
        )
        if declared(self.state):  # the storage's image variants, as for a column's upload
            record = await variants_of_new_file(record, self.state, log)
        return record

    # --- cleanup ----------------------------------------------------------------------------------

    async def cleanup(self, older_than: float | None = None) -> tuple[int, int]:
        """Remove staged objects and abort multipart uploads older than ``older_than`` seconds
        (``STORE_DIRECT_MAX_AGE``): never confirmed, they never will be. (objects, uploads)."""
        limit = self.max_age if older_than is None else older_than
        return await cleanup_staged(self.backend, f"{STAGING}/", limit)


def _parts_of(parts: object) -> list[dict[str, Any]]:
    """The ``[{PartNumber, ETag}]`` a client sent to complete an upload, checked."""
    if not isinstance(parts, list) or not parts:
        raise BadUploadError("completing an upload needs its parts: [{PartNumber, ETag}, ...]")
    listed = []
    for part in parts:
        number = part.get("PartNumber") if isinstance(part, dict) else None
        etag = part.get("ETag") if isinstance(part, dict) else None
        if isinstance(number, str) and number.isdigit():
            number = int(number)
        if (
            not isinstance(number, int)
            or not 1 <= number <= _MAX_PARTS
            or not isinstance(etag, str)
        ):
            raise BadUploadError(f"not a part of an upload: {part!r}")
        listed.append({"PartNumber": number, "ETag": etag})
    return sorted(listed, key=lambda p: p["PartNumber"])
