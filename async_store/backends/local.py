"""Files on the local disk, below ``STORE_PATH``: the local backend.

How a save works, and why:

1. the content goes to an *unnamed* file in the target folder (Linux's ``O_TMPFILE``): it has no
   name to be seen, served or left behind, even by a process killed mid-save, and publishing it
   never copies and never crosses a file system;
2. it is given its final name with ``linkat`` on its ``/proc/self/fd`` entry, which fails if the
   name exists: checking and claiming a name is one atomic step (one directory operation),
   concurrent uploads of one name never overwrite each other, and a reader sees either nothing
   or the whole file;
3. where unnamed files cannot be made or linked (other systems, some network and FUSE file
   systems), a hidden temp file (``.async_store-*.part``) in the target folder takes its place,
   moved to its final name with ``renameat2(RENAME_NOREPLACE)`` (or hard-linked with
   ``os.link`` and then removed), with the same guarantees; on any failure it is removed.

The target folder is checked on every save, with one ``lstat`` per level: a plain directory
all the way down is used as is; anything else (a missing folder, a symlink) takes the careful
path, ``makedirs`` then ``realpath``, and a link out of ``STORE_PATH`` is refused. Nothing is
cached, so a folder swapped for a symlink is seen by the next save.

These rules are written once, in ``_local_write.Write`` (open the temp file, publish it, clean up).
The sync shim runs them in the caller's thread (:meth:`LocalBackend.write_blocking`: no event
loop at all); the async API runs them in a worker thread: blocking sources in one hop (create,
copy, publish together; small in-memory ones in the batched lane of ``_threads``), async sources
one hop per ``STORE_CHUNK_SIZE`` written, pipelined with the reading. Reads, listings, stats
and deletes take one hop each.

This module holds ``LocalBackend`` and its reader; a save's blocking steps are ``_local_write``'s,
the file-system helpers they share (claiming a name, fsync, containment checks, error mapping)
``_local_fs``'s.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from .._content import stored_type
from .._paths import content_type, safe_join
from .._sources import write_source
from ..exceptions import NotFoundError, StoreError
from ._local_fs import (
    TEMP_PREFIX,
    _scan,
    inside,
    os_error,
    resolve_file,
    store_root,
)
from ._local_write import UNNAMED_FLAGS, Write
from .base import Backend, StoredFile, check_range

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from .._signing import LinkSigner
    from .._sources import Source
    from ..config import StoreConfig

__all__ = ["TEMP_PREFIX", "LocalBackend", "inside", "os_error", "resolve_file", "store_root"]

T = TypeVar("T")


class _Reader:
    """A stored file opened for reading: the bytes from ``start`` up to ``end`` (None: the
    end of the file), seen as a file of their own (``tell()`` 0 is ``start``). ``async``
    ``read``, ``seek`` and ``tell``; one worker-thread hop per read or seek, errors mapped as
    the backend's."""

    def __init__(
        self, backend: LocalBackend, key: str, f: IO[bytes], start: int, end: int | None
    ) -> None:
        self._backend = backend
        self._key = key
        self._file = f
        self._start = self._pos = start
        self._end = end

    async def read(self, size: int = -1, /) -> bytes:
        end = self._end
        if end is not None:
            left = max(end - self._pos, 0)
            size = left if size < 0 else min(size, left)
            if size == 0:
                return b""
        data = await self._run(self._file.read, size)
        self._pos += len(data)
        return data

    async def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        def seek() -> int:
            if whence == os.SEEK_SET:
                base = self._start
            elif whence == os.SEEK_CUR:
                base = self._pos
            elif whence == os.SEEK_END:
                end = self._end
                base = os.fstat(self._file.fileno()).st_size if end is None else end
            else:
                raise ValueError(f"invalid whence ({whence})")
            if base + offset < self._start:
                raise ValueError(f"negative seek position {base + offset - self._start}")
            self._pos = self._file.seek(base + offset)
            return self._pos - self._start

        return await self._run(seek)

    async def tell(self) -> int:
        return self._pos - self._start

    def _run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return self._backend._run(self._key, fn, *args)

    async def aclose(self) -> None:
        # Shielded: a cancelled reader (a client gone, a cancelled migrate) would otherwise
        # cancel the close itself and leak the descriptor.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._file.close)


class LocalBackend(Backend):
    """Stores files on the local file system below ``STORE_PATH`` (made a realpath by
    ``store_root()``); ``STORE_FSYNC`` flushes each file and its folder to disk before
    it is published.

    Every call maps ``OSError`` to :class:`~async_store.exceptions.NotFoundError` (a missing
    file) or :class:`~async_store.exceptions.ProviderError` naming the key, ``STORE_PATH`` and
    the reason; nothing local is ever "unavailable".
    """

    kind = "local"
    loop_bound = False  # only files and worker threads: any event loop, or none, will do
    writes_blocking = True
    signs = True  # links the serving route checks (``_signing``), once it is registered

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self._root = store_root(config)
        self._fsync = bool(config["STORE_FSYNC"])
        #: Whether saves write unnamed files (``O_TMPFILE``), until the file system says no.
        self._unnamed = UNNAMED_FLAGS != 0
        #: What signs links to this storage's files with the app's ``SECRET_KEY``: set by the
        #: serving route when it is registered (``serve.register_route``), which checks them.
        self.links: LinkSigner | None = None

    @property
    def identity(self) -> str:
        return f"local path={self._root}"

    @property
    def writes_unnamed(self) -> bool:
        """Whether saves write unnamed files (``O_TMPFILE``) here; False once the file system
        has said it makes none (hidden temp files then)."""
        return self._unnamed

    def absolute_path(self, key: str) -> str:
        return os.path.join(self._root, *key.split("/"))

    async def sign(
        self,
        key: str,
        expires: int,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """:meth:`url` with an expiry and an HMAC of the app's ``SECRET_KEY`` that the serving
        route checks, and the response overrides it then applies.

        :raises ValueError: for ``expires`` out of range (1 s to a year) or a bad override.
        :raises NotConfiguredError: naming ``SECRET_KEY`` when the app has none.
        :raises StoreError: when this storage's route is off (``STORE_SERVE_FILES``).
        """
        if self.links is None:
            raise StoreError(
                f"no signed link to {key!r}: signed links of local files are checked by the "
                f"store's serving route, which is off for this storage (STORE_SERVE_FILES = "
                f"False); turn it on, or sign links where the files are served"
            )
        query = self.links.query(
            key, expires, download_name=download_name, content_type=content_type
        )
        return f"{self.url(key)}?{query}"

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """``OSError`` about ``key`` raised as ours (:func:`os_error`)."""
        try:
            yield
        except NotFoundError:
            raise
        except OSError as exc:
            raise os_error(exc, key, self._root) from exc

    async def _run(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, its errors (about ``key``) mapped to ours."""
        with self._errors(key):
            return await anyio.to_thread.run_sync(fn, *args)

    # --- I/O -----------------------------------------------------------------------------------

    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        write = Write(self, location, names, source.content_type, source.handed_over)
        with self._errors(write.key):
            return await write_source(
                source, write.open, write.finish, write.cleanup, self.chunk_size
            )

    def write_blocking(self, location: str, names: Iterator[str], source: Source) -> str:
        write = Write(self, location, names, source.content_type, source.handed_over)
        with self._errors(write.key):
            try:
                write.open()
                for chunk in source.blocking_chunks(self.chunk_size):
                    write.write(chunk)
                return write.finish()
            except BaseException:
                write.cleanup()
                raise

    async def exists(self, key: str) -> bool:
        try:
            await self._run(key, resolve_file, self._root, key)
        except NotFoundError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def open(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[_Reader]:
        check_range(key, start, end)

        def open_at() -> IO[bytes]:
            path, _ = resolve_file(self._root, key)  # refuses what the store would not serve
            f = open(path, "rb")  # closed by the reader
            try:
                if start:
                    f.seek(start)
            except BaseException:
                f.close()
                raise
            return f

        reader = _Reader(self, key, await self._run(key, open_at), start, end)
        try:
            yield reader
        finally:
            await reader.aclose()

    async def delete(self, key: str) -> None:
        root = self._root

        def delete() -> None:
            resolve_file(root, key)  # refuses what the store would not serve
            os.unlink(safe_join(root, key))  # the link itself, never its target

        await self._run(key, delete)

    def list(self, prefix: str) -> AsyncIterator[StoredFile]:
        return self._walk(prefix.rpartition("/")[0], prefix)

    async def _walk(self, folder: str, prefix: str) -> AsyncIterator[StoredFile]:
        # One worker-thread hop per folder; folders are entered in key order as they come.
        for name, is_dir, size, mtime in await self._run(prefix or "/", _scan, self._root, folder):
            path = f"{folder}/{name}" if folder else name
            if is_dir and (path + "/").startswith(prefix[: len(path) + 1]):
                async for file in self._walk(path, prefix):
                    yield file
            elif not is_dir and path.startswith(prefix):
                yield StoredFile(path, size, datetime.fromtimestamp(mtime, UTC))

    async def stat(self, key: str) -> StoredFile:
        def stat() -> tuple[os.stat_result, str | None]:
            path, st = resolve_file(self._root, key)
            return st, stored_type(path)

        st, stored = await self._run(key, stat)
        modified = datetime.fromtimestamp(st.st_mtime, UTC)
        return StoredFile(key, st.st_size, modified, stored or content_type(key))
