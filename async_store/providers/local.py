"""Files on the local disk, below ``STORE_PATH``.

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
``STORE_CHUNK_SIZE`` written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, cast

import aiofiles
import anyio
import anyio.to_thread

from .. import _rename
from .._paths import safe_join
from .._sources import write_source
from ..exceptions import NotConfiguredError, NotFoundError, ProviderError
from .base import Provider, StoredFile, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .._sources import AsyncReadable, Source
    from ..config import StoreConfig

__all__ = ["LocalProvider", "resolve_file"]

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


def _inside(root: str, path: str) -> bool:
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
        st = os.stat(real) if _inside(root, real) else None
    except OSError as exc:
        raise NotFoundError(f"no stored file {key!r}") from exc
    if st is None or not stat.S_ISREG(st.st_mode):
        raise NotFoundError(f"no stored file {key!r}")
    return real, st


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


def _check_folder(path: str) -> None:
    """STORE_PATH is a writable folder, or one that a save can create (it is made at the first
    save, so a mistyped path is not created by merely starting the app or listing it)."""
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"is below the file {existing!r}"
        raise NotConfiguredError(
            f"STORE_PATH {path!r} {where}, not a folder: set STORE_PATH to a folder this "
            f"process can write to."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"cannot be created: {existing!r} is"
        raise NotConfiguredError(
            f"STORE_PATH {path!r} {what} not writable by this process; fix its permissions or "
            f"set STORE_PATH to another folder."
        )


def _check_not_published(path: str, config: StoreConfig) -> None:
    """The serving route publishes STORE_PATH: never the app's own folders."""
    for name, folder in (
        ("the app's root folder", config.root_path),
        ("the app's instance folder", config.instance_path),
        ("the current directory", os.getcwd()),
    ):
        if not folder:
            continue
        real = os.path.realpath(folder)
        if _inside(path, real):
            relation = "is" if real == path else "holds"
            raise NotConfiguredError(
                f"STORE_PATH {path!r} {relation} {name} ({real!r}): the route under "
                f"STORE_URL_PREFIX would publish the app's own files (its code, its database). "
                f"Give uploads a folder of their own (the default is <instance folder>/uploads), "
                f"or set STORE_SERVE_FILES = False and serve them some other way."
            )


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


class LocalProvider(Provider):
    """Stores files on the local file system below ``STORE_PATH``.

    Config: ``STORE_PATH`` (default: ``uploads`` in the app's instance folder; a relative path is
    taken relative to the app's root), ``STORE_FSYNC`` (flush each file to disk before it is
    published). The extension serves the files under ``STORE_URL_PREFIX``.
    """

    register_route = True
    config_backend = "local"
    loop_bound = False  # only files and worker threads: a save runs on any event loop

    @classmethod
    def check_config(cls, config: StoreConfig) -> None:
        super().check_config(config)
        if not config.path.strip():
            # os.path.join(root, "") is the app's own folder: its code and database, published.
            raise NotConfiguredError(
                "STORE_PATH is empty: set it to the folder uploads go to (an empty value would "
                "be the app's own folder), or leave it unset for <instance folder>/uploads."
            )
        # One realpath, once: every containment check compares against it.
        path = os.path.realpath(os.path.join(config.root_path, os.path.expanduser(config.path)))
        _check_folder(path)
        if config["STORE_SERVE_FILES"] and cls.register_route:
            _check_not_published(path, config)
        config["STORE_PATH"] = path

    @contextlib.contextmanager
    def _map_errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            if isinstance(exc, NotFoundError):
                raise
            raise NotFoundError(f"no stored file {key!r} in {self.config.path!r}") from exc
        except OSError as exc:
            reason = {
                errno.ENOSPC: "the disk is full",
                errno.EDQUOT: "the disk quota is exceeded",
                errno.EACCES: "permission denied",
                errno.EPERM: "permission denied",
                errno.EROFS: "the file system is read-only",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise ProviderError(
                f"could not store {key!r} in STORE_PATH {self.config.path!r}: {reason}"
            ) from exc

    def _absolute_path(self, key: str) -> str:
        return os.path.join(self.config.path, *key.split("/"))

    def _directory(self, location: str) -> str:
        root = self.config.path
        directory = safe_join(root, location) if location else root
        if _plain_folders(root, location):  # the common case: no link can lead out
            return directory
        os.makedirs(directory, exist_ok=True)
        if not _inside(root, os.path.realpath(directory)):
            raise ProviderError(f"location {location!r} is a link out of STORE_PATH {root!r}")
        return directory

    def _new_temp(self, directory: str) -> tuple[str, IO[bytes]]:
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

    def _finish(self, f: IO[bytes]) -> None:
        f.flush()
        if self.config["STORE_FSYNC"]:
            os.fsync(f.fileno())
        f.close()

    def _publish(self, temp: str, directory: str, names: Iterator[str], location: str) -> str:
        name = _claim(temp, directory, names, location)
        if self.config["STORE_FSYNC"]:
            # The new directory entry must reach the disk too, or a power cut loses the name.
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return name

    async def _save(self, location: str, names: Iterator[str], source: Source) -> str:
        temp = ""
        directory = ""
        published = ""

        def open_temp() -> IO[bytes]:
            nonlocal temp, directory
            directory = self._directory(location)
            temp, f = self._new_temp(directory)
            return f

        def finish(f: IO[bytes]) -> str:
            nonlocal published
            self._finish(f)
            published = self._publish(temp, directory, names, location)  # temp is gone now
            return published

        def cleanup() -> None:
            # After a publish only when the caller was cancelled during it: it never got the
            # name, so the file would be an orphan.
            if published:
                _remove(os.path.join(directory, published))
            if temp:
                _remove(temp)

        return await write_source(source, open_temp, finish, cleanup, self.config.chunk_size)

    async def _exists(self, key: str) -> bool:
        try:
            await anyio.to_thread.run_sync(resolve_file, self.config.path, key)
        except NotFoundError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def _open(self, key: str) -> AsyncIterator[AsyncReadable]:
        path, _ = await anyio.to_thread.run_sync(resolve_file, self.config.path, key)
        f = await aiofiles.open(path, "rb")
        try:
            yield f
        finally:
            # Shielded: a cancelled reader (a client gone, a cancelled migrate) would otherwise
            # cancel the close itself and leak the descriptor.
            with anyio.CancelScope(shield=True):
                await f.close()

    def _delete_blocking(self, key: str) -> None:
        resolve_file(self.config.path, key)  # refuses what the store would not serve
        os.unlink(safe_join(self.config.path, key))  # the link itself, never its target

    async def _delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(self._delete_blocking, key)

    @classmethod
    def _list(cls, prefix: str) -> AsyncIterator[StoredFile]:
        return cls._walk(prefix.rpartition("/")[0], prefix)

    @classmethod
    async def _walk(cls, folder: str, prefix: str) -> AsyncIterator[StoredFile]:
        # One worker-thread hop per folder; folders are entered in key order as they come.
        for name, is_dir, size, mtime in await anyio.to_thread.run_sync(
            _scan, cls.config.path, folder
        ):
            path = f"{folder}/{name}" if folder else name
            if is_dir and (path + "/").startswith(prefix[: len(path) + 1]):
                async for file in cls._walk(path, prefix):
                    yield file
            elif not is_dir and path.startswith(prefix):
                yield StoredFile(path, size, datetime.fromtimestamp(mtime, UTC))
