"""save_request under the ASGI servers the README names: hypercorn (Quart's default), uvicorn
(uvloop and httptools) and granian, each in a process of its own on 127.0.0.1, driven over a real
socket. The app is bench/http_server.py's ``ours`` (``store.save_request(fields=["f"])``), the
one ``bench/servers.py`` measures.

What a user of each server relies on: a large upload streams into the store whole (not
buffered: the server's memory stays far below the file's size), and a client that goes away
mid-upload leaves nothing in the store.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.http import _free_port, _peak_rss_mib, _wait_for

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BOUNDARY = "serverstest4b1"

pytestmark = pytest.mark.parametrize("server", ["hypercorn", "uvicorn", "granian"])


@contextmanager
def serving(server: str, folder: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", "ours", str(port), str(folder), server],
        cwd=ROOT,
    )
    try:
        _wait_for(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(30)


def multipart_head(size: int) -> tuple[bytes, bytes, dict[str, str]]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return head, tail, headers


def stored(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_large_upload_streams_into_the_store(server: str, tmp_path: Path) -> None:
    size = 192 * MIB
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    for _ in range(size // MIB):
        digest.update(block)
    head, tail, headers = multipart_head(size)

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // MIB):
            yield block
        yield tail

    with serving(server, tmp_path) as (port, process):
        reply = httpx.post(
            f"http://127.0.0.1:{port}/up", content=body(), headers=headers, timeout=120
        )
        assert reply.status_code == 200, reply.text
        peak = _peak_rss_mib(process.pid)
    (file,) = stored(tmp_path)
    assert file.stat().st_size == size
    with open(file, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
    assert peak < 160, f"{server} held {peak:.0f} MiB for a {size // MIB} MiB upload"


def test_a_client_gone_mid_upload_leaves_nothing(server: str, tmp_path: Path) -> None:
    size = 64 * MIB
    head, _, headers = multipart_head(size)
    with serving(server, tmp_path) as (port, _process):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            request = "POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            sock.sendall(request.encode() + b"\r\n" + head + os.urandom(8 * MIB))
            time.sleep(0.5)  # the app is streaming the file into the store
        deadline = time.monotonic() + 10
        while stored(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored(tmp_path) == []  # no partial file, no temp file


def _response_line(sock: socket.socket) -> bytes | None:
    """One HTTP response read off ``sock``: its status line; None if the server closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head.split(b"\r\n", 1)[0]


def test_the_connection_stays_usable_when_the_body_ends_in_a_packet_of_its_own(
    server: str, tmp_path: Path
) -> None:
    """The last bytes of a form (the CRLF after its closing boundary) may arrive on their own:
    save_request reads them too, so the server keeps the connection alive for the client's next
    request (hypercorn closed it, and that request failed: about 1 in 3,000 small uploads)."""
    size = 4096
    head, tail, headers = multipart_head(size)
    body = head + os.urandom(size) + tail
    request = "POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    with serving(server, tmp_path) as (port, _process):
        for last in (1, 2, 9):  # the final CRLF, or part of the closing boundary too
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(request.encode() + b"\r\n" + body[:-last])
                time.sleep(0.05)  # a packet of their own
                sock.sendall(body[-last:])
                assert (_response_line(sock) or b"").startswith(b"HTTP/1.1 200")
                sock.sendall(request.encode() + b"\r\n" + body)  # the next one, same connection
                assert (_response_line(sock) or b"").startswith(b"HTTP/1.1 200"), (
                    f"{server} closed it ({last})"
                )
    assert len(stored(tmp_path)) == 6
