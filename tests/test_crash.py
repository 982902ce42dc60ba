"""Crashes: kill -9 a real server (hypercorn serving Quart, in a process of its own) mid-upload and
mid-background-delivery, restart it, and look behind its back.

After the restart no partial file may be visible (at a final path in the store, as an object in
the bucket, as a published job in the spool), and every upload that got a 2xx must be stored,
exactly once, with the sha256 the client sent. The server is ``bench/load_server.py``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.load import Target, free_port, spooled_jobs, start_server, stop_server
from tests.conftest import s3_client, s3_config
from tests.faultproxy import Recorded, fault_proxy
from tests.helpers import CONTENT_TYPE, being_written, multipart
from tests.seaweed import SeaweedFS

MIB = 1024 * 1024
SMALL_PARTS = {"STORE_S3_MULTIPART_THRESHOLD": 5 * MIB, "STORE_S3_PART_SIZE": 5 * MIB}


def upload(port: int, name: str, data: bytes) -> str:
    """POST one file; the stored relative path (the upload must get a 2xx)."""
    kind, body = CONTENT_TYPE, multipart(("f", name, data))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/up", body, {"Content-Type": kind})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status == 200, answer
    return str(json.loads(answer)["path"])


@contextmanager
def half_sent(port: int, name: str, data: bytes, sent: int) -> Iterator[socket.socket]:
    """An upload whose client has sent ``sent`` bytes of its body and waits, connection open."""
    kind, body = CONTENT_TYPE, multipart(("f", name, data))
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(
            f"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        sock.sendall(body[:sent])
        yield sock
    finally:
        sock.close()


def wait_for(what: str, check: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_9(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGKILL)
    server.wait(10)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_files(store: Path) -> list[Path]:
    return [p for p in store.rglob(".*") if p.is_file() and p.stat().st_size > 0]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kill_9_mid_upload_leaves_no_partial_file(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    client: Any = None
    if backend == "s3":
        server_s3: SeaweedFS = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        config = s3_config(server_s3, bucket, STORE_PATH="media", **SMALL_PARTS)
        client = s3_client(server_s3)

        def writing() -> bool:
            return bool(client.list_multipart_uploads(Bucket=bucket).get("Uploads"))
    else:
        store = tmp_path / "store"
        config = {"STORE_PATH": str(store)}

        def writing() -> bool:
            return any(being_written(store, server.pid).values())

    log = tmp_path / "server.log"
    stored: dict[str, str] = {}
    port = free_port()
    server = start_server(port, config, log)
    try:
        for i, size in enumerate((4096, 300_000, 6 * MIB)):
            data = os.urandom(size)
            stored[upload(port, f"before{i}.bin", data)] = sha(data)
        big = os.urandom(24 * MIB)
        with half_sent(port, "big.bin", big, 16 * MIB):
            wait_for("the server to write the cut-off upload", writing)
            kill_9(server)
        port = free_port()
        server = start_server(port, config, log)
        data = os.urandom(7 * MIB)
        stored[upload(port, "after.bin", data)] = sha(data)
        if backend == "local":
            # The crash left nothing (an unnamed file dies with its process), or, where the
            # file system makes no unnamed files, a hidden temp file: never served or listed.
            for temp in temp_files(store):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", f"/uploads/{temp.relative_to(store).as_posix()}")
                assert connection.getresponse().status == 404
                connection.close()
    finally:
        if server.poll() is None:
            stop_server(server)
    # Only whole files, each the one a 2xx answered for: the cut-off upload is nowhere.
    assert Target(config, client).hashes() == stored


def test_kill_9_mid_background_delivery_delivers_each_upload_once(
    s3_server: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    client = s3_client(s3_server)
    stored: dict[str, str] = {}
    log = tmp_path / "server.log"
    with fault_proxy(s3_server.endpoint) as proxy:
        config = s3_config(
            s3_server,
            bucket,
            STORE_PATH="media",
            STORE_S3_ENDPOINT_URL=proxy.endpoint,
            STORE_BACKGROUND=True,
            STORE_SPOOL_PATH=str(spool),
            STORE_BACKGROUND_BACKOFF=0.05,
            STORE_BACKGROUND_MAX_BACKOFF=0.2,
            **SMALL_PARTS,
        )
        # Deliveries crawl: each write waits a second in the proxy, so some are in flight (and
        # some done) when the server dies.
        proxy.delay = (lambda r: r.method in ("PUT", "POST"), 1.0)
        port = free_port()
        server = start_server(port, config, log)
        try:
            for i, size in enumerate((4096, 100_000, 1 * MIB, 12 * MIB, 12 * MIB, 3 * MIB)):
                data = os.urandom(size)
                stored[upload(port, f"file{i}.bin", data)] = sha(data)
            with half_sent(port, "cut.bin", os.urandom(8 * MIB), 4 * MIB):
                wait_for(
                    "the spooling of the cut-off upload",
                    lambda: any(p.name.startswith(".tmp-") for p in spool.iterdir()),
                )

                def writes() -> list[Recorded]:
                    return [r for r in proxy.requests if r.method in ("PUT", "POST")]

                wait_for("deliveries to start", lambda: len(writes()) >= 3)
                time.sleep(1.2)
                kill_9(server)
            # Whatever reached the bucket before the crash is whole, and one of the 2xx uploads.
            before = Target(config, client).hashes()
            assert all(stored.get(path) == digest for path, digest in before.items()), before
            proxy.clear()
            port = free_port()
            server = start_server(port, config, log)
            wait_for("the spool to empty", lambda: not spooled_jobs(config), timeout=60)
            # The cut-off upload's name reservation outlived it; once stale, a start sweeps it.
            assert len(os.listdir(spool / "names")) == 1
            stop_server(server)
            for name in os.listdir(spool / "names"):
                os.utime(spool / "names" / name, (time.time() - 7200,) * 2, follow_symlinks=False)
            server = start_server(port, config, log)
            wait_for("the sweep", lambda: not os.listdir(spool / "names"))
        finally:
            if server.poll() is None:
                stop_server(server)
    # Every 2xx upload delivered, once (no second copy under another name), nothing else.
    assert Target(config, client).hashes() == stored
    assert spooled_jobs(config) == []
