"""The tus endpoint (async_store.tus) against real servers: the real tuspy client for whole
uploads and resumes, raw HTTP (httpx, sockets) for the protocol's details.

Servers run in this process (hypercorn for Quart, werkzeug's threaded server for Flask), except
where a worker is killed or two workers share the uploads: there each worker is a process of its
own (``tests.servers.server_process``) made by the factories at the end of this file.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import flask
import httpx
import pytest
import quart
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from async_store import Store
from async_store.tus import remove_expired, tus_blueprint
from tests.conftest import make_app, s3_client, s3_config
from tests.seaweed import SeaweedFS
from tests.servers import real_server, server_process

V = {"Tus-Resumable": "1.0.0"}
MIB = 1024 * 1024


@pytest.fixture(params=["quart", "flask"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Clock:
    """The endpoint's time: moved by the test, never waited for."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Endpoint:
    url: str
    app: Any
    store: Store[Any]
    tus_path: Path
    clock: Clock
    completed: list[tuple[Any, dict[str, str]]] = field(default_factory=list)

    def upload_url(self, location: str) -> str:
        return httpx.URL(self.url).join(location).__str__()


@asynccontextmanager
async def serving(
    kind: str,
    tmp_path: Path,
    port: int,
    *,
    config: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[Endpoint]:
    """A Quart or Flask app with a tus endpoint at /files/, served on 127.0.0.1."""
    # Set up as an app factory would, before serving: in a thread, where it may block.
    endpoint = await anyio.to_thread.run_sync(lambda: tus_app(kind, tmp_path, config, options))
    app, store = endpoint.app, endpoint.store
    try:
        async with real_server(app, port) as bound:
            endpoint.url = f"http://127.0.0.1:{bound}/files/"
            yield endpoint
    finally:
        store.close()


def tus_app(
    kind: str, tmp_path: Path, config: dict[str, Any] | None, options: dict[str, Any]
) -> Endpoint:
    settings = {"STORE_TUS_PATH": str(tmp_path / "tus"), **(config or {})}
    tus_path = Path(settings["STORE_TUS_PATH"])
    app = make_app(kind, tmp_path / "store", **settings)
    store: Store[Any] = Store(app)
    clock = Clock()
    endpoint = Endpoint("", app, store, tus_path, clock)

    def on_complete(provider: Any, metadata: dict[str, str]) -> None:
        endpoint.completed.append((provider, metadata))

    options.setdefault("on_complete", on_complete)
    app.register_blueprint(tus_blueprint(store, clock=clock, **options))
    return endpoint


def source_file(tmp_path: Path, size: int, name: str = "source.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def tuspy_upload(url: str, path: Path, **options: Any) -> Any:
    """A whole upload by tuspy (blocking: run it in a thread); its uploader."""
    headers = options.pop("headers", None)
    # A stream of ours: given a path, tuspy opens the file for each chunk and never closes it.
    with open(path, "rb") as stream:
        uploader = tus_client.TusClient(url, headers=headers).uploader(
            file_stream=stream, **options
        )
        uploader.upload()
    return uploader


def uploads(endpoint: Endpoint) -> list[str]:
    """The uploads waiting in the endpoint's folder."""
    tus = endpoint.tus_path
    return sorted(p.name for p in tus.iterdir()) if tus.exists() else []


def stored_bytes(endpoint: Endpoint, relative_path: str) -> bytes:
    return (Path(endpoint.app.config["STORE_PATH"]) / relative_path).read_bytes()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def checksum(name: str, data: bytes) -> str:
    return f"{name} {base64.b64encode(hashlib.new(name, data).digest()).decode()}"


async def create(http: httpx.AsyncClient, endpoint: Endpoint, length: int, **headers: str) -> str:
    answer = await http.post(endpoint.url, headers={**V, "Upload-Length": str(length), **headers})
    assert answer.status_code == 201, answer.text
    return endpoint.upload_url(answer.headers["Location"])


async def patch(
    http: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await http.patch(
        url,
        content=data,
        headers={
            **V,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            **headers,
        },
    )


# --- whole uploads with tuspy ---------------------------------------------------------------------


async def test_tuspy_uploads_a_file_in_chunks(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    path, data = source_file(tmp_path, 3 * MIB + 17)
    async with serving(kind, tmp_path, free_tcp_port) as endpoint:
        uploader = await anyio.to_thread.run_sync(
            lambda: tuspy_upload(
                endpoint.url,
                path,
                chunk_size=256 * 1024,
                metadata={"filename": "Report (final).bin", "filetype": "text/plain"},
                upload_checksum=True,  # sha1, tuspy's
            )
        )
        last = uploader.request.response_headers
        assert last["upload-offset"] == str(len(data))
        assert last["upload-stored-path"] == "Report_%28final%29.bin"
        [(provider, metadata)] = endpoint.completed
        assert provider.relative_path == "Report_(final).bin"
        assert metadata == {"filename": "Report (final).bin", "filetype": "text/plain"}
        assert provider.size == len(data)
        assert provider.sha256 == hashlib.sha256(data).hexdigest()
        assert stored_bytes(endpoint, provider.relative_path) == data
        # The upload is finished: HEAD says so, and where the file went.
        async with httpx.AsyncClient() as http:
            head = await http.head(uploader.url, headers=V)
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
        assert head.headers["Upload-Stored-Path"] == "Report_%28final%29.bin"
        assert head.headers["Cache-Control"] == "no-store"
        assert not (endpoint.tus_path / uploader.url.rsplit("/", 1)[1] / "data").exists()

        # The same name again is never overwritten: the second file gets a name of its own.
        again = await anyio.to_thread.run_sync(
            lambda: tuspy_upload(
                endpoint.url, path, chunk_size=MIB, metadata={"filename": "Report (final).bin"}
            )
        )
        second = endpoint.completed[1][0]
        assert second.relative_path != provider.relative_path
        assert second.relative_path.startswith("Report_(final)_")
        assert again.request.response_headers["upload-stored-path"].startswith("Report_")
        assert stored_bytes(endpoint, second.relative_path) == data
        assert stored_bytes(endpoint, provider.relative_path) == data
    if kind == "flask":  # the hook gets what the app's own views get: the sync shim
        assert type(provider).__name__.startswith("Sync")


async def test_tuspy_uploads_into_s3(
    kind: str, tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    path, data = source_file(tmp_path, 2 * MIB + 3)
    config = s3_config(s3_server, bucket, STORE_PATH="media")
    async with serving(kind, tmp_path, free_tcp_port, config=config, location="tus") as endpoint:
        uploader = await anyio.to_thread.run_sync(
            lambda: tuspy_upload(
                endpoint.url, path, chunk_size=512 * 1024, metadata={"filename": "data.bin"}
            )
        )
        [(provider, _)] = endpoint.completed
    assert provider.relative_path == "tus/data.bin"
    assert uploader.request.response_headers["upload-stored-path"] == "tus/data.bin"
    assert "media/tus/data.bin" in uploader.request.response_headers["upload-stored-url"]
    s3 = s3_client(s3_server)
    try:
        body = s3.get_object(Bucket=bucket, Key="media/tus/data.bin")["Body"].read()
        s3.delete_object(Bucket=bucket, Key="media/tus/data.bin")
    finally:
        s3.close()
    assert body == data


async def test_an_empty_file_and_creation_with_upload(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    async with serving(kind, tmp_path, free_tcp_port) as endpoint, httpx.AsyncClient() as http:
        empty = await http.post(
            endpoint.url, headers={**V, "Upload-Length": "0", "Upload-Metadata": "filename"}
        )
        assert empty.status_code == 201
        assert empty.headers["Upload-Offset"] == "0"
        assert empty.headers["Upload-Stored-Path"] == "upload"
        assert stored_bytes(endpoint, "upload") == b""

        both = await http.post(
            endpoint.url,
            content=b"hello",
            headers={
                **V,
                "Upload-Length": "11",
                "Upload-Metadata": f"filename {b64('hello.txt')}",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert both.status_code == 201
        assert both.headers["Upload-Offset"] == "5"
        url = endpoint.upload_url(both.headers["Location"])
        rest = await patch(http, url, 5, b" world")
        assert rest.status_code == 204
        assert rest.headers["Upload-Stored-Path"] == "hello.txt"
    assert stored_bytes(endpoint, "hello.txt") == b"hello world"
    assert [m for _, m in endpoint.completed] == [{"filename": ""}, {"filename": "hello.txt"}]


# --- publishing on local disk -------------------------------------------------------------------


async def finish_in_two(
    http: httpx.AsyncClient, endpoint: Endpoint, data: bytes, name: str
) -> tuple[int, Path, httpx.Response]:
    """An upload sent in two PATCHes: (the inode of its data while it waits, its folder, the
    last answer)."""
    metadata = f"filename {b64(name)}"
    before = set(uploads(endpoint))
    url = await create(http, endpoint, len(data), **{"Upload-Metadata": metadata})
    half = len(data) // 2
    assert (await patch(http, url, 0, data[:half])).status_code == 204
    (waiting,) = set(uploads(endpoint)) - before
    folder = endpoint.tus_path / waiting
    return (folder / "data").stat().st_ino, folder, await patch(http, url, half, data[half:])


async def test_a_finished_upload_on_local_disk_becomes_the_file_without_a_copy(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    """The upload's data is linked in under its name: a 1 GiB upload is published at once, not
    copied, yet checked, hashed and served like any saved file."""
    data = os.urandom(3 * 1024 * 1024 + 7)
    async with serving(kind, tmp_path, free_tcp_port) as endpoint, httpx.AsyncClient() as http:
        inode, folder, done = await finish_in_two(http, endpoint, data, "dataset.bin")
        assert done.status_code == 204 and done.headers["Upload-Stored-Path"] == "dataset.bin"
        ((provider, _),) = endpoint.completed
        stored = Path(endpoint.app.config["STORE_PATH"]) / "dataset.bin"
        assert stored.stat().st_ino == inode  # the same file: nothing was copied
        assert stored.stat().st_mode & 0o777 == 0o644  # readable by a web server
        assert stored.read_bytes() == data
        assert (provider.size, provider.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        # Its folder keeps only the record of where it went (for HEAD), not a name for the file.
        assert not (folder / "data").exists()
        # A second upload of the name: a collision name, never over the first.
        _, _, again = await finish_in_two(http, endpoint, b"other bytes", "dataset.bin")
        assert again.headers["Upload-Stored-Path"] != "dataset.bin"
    assert stored.read_bytes() == data


async def test_an_upload_waiting_on_another_file_system_is_copied_in(
    kind: str, tmp_path: Path, free_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STORE_TUS_PATH on another file system than STORE_PATH: a hard link from the upload's
    folder fails with EXDEV (made to here, so the test needs no second file system), and the
    finished upload is copied to its name instead, whole or not at all."""
    tus_folder = str(tmp_path / "tus")
    real_link = os.link

    def cross_device(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(src).startswith(tus_folder):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", cross_device)
    data = os.urandom(2 * 1024 * 1024 + 3)
    async with serving(kind, tmp_path, free_tcp_port) as endpoint:
        async with httpx.AsyncClient() as http:
            inode, folder, done = await finish_in_two(http, endpoint, data, "far.bin")
        assert done.status_code == 204
        stored = Path(endpoint.app.config["STORE_PATH"]) / "far.bin"
        assert stored.read_bytes() == data and stored.stat().st_mode & 0o777 == 0o644
        assert stored.stat().st_ino != inode  # a copy: the link was refused
        assert [p.name for p in stored.parent.iterdir()] == ["far.bin"]  # no temp file left
        assert not (folder / "data").exists()


async def test_a_write_failing_mid_patch_keeps_only_the_bytes_before_it(
    kind: str, tmp_path: Path, free_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up during a PATCH's second batch (a worker thread writes one batch
    while the next arrives): the offset counts the batches written whole, nothing of the
    request goes after the gap, and the client resumes from the offset to a whole file."""
    from async_store.tus import _state

    real_open = _state.Held.open_data
    failed_once = False

    class FillingDisk:
        """The data file, whose disk fills up half way through the upload (once)."""

        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, chunk: bytes) -> int:
            nonlocal failed_once
            if not failed_once and self._f.tell() + len(chunk) > 2 * 1024 * 1024:
                failed_once = True
                self._f.write(chunk[: len(chunk) // 2])  # a short write, then the error
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(self._f.write(chunk))

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc_info: object) -> None:
            self._f.close()

    def open_data(held: Any) -> None:
        real_open(held)
        held._data = FillingDisk(held._data)

    monkeypatch.setattr(_state.Held, "open_data", open_data)
    data = os.urandom(5 * 1024 * 1024 + 11)
    async with serving(kind, tmp_path, free_tcp_port) as endpoint, httpx.AsyncClient() as http:
        url = await create(
            http, endpoint, len(data), **{"Upload-Metadata": f"filename {b64('d.bin')}"}
        )
        failed = await patch(http, url, 0, data)
        assert failed.status_code >= 500
        offset = int((await http.head(url, headers=V)).headers["Upload-Offset"])
        (waiting,) = uploads(endpoint)
        assert 0 < offset < len(data)
        assert (endpoint.tus_path / waiting / "data").read_bytes() == data[:offset]
        done = await patch(http, url, offset, data[offset:])
        assert done.status_code == 204, done.text
        assert stored_bytes(endpoint, done.headers["Upload-Stored-Path"]) == data


# --- a server killed mid-upload -------------------------------------------------------------------


def test_tuspy_resumes_after_the_server_is_killed_mid_upload(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    path, data = source_file(tmp_path, 4 * MIB + 5)
    env = {
        "STORE_PATH": str(tmp_path / "store"),
        "STORE_TUS_PATH": str(tmp_path / "tus"),
        "STORE_CHUNK_SIZE": str(64 * 1024),
    }
    url = f"http://127.0.0.1:{free_tcp_port}/files/"
    target = f"tests.test_tus:{kind}_worker"
    sent = 0
    stream = open(path, "rb")
    with stream, server_process(target, kind, free_tcp_port, env) as server:
        first = tus_client.TusClient(url).uploader(file_stream=stream, chunk_size=512 * 1024)
        first.upload(stop_at=MIB)
        sent += first.offset
        assert first.offset == MIB
        assert first.url is not None
        # The next PATCH is on its way, half of it sent and some written, when the worker dies.
        head = (
            f"PATCH {httpx.URL(first.url).path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {MIB}\r\n"
            f"Content-Type: application/offset+octet-stream\r\nContent-Length: {MIB}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", free_tcp_port)) as sock:
            sock.sendall(head + data[MIB : MIB + MIB // 2])
            sent += MIB // 2
            written = tmp_path / "tus" / first.url.rsplit("/", 1)[1] / "data"
            deadline = time.monotonic() + 20
            while written.stat().st_size < MIB + 128 * 1024 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.process.kill()
            server.process.wait(10)
    with open(path, "rb") as stream, server_process(target, kind, free_tcp_port, env):
        resumed = tus_client.TusClient(url).uploader(
            file_stream=stream, url=first.url, chunk_size=512 * 1024
        )
        offset = resumed.offset  # what the new worker says arrived (tuspy asked with HEAD)
        assert MIB <= offset <= MIB + MIB // 2  # nothing acknowledged is lost
        resumed.upload()
        sent += len(data) - offset
        assert resumed.request is not None
        stored = resumed.request.response_headers["upload-stored-path"]
    assert sent < 2 * len(data)
    assert (tmp_path / "store" / stored).read_bytes() == data


# --- the protocol's rules -------------------------------------------------------------------------


async def test_options_and_the_protocol_version(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    async with (
        serving(kind, tmp_path, free_tcp_port, max_size=5 * MIB) as endpoint,
        httpx.AsyncClient() as http,
    ):
        options = await http.options(endpoint.url)
        assert options.status_code == 204
        assert options.headers["Tus-Version"] == "1.0.0"
        assert options.headers["Tus-Max-Size"] == str(5 * MIB)
        extensions = options.headers["Tus-Extension"].split(",")
        assert {"creation", "termination", "expiration", "checksum"} <= set(extensions)
        assert {"sha1", "sha256"} <= set(options.headers["Tus-Checksum-Algorithm"].split(","))
        for version in ({}, {"Tus-Resumable": "0.2.2"}):
            refused = await http.post(endpoint.url, headers={**version, "Upload-Length": "3"})
            assert refused.status_code == 412
            assert refused.headers["Tus-Version"] == "1.0.0"
        assert uploads(endpoint) == []
        url = await create(http, endpoint, 3)
        not_offset_type = await http.patch(
            url, content=b"abc", headers={**V, "Upload-Offset": "0", "Content-Type": "text/plain"}
        )
        assert not_offset_type.status_code == 415
        unknown = await http.head(url.rsplit("/", 1)[0] + "/" + "0" * 32, headers=V)
        assert unknown.status_code == 404
        assert "Upload-Offset" not in unknown.headers
        assert (await http.head(endpoint.url + "..%2Fstore", headers=V)).status_code == 404
        bad_metadata = await http.post(
            endpoint.url, headers={**V, "Upload-Length": "3", "Upload-Metadata": "a b c"}
        )
        assert bad_metadata.status_code == 400


async def test_an_offset_that_is_not_the_uploads_is_a_409(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    async with serving(kind, tmp_path, free_tcp_port) as endpoint, httpx.AsyncClient() as http:
        url = await create(http, endpoint, 10)
        ahead = await patch(http, url, 4, b"4567")
        assert ahead.status_code == 409
        assert ahead.headers["Upload-Offset"] == "0"
        assert (await patch(http, url, 0, b"0123")).headers["Upload-Offset"] == "4"
        behind = await patch(http, url, 0, b"0123")  # a chunk sent again is not appended again
        assert behind.status_code == 409
        assert behind.headers["Upload-Offset"] == "4"
        done = await patch(http, url, 4, b"456789")
        assert done.status_code == 204
    assert stored_bytes(endpoint, "upload") == b"0123456789"


async def test_a_checksum_mismatch_is_a_460_and_the_chunk_is_discarded(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    chunk = os.urandom(100_000)
    async with serving(kind, tmp_path, free_tcp_port) as endpoint, httpx.AsyncClient() as http:
        url = await create(http, endpoint, 300_000)
        wrong = await patch(http, url, 0, chunk, **{"Upload-Checksum": checksum("sha256", b"x")})
        assert wrong.status_code == 460
        head = await http.head(url, headers=V)
        assert head.headers["Upload-Offset"] == "0"
        for offset, name in ((0, "sha1"), (100_000, "sha256")):
            good = await patch(
                http, url, offset, chunk, **{"Upload-Checksum": checksum(name, chunk)}
            )
            assert good.status_code == 204, good.text
        unknown = await patch(http, url, 200_000, chunk, **{"Upload-Checksum": "crc99 AAAA"})
        assert unknown.status_code == 400
        assert (await http.head(url, headers=V)).headers["Upload-Offset"] == "200000"
        last = await patch(http, url, 200_000, chunk, **{"Upload-Checksum": checksum("md5", chunk)})
        assert last.status_code == 204
    assert stored_bytes(endpoint, "upload") == chunk * 3


async def test_an_expired_upload_is_gone_and_cleaned_up(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    async with (
        serving(kind, tmp_path, free_tcp_port, expires=3600) as endpoint,
        httpx.AsyncClient() as http,
    ):
        stale = await create(http, endpoint, 10)
        answer = await patch(http, stale, 0, b"01234")
        assert answer.headers["Upload-Expires"]  # each PATCH says until when it waits
        endpoint.clock.now += 1800
        kept = await create(http, endpoint, 10)  # 30 minutes younger
        endpoint.clock.now += 1801  # the first one's hour is up
        gone = await http.head(stale, headers=V)
        assert gone.status_code == 410
        assert not (endpoint.tus_path / stale.rsplit("/", 1)[1]).exists()  # removed on access
        assert (await patch(http, stale, 5, b"56789")).status_code == 404
        assert (await http.head(kept, headers=V)).status_code == 200

        # The cleanup function finds the ones nobody asks about again.
        forgotten = await create(http, endpoint, 10)
        ids = {u.rsplit("/", 1)[1] for u in (kept, forgotten)}
        later, tus = endpoint.clock.now + 1900, endpoint.tus_path
        removed = await anyio.to_thread.run_sync(lambda: remove_expired(tus, now=later))
        assert removed == [kept.rsplit("/", 1)[1]]
        assert set(uploads(endpoint)) == ids - {kept.rsplit("/", 1)[1]}
        removed = await anyio.to_thread.run_sync(lambda: remove_expired(tus, now=later + 3600))
        assert set(removed) == ids - {kept.rsplit("/", 1)[1]}
        assert uploads(endpoint) == []


async def test_termination(kind: str, tmp_path: Path, free_tcp_port: int) -> None:
    async with serving(kind, tmp_path, free_tcp_port) as endpoint, httpx.AsyncClient() as http:
        url = await create(http, endpoint, 10)
        await patch(http, url, 0, b"01234")
        deleted = await http.delete(url, headers=V)
        assert deleted.status_code == 204
        assert (await http.head(url, headers=V)).status_code == 404
        assert (await patch(http, url, 5, b"56789")).status_code == 404
        assert (await http.delete(url, headers=V)).status_code == 404
        assert uploads(endpoint) == []
        # A client that cannot send DELETE overrides a POST.
        other = await create(http, endpoint, 10)
        override = await http.post(other, headers={**V, "X-HTTP-Method-Override": "DELETE"})
        assert override.status_code == 204
    assert endpoint.completed == []


async def test_the_size_limit_is_a_413(kind: str, tmp_path: Path, free_tcp_port: int) -> None:
    async with (
        serving(kind, tmp_path, free_tcp_port, max_size=1000) as endpoint,
        httpx.AsyncClient() as http,
    ):
        over = await http.post(endpoint.url, headers={**V, "Upload-Length": "1001"})
        assert over.status_code == 413
        assert uploads(endpoint) == []
        url = await create(http, endpoint, 1000)
        # A body longer than what the upload has left is refused whole.
        assert (await patch(http, url, 0, b"x" * 1001)).status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(11):
                yield b"y" * 100

        streamed = await http.patch(
            url,
            content=chunked(),
            headers={**V, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert streamed.status_code == 413
        assert (await http.head(url, headers=V)).headers["Upload-Offset"] == "0"
        assert (await patch(http, url, 0, b"z" * 1000)).status_code == 204
    assert stored_bytes(endpoint, "upload") == b"z" * 1000


async def test_a_patch_over_max_content_length_is_taken(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    """The app's MAX_CONTENT_LENGTH (1 MiB here) is for its forms, not for the endpoint: a
    client may send the whole file in one PATCH (tus-js-client's default)."""
    path, data = source_file(tmp_path, 3 * MIB)
    config = {"MAX_CONTENT_LENGTH": MIB}
    async with serving(kind, tmp_path, free_tcp_port, config=config) as endpoint:
        await anyio.to_thread.run_sync(lambda: tuspy_upload(endpoint.url, path))
        [(provider, _)] = endpoint.completed
        assert stored_bytes(endpoint, provider.relative_path) == data


async def test_the_authorize_hook_decides(kind: str, tmp_path: Path, free_tcp_port: int) -> None:
    path, data = source_file(tmp_path, 1000)
    seen: list[str] = []

    def authorize(request: Any) -> bool:
        seen.append(request.method)
        return bool(request.headers.get("Authorization") == "Bearer let-me")

    async with serving(kind, tmp_path, free_tcp_port, authorize=authorize) as endpoint:
        with pytest.raises(TusCommunicationError) as refused:
            await anyio.to_thread.run_sync(lambda: tuspy_upload(endpoint.url, path))
        assert refused.value.status_code == 403
        assert uploads(endpoint) == []
        headers = {"Authorization": "Bearer let-me"}
        await anyio.to_thread.run_sync(
            lambda: tuspy_upload(endpoint.url, path, headers=headers, chunk_size=400)
        )
        [(provider, _)] = endpoint.completed
        assert stored_bytes(endpoint, provider.relative_path) == data
        async with httpx.AsyncClient() as http:
            assert (await http.options(endpoint.url)).status_code == 204  # discovery is open
    assert seen == ["POST", "POST", "PATCH", "PATCH", "PATCH"]


async def test_an_async_authorize_hook_and_on_complete(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    done: list[str] = []

    async def authorize(request: Any) -> bool:
        await anyio.sleep(0)
        return bool(request.headers.get("X-Token") == "t")

    async def on_complete(provider: Any, metadata: dict[str, str]) -> None:
        await anyio.sleep(0)
        done.append(f"{provider.relative_path} {metadata['filename']}")

    options: dict[str, Any] = {"authorize": authorize, "on_complete": on_complete}
    async with serving(kind, tmp_path, free_tcp_port, **options) as endpoint:
        async with httpx.AsyncClient() as http:
            assert (
                await http.post(endpoint.url, headers={**V, "Upload-Length": "1"})
            ).status_code == 403
            url = await create(
                http, endpoint, 2, **{"X-Token": "t", "Upload-Metadata": f"filename {b64('a.txt')}"}
            )
            assert (await patch(http, url, 0, b"ab", **{"X-Token": "t"})).status_code == 204
    assert done == ["a.txt a.txt"]


# --- dropped connections and racing requests ------------------------------------------------------


@contextmanager
def half_sent_patch(
    port: int, path: str, offset: int, length: int, part: bytes, **headers: str
) -> Iterator[None]:
    """A PATCH announcing ``length`` bytes that sends ``part``; it hangs up on leaving."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + part)
        yield


async def bytes_on_disk(endpoint: Endpoint, url: str, at_least: int) -> None:
    """Wait until the server has written ``at_least`` bytes of the upload (it holds the lock)."""
    data = endpoint.tus_path / url.rsplit("/", 1)[1] / "data"
    with anyio.fail_after(20):
        while data.stat().st_size < at_least:
            await anyio.sleep(0.01)


@pytest.mark.parametrize("with_checksum", [False, True])
async def test_a_dropped_connection_keeps_what_arrived_unless_checksummed(
    kind: str, tmp_path: Path, free_tcp_port: int, with_checksum: bool
) -> None:
    data = os.urandom(300_000)
    config = {"STORE_CHUNK_SIZE": 64 * 1024}
    async with (
        serving(kind, tmp_path, free_tcp_port, config=config) as endpoint,
        httpx.AsyncClient(timeout=30) as http,
    ):
        url = await create(http, endpoint, len(data))
        port, upload_path = httpx.URL(url).port, httpx.URL(url).path
        assert port is not None
        headers = {"Upload-Checksum": checksum("sha1", data[:200_000])} if with_checksum else {}
        with half_sent_patch(port, upload_path, 0, 200_000, data[:150_000], **headers):
            await bytes_on_disk(endpoint, url, 64 * 1024)
        # An empty PATCH waits for the lock the broken one holds until the server notices.
        probe = await patch(http, url, 0, b"")
        offset = int(probe.headers["Upload-Offset"])
        if with_checksum:
            assert probe.status_code == 204
            assert offset == 0  # all or nothing
        else:
            assert probe.status_code == 409
            assert offset == 150_000  # every byte that arrived
        assert (await patch(http, url, offset, data[offset:])).status_code == 204
    [(provider, _)] = endpoint.completed
    assert stored_bytes(endpoint, provider.relative_path) == data


async def test_two_patches_racing_for_one_upload(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    """Two clients PATCH the same offset at once: one wins, the other is told the offset moved
    (409) or that the upload is busy (423); the file is the winner's, never a mix."""
    size = 2 * MIB
    bodies = [b"a" * size, b"b" * size]
    config = {"STORE_CHUNK_SIZE": 64 * 1024}
    async with serving(kind, tmp_path, free_tcp_port, config=config) as endpoint:
        async with httpx.AsyncClient() as http:
            url = await create(http, endpoint, size)
        results = race(url, bodies)
        await anyio.to_thread.run_sync(results.wait)
        statuses = sorted(results.statuses)
        assert statuses[0] == 204 and statuses[1] in (409, 423), statuses
        winner = bodies[results.statuses.index(204)]
        [(provider, _)] = endpoint.completed
        assert stored_bytes(endpoint, provider.relative_path) == winner


@dataclass
class Race:
    threads: list[threading.Thread]
    statuses: list[int]

    def wait(self) -> None:
        for thread in self.threads:
            thread.join(30)


def race(urls: str | list[str], bodies: list[bytes]) -> Race:
    """PATCH each body at offset 0 from a thread of its own, both slowly (in 64 KiB pieces),
    the second starting once the first has sent its first piece."""
    targets = [urls] * len(bodies) if isinstance(urls, str) else urls
    statuses = [0] * len(bodies)
    started = threading.Event()

    def send(i: int) -> None:
        if i:
            started.wait(10)

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(bodies[i]), 64 * 1024):
                yield bodies[i][start : start + 64 * 1024]
                started.set()

        with httpx.Client(timeout=30) as http:
            answer = http.patch(
                targets[i],
                content=pieces(),
                headers={
                    **V,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(len(bodies[i])),
                },
            )
        statuses[i] = answer.status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    return Race(threads, statuses)


def test_two_worker_processes_share_the_uploads(
    tmp_path: Path, free_tcp_port_factory: Callable[[], int]
) -> None:
    """Any worker may take any request: chunks alternate between two processes, and two
    PATCHes racing on the two workers never both land."""
    env = {
        "STORE_PATH": str(tmp_path / "store"),
        "STORE_TUS_PATH": str(tmp_path / "tus"),
        "STORE_CHUNK_SIZE": str(64 * 1024),
    }
    ports = [free_tcp_port_factory(), free_tcp_port_factory()]
    data = os.urandom(MIB)
    with workers(ports, env) as bases:
        with httpx.Client() as http:
            created = http.post(bases[0], headers={**V, "Upload-Length": str(len(data))})
            path = created.headers["Location"]
            urls = [httpx.URL(base).join(path).__str__() for base in bases]
            for i, offset in enumerate(range(0, len(data), 256 * 1024)):
                answer = http.patch(
                    urls[i % 2],
                    content=data[offset : offset + 256 * 1024],
                    headers={
                        **V,
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                assert answer.status_code == 204, answer.text
            stored = answer.headers["Upload-Stored-Path"]
            assert (tmp_path / "store" / stored).read_bytes() == data

            second = http.post(bases[1], headers={**V, "Upload-Length": str(2 * MIB)})
            path = second.headers["Location"]
            urls = [httpx.URL(base).join(path).__str__() for base in bases]
        bodies = [b"a" * 2 * MIB, b"b" * 2 * MIB]
        results = race(urls, bodies)
        results.wait()
        statuses = sorted(results.statuses)
        assert statuses[0] == 204 and statuses[1] in (409, 423), statuses
        winner = bodies[results.statuses.index(204)]
        with httpx.Client() as http:
            head = http.head(urls[0], headers=V)
        assert (tmp_path / "store" / head.headers["Upload-Stored-Path"]).read_bytes() == winner


@contextmanager
def workers(ports: list[int], env: dict[str, str]) -> Iterator[list[str]]:
    with server_process("tests.test_tus:quart_worker", "quart", ports[0], env):
        with server_process("tests.test_tus:flask_worker", "flask", ports[1], env):
            yield [f"http://127.0.0.1:{port}/files/" for port in ports]


# --- the workers of the process tests (tests.servers.server_process imports them) -----------------


def _worker(kind: str) -> Any:
    app = make_app(kind, None)
    for key in ("STORE_PATH", "STORE_TUS_PATH", "STORE_CHUNK_SIZE"):
        if key in os.environ:
            app.config[key] = os.environ[key]
    store: Store[Any] = Store(app)
    app.register_blueprint(tus_blueprint(store))
    return app


def quart_worker() -> quart.Quart:
    app: quart.Quart = _worker("quart")
    return app


def flask_worker() -> flask.Flask:
    app: flask.Flask = _worker("flask")
    return app
