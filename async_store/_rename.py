"""``rename_noreplace``: move a file to a name only if that name is free, in one syscall.

Linux's ``renameat2(RENAME_NOREPLACE)`` checks and claims the name atomically, like ``link``
does, and consumes the source in the same step: one directory operation where link + unlink
take two. Python has no binding for it, so it is called through ctypes (which releases the GIL
for the call). Where it is missing (not Linux, an old kernel or libc, a file system without the
flag) the caller falls back to a hard link.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Any

__all__ = ["rename_noreplace"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# "Cannot do that here" (no syscall, flag unknown to this file system), not "name taken".
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load()


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
