"""One local save's blocking steps (``Write``): the rules of every write below ``STORE_PATH``.

An unnamed file in the target folder (``O_TMPFILE``), or a hidden temp file where there are
none, published under the first free name without replacing, fsynced with ``STORE_FSYNC``; a
file handed over (a finished tus upload's data) is published by a second hard link instead of
a copy. ``local.LocalBackend`` runs them: in a worker thread for the async API, in the caller's
thread for the sync shim.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import IO, TYPE_CHECKING, cast

from .._content import keep_type
from ._local_fs import (
    _claim,
    _claim_unnamed,
    _directory,
    _fsync_folder,
    _new_temp,
    _remove,
    claim_link,
)
from .base import no_free_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .local import LocalBackend

__all__ = ["UNNAMED_FLAGS", "Write"]

#: An unnamed file in a folder (Linux's ``O_TMPFILE``); 0 where there is none.
UNNAMED_FLAGS = (
    getattr(os, "O_TMPFILE", 0) | os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    if hasattr(os, "O_TMPFILE")
    else 0
)
# "This file system (or kernel) makes no unnamed files": EISDIR from kernels before O_TMPFILE.
_NO_UNNAMED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL, errno.ENOSYS}


def _copy(src: int, dst: int) -> None:
    """Copy the whole file ``src`` into ``dst`` (in the kernel where it can)."""
    offset, size = 0, os.fstat(src).st_size
    while offset < size:
        sent = os.sendfile(dst, src, offset, size - offset)
        if sent == 0:
            break
        offset += sent


class Write:
    """One save's blocking steps, the rules of every local write: an unnamed file in the
    target folder (or a hidden temp file where there are none), published under the first free
    name without replacing (fsynced with ``STORE_FSYNC``), and a cleanup that removes whatever
    was made, a published file included (a caller cancelled while it was published never
    learnt the name).

    It is the file being written too, with the little of ``IO[bytes]`` a save uses:
    ``os.fdopen`` would cost three more syscalls per file (fstat, isatty, lseek), each a trip
    through the GIL, and a buffer a single-chunk save does not need.
    """

    def __init__(
        self,
        backend: LocalBackend,
        location: str,
        names: Iterator[str],
        content_type: str | None = None,
        link_from: str | None = None,
    ) -> None:
        #: The type a validation check found in its bytes: kept with the file (an xattr).
        self._content_type = content_type
        #: A file handed over whose bytes are the upload's: linked in, not written (see _link).
        self._link_from = link_from
        first = next(names, None)  # a failure is reported under the caller's own name
        if first is None:
            raise no_free_name(location)
        self._names = itertools.chain((first,), names)
        self._backend = backend
        self._root, self._fsync, self._location = backend._root, backend._fsync, location
        #: The key errors name: the client's own name in ``location``.
        self.key = f"{location}/{first}" if location else first
        self._temp = self._directory = self._published = ""
        self._fd = -1

    def open(self) -> IO[bytes]:
        self._directory = directory = _directory(self._root, self._location)
        if self._link_from is not None:
            return cast("IO[bytes]", self)  # read through (checks, hash), written by a link
        if self._backend._unnamed:
            try:
                # Unnamed until published: nothing is left behind if the process dies first.
                self._fd = os.open(directory, UNNAMED_FLAGS, 0o644)
            except OSError as exc:
                if exc.errno not in _NO_UNNAMED:
                    raise
                self._backend._unnamed = False  # this file system has none: named temp files
            else:
                os.fchmod(self._fd, 0o644)  # whatever the umask: a web server may serve it
                keep_type(self._fd, self._content_type)
                return cast("IO[bytes]", self)
        self._fd = self._named_temp()
        return cast("IO[bytes]", self)

    def _named_temp(self) -> int:
        self._temp, fd = _new_temp(self._directory)  # from here on, the cleanup removes it
        keep_type(fd, self._content_type)
        return fd

    def write(self, data: bytes) -> int:
        if self._link_from is not None:
            return len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]  # a short write (disk full) is no silent cut
        return len(data)

    def finish(self, _file: object = None) -> str:
        if self._link_from is not None and self._link(self._link_from):
            return self._published
        try:
            if self._fsync:
                os.fsync(self._fd)
            if not self._temp:  # unnamed: linking it publishes it
                named, untried = _claim_unnamed(
                    self._fd, self._directory, self._names, self._location
                )
                self._published = named or ""
                if untried is not None:  # no links to unnamed files here: copy to a named one
                    self._names = itertools.chain((untried,), self._names)
                    self._backend._unnamed = False
                    unnamed, self._fd = self._fd, -1
                    try:
                        self._fd = self._named_temp()
                        _copy(unnamed, self._fd)
                        if self._fsync:
                            os.fsync(self._fd)
                    finally:
                        os.close(unnamed)
        finally:
            self.close()
        if not self._published:
            # The temp file is gone once claimed.
            self._published = _claim(self._temp, self._directory, self._names, self._location)
        if self._fsync:
            _fsync_folder(self._directory)
        return self._published

    def _link(self, source: str) -> bool:
        """Make the handed-over ``source`` the stored file: a second hard link to it under the
        first free name, the file it already is (a tus upload's data: 1 GiB published in one
        syscall instead of copied). False where no link can be made: it is then copied into a
        temp file, which ``finish`` claims as any."""
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: a web server may serve it
            keep_type(fd, self._content_type)
            if self._fsync:
                os.fsync(fd)
            named, untried = claim_link(source, self._directory, self._names, self._location)
            if named is not None:
                self._published = named
                if self._fsync:
                    _fsync_folder(self._directory)
                return True
            assert untried is not None
            self._names = itertools.chain((untried,), self._names)
            self._link_from = None
            self._fd = self._named_temp()
            _copy(fd, self._fd)
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Write:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def cleanup(self) -> None:
        self.close()
        if self._published:
            _remove(os.path.join(self._directory, self._published))
        if self._temp:
            _remove(self._temp)
