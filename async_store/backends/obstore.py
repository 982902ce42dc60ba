"""Files in any store obstore reaches (``STORE_PROVIDER = "obstore"``): S3, Google Cloud
Storage, Azure Blob, or memory, through the Rust ``object_store`` crate.

Its store and what its errors mean are ``_obstore_store``'s. How a write works, and why:

* a file up to ``STORE_OBSTORE_MULTIPART_THRESHOLD`` is read into memory (bounded, as the S3
  backend's: ``_multipart.Budgets``) and claims its name with one conditional PUT
  (``mode="create"``: ``If-None-Match: *`` on S3 and Azure, ``ifGenerationMatch=0`` on GCS);
* a larger one cannot: obstore's multipart upload has no create mode. It is streamed in parts
  of ``STORE_OBSTORE_PART_SIZE`` to a hidden staged key (``.async_store/staged/…``, never
  listed), which is then copied to the first free name with ``copy(overwrite=False)`` (native
  on GCS and Azure; on S3 a one-part multipart copy completed with ``If-None-Match: *``) and
  deleted. Nothing is visible under a name before the whole file is; a failure or a
  cancellation aborts the upload and deletes the staged object. The cost: the server copies
  each large file once, and on S3 one copy is at most 5 GiB (S3's part-copy limit).

Names are claimed one writer at a time per key in this process (``_multipart.Claims``), as
some S3-compatible servers do not make conditional writes atomic.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel

from .._content import disposition_header, is_passive
from .._multipart import Budgets, Charge, Claims, read_head
from .._paths import content_type as guess_type
from ..exceptions import StoreError
from ._obstore_store import (
    AzureStore,
    Errors,
    GCSStore,
    NameTaken,
    S3Store,
    build,
    obstore,
    store_kind,
)
from .base import Backend, StoredFile, check_range, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from obstore import Attributes, BytesStream, GetOptions

    from .._sources import AsyncReadable, Source
    from ..config import StoreConfig

__all__ = ["ObstoreBackend"]

#: The longest a signed URL may be valid (SigV4's and GCS V4's limit): seven days.
_MAX_EXPIRES = 7 * 24 * 3600
# A range that starts at or past the end: S3's 416, object_store's own check (memory).
_UNSATISFIABLE = re.compile(r"\b416\b|InvalidRange|Invalid range")
#: Where large uploads wait for their name, below STORE_PATH: hidden, so never listed.
_STAGED = ".async_store/staged"


class _Reader:
    """An object's bytes (or a range of them), read in chunks: ``await f.read(n)`` gives ``n``
    bytes unless the object ends first, as a local file does."""

    def __init__(self, stream: BytesStream | None, errors: Any) -> None:
        self._stream = stream
        self._errors = errors  # a context manager factory: obstore's errors mapped
        self._buffer = bytearray()

    async def read(self, size: int = -1, /) -> bytes:
        while self._stream is not None and (size < 0 or len(self._buffer) < size):
            with self._errors():
                chunk = await anext(self._stream, None)
            if chunk is None:
                self._stream = None
                break
            self._buffer += memoryview(chunk)
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), bytearray()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        await anyio.lowlevel.checkpoint()
        return data


class ObstoreBackend(Backend):
    """The store ``STORE_OBSTORE_URL``, below the key prefix ``STORE_PATH``."""

    kind: ClassVar[str] = "obstore"
    # obstore's requests run on its own Rust runtime; any event loop may await them.
    loop_bound: ClassVar[bool] = False
    signs: ClassVar[bool] = True

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.store_url = str(config["STORE_OBSTORE_URL"])
        #: ``"s3"``, ``"gcs"``, ``"azure"`` or ``"memory"``.
        self.store_kind = store_kind(self.store_url)
        #: The obstore ``ObjectStore`` (its URL's prefix applied): for what this backend lacks.
        self.store = build(config)
        self._quick = self.store if self.store_kind == "memory" else build(config, quick=True)
        self._errors = Errors(self.store_url, config["STORE_OBSTORE_OPTIONS"])
        self._budgets = Budgets(int(config["STORE_OBSTORE_MAX_MEMORY"]))
        self._claims = Claims()
        parts = urlsplit(self.store_url)
        # The key prefix the URL gives (s3://bucket/prefix): part of every object's full key.
        self._url_prefix = parts.path.strip("/")
        where = f"{parts.scheme}://{parts.netloc}/{self._url_prefix}".rstrip("/")
        if self.store_kind == "memory":  # two memory stores never share files
            where = f"memory://{uuid.uuid4().hex[:12]}"
        self._where = where

    # --- identity and URLs --------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return f"obstore url={self._where} path={self.config.path}"

    def _path(self, relative: str) -> str:
        """The path in the store (below the URL's prefix) of a store-relative key."""
        return f"{self.config.path}/{relative}" if self.config.path else relative

    def absolute_path(self, key: str) -> str:
        return "/".join(p for p in (self._url_prefix, self._path(key)) if p)

    @property
    def url_base(self) -> str:
        return "/".join(p for p in (self._url_prefix, self.config.path) if p)

    async def sign(
        self,
        key: str,
        expires: int,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A signed GET (obstore's ``sign``: SigV4, GCS V4, an Azure SAS), valid ``expires``
        seconds (seven days at most).

        :raises ValueError: for ``expires`` out of range, or an override: obstore signs plain
            GETs only.
        :raises StoreError: for ``memory://``, which has no URLs.
        """
        store = self.store
        if not isinstance(store, (S3Store, GCSStore, AzureStore)):  # memory://
            raise StoreError(f"{self.store_url} has no URLs to sign for {key!r}")
        if isinstance(expires, bool) or not 1 <= int(expires) <= _MAX_EXPIRES:
            raise ValueError(f"expires must be 1 to {_MAX_EXPIRES} seconds, not {expires!r}")
        if download_name is not None or content_type is not None:
            raise ValueError(
                "STORE_PROVIDER 'obstore' signs plain GET URLs: download_name= and "
                "content_type= overrides are not supported (the S3 provider signs them)"
            )
        with self._errors(key):
            signed = await obstore.sign_async(
                store,
                "GET",
                self._path(key),
                timedelta(seconds=int(expires)),
            )
        return str(signed)

    # --- writing --------------------------------------------------------------------------------

    def _attributes(self, name: str, detected: str | None) -> Attributes:
        mimetype = detected or guess_type(name)
        attributes: Attributes = {"Content-Type": mimetype}
        # A public object or a signed link is opened on the store's origin: an active type is
        # downloaded, not run there (the local route's rule).
        if not is_passive(mimetype):
            attributes["Content-Disposition"] = disposition_header(name)
        return attributes

    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        first = next(names, None)
        if first is None:
            raise no_free_name(location)
        relative = f"{location}/{first}" if location else first
        threshold = int(self.config["STORE_OBSTORE_MULTIPART_THRESHOLD"])
        part_size = int(self.config["STORE_OBSTORE_PART_SIZE"])
        # Errors name the file as the caller knows it: the first candidate.
        with self._errors(relative):
            async with self._budgets.get().charge() as charge:
                head, rest = await read_head(source, charge, threshold, part_size)
                attributes = self._attributes(first, source.content_type)
                if rest is None:
                    body = b"".join(head)
                    head.clear()
                    return await self._put(location, first, names, body, source)
                staged = await self._stage(head, rest, charge, attributes)
                try:
                    return await self._adopt(staged, location, first, names)
                finally:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await obstore.delete_async(self.store, staged)

    async def _put(
        self, location: str, first: str, names: Iterator[str], body: bytes, source: Source
    ) -> str:
        """One conditional PUT per name until one is free."""

        async def put(name: str, path: str) -> None:
            attributes = self._attributes(name, source.content_type)
            await obstore.put_async(self.store, path, body, mode="create", attributes=attributes)

        return await self._first_free(location, first, names, put)

    async def _first_free(
        self,
        location: str,
        first: str,
        names: Iterator[str],
        claim: Callable[[str, str], Awaitable[object]],
    ) -> str:
        """The first of ``first`` and ``names`` in ``location`` that ``claim(name, path)``
        takes (it raises ``NameTaken`` for a name taken), one writer per key at a time."""
        for name in itertools.chain([first], names):
            path = self._path(f"{location}/{name}" if location else name)
            try:
                async with self._claims.claiming(path):
                    await claim(name, path)
            except NameTaken:
                continue
            return name
        raise no_free_name(location)

    async def _stage(
        self, head: list[bytes], rest: AsyncIterator[bytes], charge: Charge, attributes: Attributes
    ) -> str:
        """Stream the upload to a new staged key as a multipart upload; aborted (and nothing
        left) when anything fails or the save is cancelled. The staged key."""
        part_size = int(self.config["STORE_OBSTORE_PART_SIZE"])
        concurrency = int(self.config["STORE_OBSTORE_MAX_CONCURRENCY"])
        # What obstore's writer may hold, whatever it has sent: its buffer and the parts in
        # flight. Each part read is given back once the writer has it.
        await charge.take(part_size * (concurrency + 1))
        staged = self._path(f"{_STAGED}/{uuid.uuid4().hex}")
        writer = obstore.open_writer_async(
            self.store,
            staged,
            attributes=attributes,
            buffer_size=part_size,
            max_concurrency=concurrency,
        )
        try:
            for part in head:
                await writer.write(part)
                charge.give(len(part))
            head.clear()
            async for part in rest:
                await writer.write(part)
                charge.give(len(part))
            await writer.close()
        except BaseException as exc:
            # Leaving the writer with an error aborts its multipart upload; the upload may
            # have completed all the same (a cancelled close): delete what is there.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await writer.__aexit__(type(exc), exc, exc.__traceback__)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await obstore.delete_async(self.store, staged)
            raise
        return staged

    async def _adopt(self, staged: str, location: str, first: str, names: Iterator[str]) -> str:
        """Copy ``staged`` to the first free name, never over another file."""

        async def copy(_name: str, path: str) -> None:
            await obstore.copy_async(self.store, staged, path, overwrite=False)

        return await self._first_free(location, first, names, copy)

    # --- reading, listing, deleting ---------------------------------------------------------

    async def _head(self, store: Any, key: str) -> dict[str, Any] | None:
        try:
            return dict(await obstore.head_async(store, self._path(key)))
        except FileNotFoundError:  # what obstore raises for a missing object
            return None

    async def exists(self, key: str) -> bool:
        with self._errors(key):
            return await self._head(self.store, key) is not None

    async def exists_now(self, key: str) -> bool:
        # One attempt, short timeouts: the caller spools anyway when the store is down.
        with self._errors(key):
            return await self._head(self._quick, key) is not None

    async def stat(self, key: str) -> StoredFile:
        with self._errors(key):
            # A HEAD whose answer carries the attributes (head() gives the size and date only).
            result = await obstore.get_async(self.store, self._path(key), options={"head": True})
        meta, attributes = result.meta, result.attributes
        stored_type = attributes.get("Content-Type")
        content_type = str(stored_type) if stored_type else guess_type(key)
        return StoredFile(key, int(meta["size"]), meta["last_modified"], content_type)

    @contextlib.asynccontextmanager
    async def open(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncReadable]:
        check_range(key, start, end)
        stream = None
        with self._errors(key):
            if end == start:
                if await self._head(self.store, key) is None:
                    raise self._errors.missing(key)
            else:
                stream = await self._get(key, start, end)
        yield _Reader(stream, lambda: self._errors(key))

    async def _get(self, key: str, start: int, end: int | None) -> BytesStream | None:
        """The stream of the range; None when it starts at or past the end (the object is
        there: a missing one raises NotFoundError)."""
        ranged = start != 0 or end is not None
        options: GetOptions = {}
        if ranged:
            options["range"] = {"offset": start} if end is None else (start, end)
        try:
            return (await obstore.get_async(self.store, self._path(key), options=options)).stream()
        except obstore.exceptions.GenericError as exc:
            if not (ranged and _UNSATISFIABLE.search(str(exc))):
                raise
        if await self._head(self.store, key) is None:
            raise self._errors.missing(key)
        return None

    async def list(self, prefix: str) -> AsyncIterator[StoredFile]:
        # object_store lists by path segment ("docs" lists docs/…, not docs.txt): list the
        # prefix's folder and keep the keys that start with it.
        base = self.config.path + "/" if self.config.path else ""
        wanted = base + prefix
        folder = wanted.rpartition("/")[0]
        with self._errors(prefix or "/"):
            async for page in obstore.list(self.store, folder or None, chunk_size=1000):
                for meta in page:
                    full = meta["path"]
                    path = full[len(base) :]
                    if full.startswith(wanted) and path and "/." not in f"/{path}":
                        yield StoredFile(path, int(meta["size"]), meta["last_modified"])

    async def delete(self, key: str) -> None:
        with self._errors(key):
            # A DELETE of a missing key succeeds on S3: HEAD first, so a typo is reported.
            if await self._head(self.store, key) is None:
                raise self._errors.missing(key)
            await obstore.delete_async(self.store, self._path(key))
