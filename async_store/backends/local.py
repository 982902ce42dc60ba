"""Files on the local disk, below ``STORE_PATH``: the local backend.

How a save works, and why:

1. the content goes to a hidden temp file (``.async_store-*.part``) *in the target folder*, so
   publishing it never copies and never crosses a file system;
2. the temp file is moved to its final name with ``renameat2(RENAME_NOREPLACE)`` (or, where the
   system lacks it, hard-linked with ``os.link`` and then removed): both fail if the name
   exists, so checking and claiming a name is one atomic step, concurrent uploads of one name
   never overwrite each other, and a reader sees either nothing or the whole file;
3. on any failure the temp file is removed.

The target folder is checked on every save, with one ``lstat`` per level: a plain directory
all the way down is used as is; anything else (a missing folder, a symlink) takes the careful
path, ``makedirs`` then ``realpath``, and a link out of ``STORE_PATH`` is refused. Nothing is
cached, so a folder swapped for a symlink is seen by the next save.

These rules are written once, in :class:`_Write` (open the temp file, publish it, clean up).
The sync shim runs them in the caller's thread (:meth:`LocalBackend.write_blocking`: no event
loop at all); the async API runs them in a worker thread: blocking sources in one hop (create,
copy, publish together; small in-memory ones in the batched lane of ``_threads``), async sources
one hop per ``STORE_CHUNK_SIZE`` written, pipelined with the reading. Reads, listings, stats
and deletes take one hop each.

This module holds ``LocalBackend`` and its reader; the blocking steps they run in worker threads
(temp file, claiming a name, fsync, containment checks, error mapping) are in ``_local_fs``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from .._paths import safe_join
from .._sources import write_source
from ..exceptions import NotFoundError
from ._local_fs import (
    TEMP_PREFIX,
    _claim,
    _directory,
    _fsync_folder,
    _new_temp,
    _remove,
    _scan,
    inside,
    os_error,
    resolve_file,
    store_root,
)
from .base import Backend, StoredFile, check_range, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

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


class _Write:
    """One save's blocking steps, the rules of every local write: a temp file in the target
    folder, published under the first free name without replacing (fsynced with
    ``STORE_FSYNC``), and a cleanup that removes whatever was made, a published file included
    (a caller cancelled while it was published never learnt the name)."""

    def __init__(self, backend: LocalBackend, location: str, names: Iterator[str]) -> None:
        first = next(names, None)  # a failure is reported under the caller's own name
        if first is None:
            raise no_free_name(location)
        self._names = itertools.chain((first,), names)
        self._root, self._fsync, self._location = backend._root, backend._fsync, location
        #: The key errors name: the client's own name in ``location``.
        self.key = f"{location}/{first}" if location else first
        self._temp = self._directory = self._published = ""

    def open(self) -> IO[bytes]:
        self._directory = _directory(self._root, self._location)
        self._temp, f = _new_temp(self._directory)
        return f

    def finish(self, f: IO[bytes]) -> str:
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())
        f.close()
        # The temp file is gone once claimed.
        self._published = _claim(self._temp, self._directory, self._names, self._location)
        if self._fsync:
            _fsync_folder(self._directory)
        return self._published

    def cleanup(self) -> None:
        if self._published:
            _remove(os.path.join(self._directory, self._published))
        if self._temp:
            _remove(self._temp)


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

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self._root = store_root(config)
        self._fsync = bool(config["STORE_FSYNC"])

    @property
    def identity(self) -> str:
        return f"local path={self._root}"

    def absolute_path(self, key: str) -> str:
        return os.path.join(self._root, *key.split("/"))

    async def _run(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, its errors (about ``key``) mapped to ours."""
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except NotFoundError:
            raise
        except OSError as exc:
            raise os_error(exc, key, self._root) from exc

    # --- I/O -----------------------------------------------------------------------------------

    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        write = _Write(self, location, names)
        try:
            return await write_source(
                source, write.open, write.finish, write.cleanup, self.config.chunk_size
            )
        except NotFoundError:
            raise
        except OSError as exc:
            raise os_error(exc, write.key, self._root) from exc

    def write_blocking(self, location: str, names: Iterator[str], source: Source) -> str:
        write = _Write(self, location, names)
        try:
            try:
                with write.open() as f:
                    for chunk in source.blocking_chunks(self.config.chunk_size):
                        f.write(chunk)
                    return write.finish(f)
            except BaseException:
                write.cleanup()
                raise
        except NotFoundError:
            raise
        except OSError as exc:
            raise os_error(exc, write.key, self._root) from exc

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
        _, st = await self._run(key, resolve_file, self._root, key)
        return StoredFile(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
