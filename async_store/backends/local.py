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

Blocking sources are copied in one worker-thread hop (create, copy, publish together; small
in-memory ones in the batched lane of ``_threads``); async sources cost one hop per
``STORE_CHUNK_SIZE`` written. Reads, listings, stats and deletes take one hop each.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import stat
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.to_thread

from .. import _rename
from .._paths import safe_join
from .._sources import write_source
from ..exceptions import NotFoundError, ProviderError
from .base import Backend, StoredFile, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from .._sources import Source
    from ..config import StoreConfig

__all__ = ["TEMP_PREFIX", "LocalBackend", "inside", "os_error", "resolve_file", "store_root"]

T = TypeVar("T")

TEMP_PREFIX = ".async_store-"
_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
# Temp names need only be unlikely to clash (O_EXCL retries a clash); no syscall to make one.
_temp_names = random.Random()
# Errors that mean "this file system cannot hard-link", not "the name is taken".
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


def inside(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both realpaths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_file(root: str, key: str) -> tuple[str, os.stat_result]:
    """Find the stored regular file ``key`` below ``root`` (a realpath).

    Symlinks are followed only while they stay inside the store; directories, hidden and temp
    files are never returned. Blocking: call it in a worker thread.

    :raises UnsafePathError: if ``key`` is not a plain relative path.
    :raises NotFoundError: if there is no such regular file inside the store.
    """
    real = os.path.realpath(safe_join(root, key))
    try:
        st = os.stat(real) if inside(root, real) else None
    except OSError as exc:
        raise NotFoundError(f"no stored file {key!r}") from exc
    if st is None or not stat.S_ISREG(st.st_mode):
        raise NotFoundError(f"no stored file {key!r}")
    return real, st


def os_error(
    exc: OSError, key: str, root: str, setting: str = "STORE_PATH"
) -> NotFoundError | ProviderError:
    """``exc``, raised by a call about ``key`` in the folder ``root`` (the store, or the
    ``setting`` that names another, such as the spool), as our error: NotFoundError for a
    missing file, else a ProviderError naming the key, the folder and the reason (raise it
    ``from exc``)."""
    if isinstance(exc, FileNotFoundError) and setting == "STORE_PATH":
        return NotFoundError(f"no stored file {key!r} in {root!r}")
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return ProviderError(f"could not store {key!r} in {setting} {root!r}: {reason}")


def _claim(temp: str, directory: str, names: Iterator[str], location: str) -> str:
    """Move ``temp`` to the first free name; checking and claiming a name is one syscall.

    On success ``temp`` is gone; on failure the caller removes it.
    """
    for name in names:
        final = os.path.join(directory, name)
        try:
            if _rename.rename_noreplace(temp, final):
                return name
            os.link(temp, final)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            # No hard links here (some network and FUSE file systems): claim the name with an
            # exclusive create, then move the finished file over the empty placeholder.
            try:
                os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                continue
            os.replace(temp, final)
            return name
        _remove(temp)
        return name
    raise no_free_name(location)


def _plain_folders(root: str, location: str) -> bool:
    """Whether ``root`` and every folder of ``location`` below it is a directory, not a link."""
    path = root
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        for part in location.split("/") if location else ():
            path = os.path.join(path, part)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
    except (FileNotFoundError, NotADirectoryError):
        return False  # the careful path creates the folder, or fails as makedirs does
    return True


def _directory(root: str, location: str) -> str:
    """The folder ``location`` below ``root``, created if missing; never a link out."""
    directory = safe_join(root, location) if location else root
    if _plain_folders(root, location):  # the common case: no link can lead out
        return directory
    os.makedirs(directory, exist_ok=True)
    if not inside(root, os.path.realpath(directory)):
        raise ProviderError(f"location {location!r} is a link out of STORE_PATH {root!r}")
    return directory


def _scan(root: str, folder: str) -> list[tuple[str, bool, int, float]]:
    """The visible entries of one store folder: (name, is a folder, size, mtime), in key order.

    Hidden and temp entries and symlinks are left out, and so is a folder that is a link.
    """
    if not _plain_folders(root, folder):
        return []
    found = []
    with os.scandir(safe_join(root, folder) if folder else root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                found.append((entry.name, True, 0, 0.0))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                found.append((entry.name, False, st.st_size, st.st_mtime))
    # The order S3 lists keys in: 'a/b' sorts as 'a' + '/' + 'b'.
    found.sort(key=lambda e: e[0] + "/" if e[1] else e[0])
    return found


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _new_temp(directory: str) -> tuple[str, IO[bytes]]:
    while True:
        temp = os.path.join(directory, f"{TEMP_PREFIX}{_temp_names.getrandbits(64):016x}.part")
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o644)
            break
        except FileExistsError:
            continue
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: a web server may serve the folder
        return temp, cast("IO[bytes]", _TempFile(fd))
    except BaseException:
        os.close(fd)
        _remove(temp)
        raise


def _fsync_folder(directory: str) -> None:
    # The new directory entry must reach the disk too, or a power cut loses the name.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_root(config: StoreConfig) -> str:
    """``STORE_PATH`` as the one realpath every containment check compares against (relative
    paths are taken relative to the app's root)."""
    return os.path.realpath(os.path.join(config.root_path, os.path.expanduser(config.path)))


class _TempFile:
    """The temp file's descriptor with the little of ``IO[bytes]`` a save uses.

    ``os.fdopen`` would cost three more syscalls per file (fstat, isatty, lseek), each a trip
    through the GIL, and a buffer a single-chunk save does not need.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]  # a short write (disk full) is no silent cut
        return len(data)

    def flush(self) -> None:
        return None  # nothing is buffered

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> _TempFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        first = next(names, None)  # a failure is reported under the caller's own name
        if first is None:
            raise no_free_name(location)
        names = itertools.chain((first,), names)
        root, fsync = self._root, self._fsync
        temp = ""
        directory = ""
        published = ""

        def open_temp() -> IO[bytes]:
            nonlocal temp, directory
            directory = _directory(root, location)
            temp, f = _new_temp(directory)
            return f

        def finish(f: IO[bytes]) -> str:
            nonlocal published
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            f.close()
            published = _claim(temp, directory, names, location)  # temp is gone now
            if fsync:
                _fsync_folder(directory)
            return published

        def cleanup() -> None:
            # After a publish only when the caller was cancelled during it: it never got the
            # name, so the file would be an orphan.
            if published:
                _remove(os.path.join(directory, published))
            if temp:
                _remove(temp)

        try:
            return await write_source(source, open_temp, finish, cleanup, self.config.chunk_size)
        except NotFoundError:
            raise
        except OSError as exc:
            raise os_error(exc, f"{location}/{first}" if location else first, root) from exc

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
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"not a byte range of {key!r}: start {start}, end {end}")

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
