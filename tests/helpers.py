"""What many test modules build: multipart bodies and the requests that carry them, and what a
store folder holds, files being written included. (App and store builders are fixtures in
conftest.py.)"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import anyio.to_thread
import quart

__all__ = [
    "BOUNDARY",
    "CONTENT_TYPE",
    "being_written",
    "multipart",
    "post_form",
    "upload_scope",
]

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


async def post_form(app: Any, body: bytes) -> tuple[int, str]:
    """POST a multipart ``body`` to the app's ``/up``, Quart's or Flask's (in a thread, as a
    WSGI server would): the status and the page's text."""
    headers = {"Content-Type": CONTENT_TYPE}
    if isinstance(app, quart.Quart):
        response = await app.test_client().post("/up", data=body, headers=headers)
        return response.status_code, html.unescape(await response.get_data(as_text=True))

    def flask_post() -> tuple[int, str]:
        response = app.test_client().post("/up", data=body, headers=headers)
        return response.status_code, html.unescape(response.get_data(as_text=True))

    return await anyio.to_thread.run_sync(flask_post)


def upload_scope(length: int) -> dict[str, Any]:
    """The ASGI scope of a multipart POST to ``/up`` of ``length`` bytes."""
    return {
        "type": "http",
        "http_version": "1.1",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "method": "POST",
        "scheme": "http",
        "path": "/up",
        "raw_path": b"/up",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(length).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }
