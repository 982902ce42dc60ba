"""Files in an S3 bucket: AWS S3 or any S3-compatible server (SeaweedFS, MinIO, Ceph RGW, R2).

Its clients, and what their errors mean, are ``_s3_clients``'s (the only module that imports
aioboto3). How a write works, and why:

* the name is claimed with a conditional write (``If-None-Match: *`` on the PUT, or on
  ``CompleteMultipartUpload``), so two uploads of one name never overwrite each other; a HEAD
  first skips a name that is plainly taken. Servers without conditional writes
  (``STORE_S3_CONDITIONAL_WRITES = False``) get HEAD-then-PUT, which a concurrent writer of the
  same new name can race: documented, and the reason the default is on;
* small files go up in one PUT; larger ones as a multipart upload with at most
  ``STORE_S3_MAX_CONCURRENCY`` parts of ``STORE_S3_PART_SIZE`` in memory at once
  (``_multipart``). A failed or cancelled multipart upload is aborted (aioboto3's
  ``upload_fileobj`` does not do that on cancellation, and cannot make the final step
  conditional: hence our own loop);
* objects of active types (HTML, SVG, XML, scripts) are stored with
  ``Content-Disposition: attachment``, the rule of the local route (``_content``), and
  presigned URLs (SigV4, for the bucket's regional host) force it too.

Credentials are never part of a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
from typing import TYPE_CHECKING, Any, ClassVar

from .._content import disposition_header, is_passive
from .._multipart import Budgets, Charge, Claims, read_head, send_parts
from .._paths import content_type as guess_type
from ..exceptions import NotFoundError, ProviderError
from ._s3_bodies import UploadBody, checksum, part_algorithm, put_algorithm
from ._s3_clients import ClientError, Clients, NameTaken, raise_if_taken
from ._s3_parts import Body, S3Parts, last_byte
from .base import Backend, StoredFile, check_range, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .._sources import AsyncReadable, Source
    from ..config import StoreConfig

__all__ = ["S3Backend"]

#: The longest a presigned URL may be valid with SigV4: seven days.
_MAX_EXPIRES = 7 * 24 * 3600
#: The largest range one UploadPartCopy may copy (S3's limit).
_COPY_PART = 5 * 1024**3


class S3Backend(Backend):
    """The bucket ``STORE_S3_BUCKET``, below the key prefix ``STORE_PATH``."""

    kind: ClassVar[str] = "s3"
    loop_bound: ClassVar[bool] = True
    signs: ClassVar[bool] = True

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.bucket = str(config["STORE_S3_BUCKET"])
        self._clients = Clients(config)
        self._budgets = Budgets(int(config["STORE_S3_MAX_MEMORY"]))
        self._claims = Claims()

    # --- identity and URLs --------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return f"s3 bucket={self.bucket} path={self.config.path}"

    def _key(self, relative: str) -> str:
        prefix = self.config.path
        return f"{prefix}/{relative}" if prefix else relative

    def absolute_path(self, key: str) -> str:
        return self._key(key)

    @property
    def url_base(self) -> str:
        return self.config.path

    @property
    def default_domain(self) -> str:
        # The host presigned URLs are signed for too: the regional one on AWS.
        return self._clients.bucket_url

    async def sign(
        self,
        key: str,
        expires: int,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A presigned GET (SigV4: valid seven days at most); an active type is an attachment.

        :raises ValueError: for ``expires`` out of range.
        """
        if isinstance(expires, bool) or not 1 <= int(expires) <= _MAX_EXPIRES:
            raise ValueError(
                f"expires must be 1 to {_MAX_EXPIRES} seconds (SigV4's limit), not {expires!r}"
            )
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if content_type is not None:
            params["ResponseContentType"] = content_type
        if download_name is not None:
            params["ResponseContentDisposition"] = disposition_header(download_name)
        else:
            forced = self._disposition(key.rpartition("/")[2], content_type)
            if forced is not None:  # also protects objects stored before that rule, or by others
                params["ResponseContentDisposition"] = forced
        with self._clients.errors(key):
            async with self._clients.client("public") as s3:
                return str(
                    await s3.generate_presigned_url(
                        "get_object", Params=params, ExpiresIn=int(expires)
                    )
                )

    def _disposition(self, name: str, mimetype: str | None) -> str | None:
        """The ``Content-Disposition`` an object of ``name`` (of ``mimetype``, else the type
        ``STORE_S3_OBJECT_PARAMS`` or the name gives) must have, if any: an attachment for an
        active type, unless ``STORE_S3_OBJECT_PARAMS`` decides."""
        params = self.config["STORE_S3_OBJECT_PARAMS"] or {}
        if "ContentDisposition" in params:
            return None
        mimetype = mimetype or params.get("ContentType") or guess_type(name)
        return None if is_passive(str(mimetype)) else disposition_header(name)

    # --- the event loops it serves --------------------------------------------------------------

    async def enter_loop(self) -> None:
        self._clients.keep_for_this_loop()

    async def leave_loop(self) -> None:
        await self._clients.close_this_loop()

    async def aclose(self) -> None:
        # Clients kept for other loops are closed by leave_loop in those loops (a client
        # belongs to the loop it was made in).
        await self._clients.close_this_loop()

    # --- writing --------------------------------------------------------------------------------

    def _object_args(self, name: str, detected: str | None = None) -> dict[str, Any]:
        params = self.config["STORE_S3_OBJECT_PARAMS"] or {}
        mimetype = detected or guess_type(name)  # the type found in the bytes, when sniffed
        args: dict[str, Any] = {"ContentType": mimetype}
        # A public object or a presigned link is opened on the bucket's origin: an active type
        # is downloaded, not run there (the local route's rule).
        forced = self._disposition(name, params.get("ContentType") or mimetype)
        if forced is not None:
            args["ContentDisposition"] = forced
        if self.config["STORE_S3_ACL"] is not None:
            args["ACL"] = self.config["STORE_S3_ACL"]
        args.update(params)
        return args

    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        first = next(names, None)
        if first is None:
            raise no_free_name(location)
        # Errors name the file as the caller knows it: the first candidate.
        with self._clients.errors(f"{location}/{first}" if location else first):
            return await self._write(location, itertools.chain([first], names), source)

    async def _write(self, location: str, names: Iterator[str], source: Source) -> str:
        conditional = bool(self.config["STORE_S3_CONDITIONAL_WRITES"])
        extra = {"IfNoneMatch": "*"} if conditional else {}
        threshold = int(self.config["STORE_S3_MULTIPART_THRESHOLD"])
        part_size = int(self.config["STORE_S3_PART_SIZE"])
        async with self._clients.client() as s3, self._budgets.get().charge() as charge:
            head, rest = await read_head(source, charge, threshold, part_size)
            for name in names:
                relative = f"{location}/{name}" if location else name
                key = self._key(relative)
                # A conditional single PUT is its own check. Before a multipart upload (or
                # without conditional writes) a HEAD skips a name that is plainly taken.
                check_first = rest is not None or not conditional
                if check_first and await self._head(s3, key) is not None:
                    continue
                try:
                    if rest is None:
                        await self._put(s3, key, name, b"".join(head), extra, source)
                    else:
                        await self._multipart(s3, key, name, head, rest, extra, charge, source)
                except NameTaken:
                    if rest is None:
                        continue  # the bytes are still here: try the next name
                    # Someone claimed this new name between our HEAD and our write.
                    if not source.rewind():
                        raise ProviderError(
                            f"another upload claimed {relative!r} first and this upload's "
                            f"stream cannot be read twice; retry the upload"
                        ) from None
                    head, rest = await read_head(source, charge, threshold, part_size)
                    continue
                return name
        raise no_free_name(location)

    async def _put(
        self, s3: Any, key: str, name: str, body: bytes, extra: dict[str, str], source: Source
    ) -> None:
        args = {**self._object_args(name, source.content_type), **extra}
        # Verified (and kept) by the server; the upload's own SHA-256 when it took one.
        algorithm = put_algorithm(self.config["STORE_S3_CHECKSUM"], source.digest is not None)
        args.update(await checksum(algorithm, body, source.digest))
        try:
            async with self._claims.claiming(key):
                await s3.put_object(Bucket=self.bucket, Key=key, Body=UploadBody(body), **args)
        except ClientError as exc:
            raise_if_taken(exc)
            raise

    async def _multipart(
        self,
        s3: Any,
        key: str,
        name: str,
        head: list[bytes],
        rest: AsyncIterator[bytes],
        extra: dict[str, str],
        charge: Charge,
        source: Source,
    ) -> None:
        args = self._object_args(name, source.content_type)
        # Each part's checksum, which the server verifies part by part.
        algorithm = part_algorithm(self.config["STORE_S3_CHECKSUM"])
        if algorithm is not None:
            args["ChecksumAlgorithm"] = algorithm
        created = await s3.create_multipart_upload(Bucket=self.bucket, Key=key, **args)
        upload = S3Parts(s3, self.bucket, key, created["UploadId"], extra, self._claims, algorithm)
        concurrency = int(self.config["STORE_S3_MAX_CONCURRENCY"])
        await send_parts(upload, head, rest, concurrency=concurrency, charge=charge)

    # --- objects that arrived another way (direct uploads) -----------------------------------

    @contextlib.asynccontextmanager
    async def requests(self, key: str, kind: str = "main") -> AsyncIterator[Any]:
        """A client of this bucket whose errors, inside the block too, are mapped as every
        call's here, naming ``key`` (``kind``: ``'public'`` signs for the browsers' endpoint)."""
        with self._clients.errors(key):
            async with self._clients.client(kind) as s3:
                yield s3

    async def head(self, key: str) -> dict[str, Any] | None:
        """The HEAD answer for the store-relative ``key`` (size, type, metadata), None when
        nothing is there."""
        async with self.requests(key) as s3:
            return await self._head(s3, self._key(key))

    def object_key(self, relative: str) -> str:
        """The bucket key of a store-relative key (below ``STORE_PATH``)."""
        return self._key(relative)

    async def adopt(
        self,
        staged: str,
        location: str,
        names: Iterator[str],
        *,
        size: int | None = None,
        part_size: int = _COPY_PART,
        content_type: str | None = None,
    ) -> str:
        """Store the object at ``staged`` (store-relative) under the first of ``names`` free in
        ``location``, copied by the server, never over another file: each copy is a multipart
        upload of ``UploadPartCopy`` ranges, claimed by the conditional complete as every write
        here is. The staged object stays (the caller deletes it). The name it got.

        :param size: the staged object's size, when the caller knows it (no HEAD then).
        :param content_type: the type found in its bytes (a validation check's), stored as its
            ``Content-Type`` instead of the type its name gives.
        :raises NotFoundError: when nothing is at ``staged``.
        :raises NoFreeName: when every name is taken.
        """
        conditional = bool(self.config["STORE_S3_CONDITIONAL_WRITES"])
        extra = {"IfNoneMatch": "*"} if conditional else {}
        async with self.requests(staged) as s3:
            if size is None:
                head = await self._head(s3, self._key(staged))
                if head is None:
                    raise self._missing(staged)
                size = int(head["ContentLength"])
            source = {"Bucket": self.bucket, "Key": self._key(staged)}
            for name in names:
                key = self._key(f"{location}/{name}" if location else name)
                if await self._head(s3, key) is not None:
                    continue
                created = await s3.create_multipart_upload(
                    Bucket=self.bucket, Key=key, **self._object_args(name, content_type)
                )
                upload = S3Parts(s3, self.bucket, key, created["UploadId"], extra, self._claims)
                try:
                    await upload.copy(source, size, part_size)
                except NameTaken:
                    continue
                return name
        raise no_free_name(location)

    # --- reading, listing, deleting ---------------------------------------------------------

    async def _head(self, s3: Any, key: str, **params: str) -> dict[str, Any] | None:
        """The object's HEAD answer, None when it is absent."""
        try:
            return dict(await s3.head_object(Bucket=self.bucket, Key=key, **params))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"no stored file {key!r} in bucket {self.bucket!r}")

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def exists_now(self, key: str) -> bool:
        # One attempt, short timeouts: the caller spools anyway when S3 is down.
        with self._clients.errors(key):
            async with self._clients.client("quick") as s3:
                return await self._head(s3, self._key(key)) is not None

    async def stat(self, key: str) -> StoredFile:
        with self._clients.errors(key):
            async with self._clients.client() as s3:
                head = await self._head(s3, self._key(key), ChecksumMode="ENABLED")
        if head is None:
            raise self._missing(key)
        # Base64; a multipart object's composite checksum ("…-N") is of its parts, not its bytes.
        kept = head.get("ChecksumSHA256")
        sha256 = base64.b64decode(kept).hex() if kept and "-" not in kept else None
        content_type = head.get("ContentType") or guess_type(key)
        return StoredFile(
            key, int(head["ContentLength"]), head["LastModified"], content_type, sha256
        )

    @contextlib.asynccontextmanager
    async def open(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncReadable]:
        check_range(key, start, end)
        async with contextlib.AsyncExitStack() as stack:
            with self._clients.errors(key):
                s3 = await stack.enter_async_context(self._clients.client())
                body = await self._get(s3, key, start, end)
            if body is not None:
                stack.callback(body.close)  # releases the connection, read to the end or not
            yield Body(body, lambda: self._clients.errors(key))

    async def _get(self, s3: Any, key: str, start: int, end: int | None) -> Any:
        """The object's body from ``start`` to ``end``; None for an empty range."""
        if end == start:
            if await self._head(s3, self._key(key)) is None:
                raise self._missing(key)
            return None
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{last_byte(end)}"}
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None  # starts at or past the end (a 416: the object is there)
            raise
        return response["Body"]

    async def list(self, prefix: str) -> AsyncIterator[StoredFile]:
        # In the server's order, streamed: AWS lists keys in UTF-8 byte order (the path order
        # Provider.files promises), some S3-compatible servers do not (SeaweedFS walks its
        # folders: "a/b" before "a.txt"), and sorting would hold the whole listing in memory.
        base = self.config.path + "/" if self.config.path else ""
        with self._clients.errors(prefix or "/"):
            async with self._clients.client() as s3:
                pages = s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base + prefix
                )
                async for page in pages:
                    for obj in page.get("Contents", ()):
                        path = obj["Key"][len(base) :]
                        # Folder markers and hidden keys are not files of the store.
                        if path and not path.endswith("/") and "/." not in f"/{path}":
                            yield StoredFile(path, int(obj["Size"]), obj["LastModified"])

    async def delete(self, key: str) -> None:
        with self._clients.errors(key):
            async with self._clients.client() as s3:
                # DELETE succeeds for a missing key too; HEAD first, so a typo is reported.
                if await self._head(s3, self._key(key)) is None:
                    raise self._missing(key)
                await s3.delete_object(Bucket=self.bucket, Key=self._key(key))
