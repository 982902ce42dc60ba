"""``rename_noreplace`` and ``link_open_file``: give a file a name only if that name is free,
in one syscall.

Linux's ``renameat2(RENAME_NOREPLACE)`` checks and claims the name atomically, like ``link``
does, and consumes the source in the same step: one directory operation where link + unlink
take two. Python has no binding for it, so it is called through ctypes (which releases the GIL
for the call). Where it is missing (not Linux, an old kernel or libc, a file system without the
flag) the caller falls back to a hard link.

``link_open_file`` names a file that has none yet (made with ``O_TMPFILE``: nothing is left
behind if the process dies first) with ``linkat(AT_SYMLINK_FOLLOW)`` on its ``/proc/self/fd``
entry, which fails if the name exists: one directory operation for the whole publish.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Any

__all__ = ["link_open_file", "rename_noreplace"]

_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_RENAME_NOREPLACE = 1
# "Cannot do that here" (no syscall, flag unknown to this file system), not "name taken".
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _load(name: str) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)  # renameat2: glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load("renameat2")
# Without /proc (a bare chroot) an unnamed file cannot be linked by its descriptor.
_linkat = _load("linkat") if os.path.isdir("/proc/self/fd") else None


def rename_noreplace(src: str, dst: str) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists; blocking.

    :returns: False, having done nothing, if it cannot be done atomically here (from then on
        it returns False at once: a hard link is the way on this system).
    :raises FileExistsError: if ``dst`` exists.
    :raises OSError: for real failures (disk full, permission denied, …).
    """
    global _renameat2
    fn = _renameat2
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        _renameat2 = None  # rare (a store on such a file system): links cost one more syscall
        return False
    raise OSError(code, os.strerror(code), src, None, dst)  # EEXIST gives FileExistsError


def link_open_file(fd: int, dst: str) -> bool:
    """Give the open, unnamed file ``fd`` (``O_TMPFILE``) the name ``dst`` unless it exists;
    blocking.

    :returns: False, having done nothing, if it cannot be done here (no ``linkat``, no
        ``/proc``, a file system that refuses it): the caller names the file another way.
    :raises FileExistsError: if ``dst`` exists.
    :raises OSError: for real failures (disk full, permission denied, …).
    """
    fn = _linkat
    if fn is None:
        return False
    if fn(
        _AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(dst), _AT_SYMLINK_FOLLOW
    ):
        code = ctypes.get_errno()
        if code in _UNSUPPORTED or code in (errno.EPERM, errno.ENOENT, errno.EMLINK):
            return False
        raise OSError(code, os.strerror(code), None, None, dst)
    return True
