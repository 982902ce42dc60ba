"""What many test modules build: multipart bodies. (App and store builders are fixtures in
conftest.py.)"""

from __future__ import annotations

__all__ = ["BOUNDARY", "CONTENT_TYPE", "multipart"]

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
