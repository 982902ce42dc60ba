"""What many test modules build: multipart bodies, and what a store folder holds, files being
written included. (App and store builders are fixtures in conftest.py.)"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BOUNDARY", "CONTENT_TYPE", "being_written", "multipart"]

BOUNDARY = "----async-store-test-7Hq"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(
    *parts: tuple[str, str | bytes | None, bytes],
    boundary: str = BOUNDARY,
    file_type: bytes | None = b"application/octet-stream",
) -> bytes:
    """A ``multipart/form-data`` body of ``(field, filename, content)`` parts: a filename of
    None makes a text field; a bytes filename goes in as it is (a hostile client's)."""
    out = bytearray()
    for name, filename, content in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        if filename is not None:
            raw = filename if isinstance(filename, bytes) else filename.encode()
            out += b'; filename="' + raw + b'"'
        out += b"\r\n"
        if filename is not None and file_type is not None:
            out += b"Content-Type: " + file_type + b"\r\n"
        out += b"\r\n" + content + b"\r\n"
    return bytes(out + f"--{boundary}--\r\n".encode())


def being_written(folder: Path, pid: int | None = None) -> dict[str, int]:
    """The files process ``pid`` (default: this one) has open for a save into ``folder`` and
    their sizes so far: unnamed ones (``O_TMPFILE``: no name in the folder until published,
    shown by ``/proc`` as ``path/#inode (deleted)``) and hidden temp files."""
    fds = f"/proc/{pid or 'self'}/fd"
    found: dict[str, int] = {}
    for fd in os.listdir(fds):
        try:
            target = os.readlink(f"{fds}/{fd}")
            size = os.stat(f"{fds}/{fd}").st_size
        except OSError:
            continue  # closed meanwhile
        inside = target.startswith(f"{os.path.realpath(folder)}{os.sep}")
        if inside and (target.endswith(" (deleted)") or "/.async_store-" in target):
            found[target] = size
    return found
