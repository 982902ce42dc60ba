"""The local backend's blocking file-system steps, each run in a worker thread by the backend.

Where a key is on disk and whether it stays inside ``STORE_PATH`` (``store_root``, ``inside``,
``resolve_file``, the target folder), the hidden temp file a save writes, claiming a final name
without replacing one (``_claim``), ``fsync`` of a folder, one folder's listing, and ``OSError``
mapped to our errors (``os_error``). ``local.py`` says how a save puts them together, and why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
from typing import TYPE_CHECKING

from .. import _rename
from .._paths import safe_join
from ..exceptions import NotFoundError, ProviderError
from .base import no_free_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..config import StoreConfig

__all__ = ["TEMP_PREFIX", "inside", "os_error", "resolve_file", "store_root"]

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


def _claim_unnamed(
    fd: int, directory: str, names: Iterator[str], location: str
) -> tuple[str | None, str | None]:
    """Name the unnamed file ``fd`` (``O_TMPFILE``) with the first free name: ``(name, None)``;
    ``(None, untried)`` where unnamed files cannot be linked (the caller copies it to a named
    temp file and claims that, ``untried`` first: the name was not tried)."""
    for name in names:
        try:
            if not _rename.link_open_file(fd, os.path.join(directory, name)):
                return None, name
        except FileExistsError:
            continue
        return name, None
    raise no_free_name(location)


def claim_link(
    source: str, directory: str, names: Iterator[str], location: str
) -> tuple[str | None, str | None]:
    """Give the file ``source`` the first free name in ``directory`` too, as a second hard link
    (nothing is copied; checking and claiming a name is one syscall): ``(name, None)``;
    ``(None, untried)`` where no hard link can be made (another file system: the caller copies
    it, ``untried`` first)."""
    for name in names:
        try:
            os.link(source, os.path.join(directory, name))
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return None, name
            raise
        return name, None
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


def _new_temp(directory: str) -> tuple[str, int]:
    """A hidden temp file in ``directory`` (where unnamed files cannot be made): its path and
    a descriptor open for writing."""
    while True:
        temp = os.path.join(directory, f"{TEMP_PREFIX}{_temp_names.getrandbits(64):016x}.part")
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o644)
            break
        except FileExistsError:
            continue
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: a web server may serve the folder
        return temp, fd
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
