"""save_request: multipart bodies parsed as they arrive, each file streamed into the store.

Every test runs for Quart, a classic Flask view (the sync shim) and a Flask ``async def`` view,
on local disk and on S3 (a real SeaweedFS). What is stored is read behind the library's back
(``inventory``), including what must *not* be there after a refused request.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import flask
import pytest
import quart

from async_store import BadUploadError, Store, StoreError, UploadTooLargeError

from .conftest import Inventory, make_app, s3_config
from .helpers import BOUNDARY, being_written, multipart, upload_scope


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["quart", "flask", "flask-async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Client:
    """Posts a body to ``/up`` of an app whose view calls save_request with ``options``."""

    def __init__(self, kind: str, app: Any, store: Store) -> None:
        self.kind = kind
        self.app = app
        self.options: dict[str, Any] = {}

        def report(stored: Any) -> dict[str, Any]:
            return {
                "files": {
                    name: [p.relative_path for p in stored.files.getlist(name)]
                    for name in stored.files
                },
                "form": stored.form.to_dict(flat=False),
                "sync": type(next(iter(stored.files.values()), None)).__name__,
                "sizes": stored.sizes,
                "sha256": {p.relative_path: p.sha256 for _, p in stored.files.items(multi=True)},
            }

        if kind == "quart":
            assert isinstance(app, quart.Quart)

            @app.post("/up")
            async def up_quart() -> Any:
                return report(await store.save_request(**self.options))

        elif kind == "flask":
            assert isinstance(app, flask.Flask)

            @app.post("/up")
            def up_flask() -> Any:
                return report(store.save_request(**self.options))

        else:
            assert isinstance(app, flask.Flask)

            @app.post("/up")
            async def up_flask_async() -> Any:
                return report(await store.AsyncProvider.save_request(**self.options))

    async def post(
        self, body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}"
    ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if self.kind == "quart":
            response = await self.app.test_client().post("/up", data=body, headers=headers)
            text = await response.get_data(as_text=True)
            return response.status_code, _json_or_text(text)

        # Flask views run in this thread: outside the test's event loop, as under a real server.
        def post() -> tuple[int, Any]:
            response = self.app.test_client().post("/up", data=body, headers=headers)
            return response.status_code, _json_or_text(response.get_data(as_text=True))

        return await anyio.to_thread.run_sync(post)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return html.unescape(text)  # the framework's HTML error page


@pytest.fixture
def client(kind: str, backend: str, store_path: Path, request: pytest.FixtureRequest) -> Any:
    framework = "quart" if kind == "quart" else "flask"
    if backend == "s3":
        config = s3_config(
            request.getfixturevalue("s3_server"),
            request.getfixturevalue("bucket"),
            STORE_PATH="media",
        )
        app = make_app(framework, None, **config)
    else:
        app = make_app(framework, store_path)
    store = Store(app)
    yield Client(kind, app, store)
    store.close()


async def test_stores_every_file_and_collects_the_text_fields(
    client: Client, inventory: Inventory
) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)  # several body chunks and provider chunks
    body = multipart(
        ("caption", None, "Ünïcode caption".encode()),
        ("docs", "report.pdf", b"%PDF-1.7 first"),
        ("docs", "report.pdf", big),
        ("avatar", "me.png", b"\x89PNG"),
        ("tags", None, b"a"),
        ("tags", None, b"b"),
    )
    status, result = await client.post(body)
    assert status == 200, result
    docs = result["files"]["docs"]
    assert docs[0] == "report.pdf"
    assert docs[1] != "report.pdf" and docs[1].startswith("report_")  # the collision form
    assert result["files"]["avatar"] == ["me.png"]
    assert result["form"] == {"caption": ["Ünïcode caption"], "tags": ["a", "b"]}
    assert inventory.files() == {
        "report.pdf": b"%PDF-1.7 first",
        docs[1]: big,
        "me.png": b"\x89PNG",
    }
    assert inventory.leftovers() == []
    # Each file's size, counted as it streamed.
    assert result["sizes"] == {"report.pdf": 14, docs[1]: len(big), "me.png": 4}
    # The Flask view got sync providers, the async views async ones.
    expected = "SyncLocalProvider" if client.kind == "flask" else "LocalProvider"
    if inventory.backend == "s3":
        expected = expected.replace("Local", "S3")
    assert result["sync"] == expected


async def test_each_files_checksum_is_taken_as_it_streams_in(client: Client) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    body = multipart(("docs", "a.bin", b"small"), ("docs", "b.bin", big), ("note", None, b"hi"))
    status, result = await client.post(body)
    assert status == 200, result
    assert result["sha256"] == {"a.bin": None, "b.bin": None}  # only when asked for
    client.options = {"checksum": True}
    status, result = await client.post(body)
    assert status == 200, result
    first, second = result["files"]["docs"]
    assert result["sha256"] == {
        first: hashlib.sha256(b"small").hexdigest(),
        second: hashlib.sha256(big).hexdigest(),
    }


async def test_location_and_hostile_names_stay_inside_the_store(
    client: Client, inventory: Inventory
) -> None:
    client.options = {"location": "avatars/2026"}
    body = multipart(("f", "../../../etc/passwd", b"x"), ("g", "..\\..\\win.ini", b"y"))
    status, result = await client.post(body)
    assert status == 200, result
    assert result["files"] == {"f": ["avatars/2026/passwd"], "g": ["avatars/2026/win.ini"]}
    assert inventory.files() == {"avatars/2026/passwd": b"x", "avatars/2026/win.ini": b"y"}


async def test_an_empty_file_input_is_skipped(client: Client, inventory: Inventory) -> None:
    # What a browser sends for <input type="file"> left empty: no name, no data.
    status, result = await client.post(multipart(("f", "", b""), ("note", None, b"hi")))
    assert status == 200, result
    assert result["files"] == {}
    assert result["form"] == {"note": ["hi"]}
    assert inventory.files() == {}


async def test_a_file_in_an_unexpected_field_is_refused_and_nothing_is_kept(
    client: Client, inventory: Inventory
) -> None:
    client.options = {"fields": ["avatar"]}
    body = multipart(("avatar", "ok.png", b"fine"), ("payload", "evil.sh", b"#!/bin/sh"))
    status, text = await client.post(body)
    assert status == 400
    assert "unexpected file field 'payload'" in text
    assert inventory.files() == {}  # ok.png was stored, then deleted
    assert inventory.leftovers() == []


@pytest.mark.parametrize(
    ("options", "parts", "message"),
    [
        (
            {"max_file_size": 1000},
            [("a", "small.bin", b"s" * 10), ("b", "big.bin", b"b" * 5000)],
            "'big.bin' in field 'b' is over the limit of 1,000 bytes",
        ),
        (
            {"max_size": 4000},
            [("a", "small.bin", b"s" * 10), ("b", "big.bin", b"b" * 5000)],
            "over the limit of 4,000 bytes",
        ),
        (
            {"max_parts": 3},
            [("a", "1.bin", b"1"), ("b", "2.bin", b"2"), ("c", None, b"3"), ("d", "4", b"4")],
            "more than 3 parts",
        ),
        (
            {"max_field_size": 100},
            [("a", "1.bin", b"1"), ("comment", None, b"c" * 101)],
            "form field 'comment' is over the limit of 100 bytes",
        ),
    ],
    ids=["file", "body", "parts", "field"],
)
async def test_limits_give_413_and_keep_nothing(
    client: Client,
    inventory: Inventory,
    options: dict[str, Any],
    parts: list[tuple[str, str | None, bytes]],
    message: str,
) -> None:
    client.options = options
    status, text = await client.post(multipart(*parts))
    assert status == 413
    assert message in text
    assert inventory.files() == {}
    assert inventory.leftovers() == []


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            multipart(("a", "1.bin", b"one"), ("b", "2.bin", b"two" * 1000))[:-200],
            f"multipart/form-data; boundary={BOUNDARY}",
            "ended before the multipart form did",
        ),
        (b'{"a": 1}', "application/json", "expected a multipart/form-data body"),
        (multipart(("a", "1.bin", b"x")), "multipart/form-data", "with a boundary"),
        (
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
            f"multipart/form-data; boundary={BOUNDARY}",
            "no Content-Disposition",
        ),
        (
            multipart(("a", None, b"\xff\xfe")),
            f"multipart/form-data; boundary={BOUNDARY}",
            "'a' is not UTF-8",
        ),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=a\r\nBad\r\n\r\n".encode(),
            f"multipart/form-data; boundary={BOUNDARY}",
            "malformed multipart body",
        ),
    ],
    ids=["truncated", "json", "no-boundary", "no-disposition", "not-utf8", "bad-header"],
)
async def test_bad_bodies_give_400_and_keep_nothing(
    client: Client, inventory: Inventory, body: bytes, content_type: str, message: str
) -> None:
    status, text = await client.post(body, content_type)
    assert status == 400
    assert message in text
    assert inventory.files() == {}
    assert inventory.leftovers() == []


async def test_errors_are_store_errors_and_http_errors() -> None:
    from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

    assert issubclass(BadUploadError, StoreError) and issubclass(BadUploadError, BadRequest)
    assert BadUploadError("why").code == 400
    too_large = UploadTooLargeError("why")
    assert isinstance(too_large, RequestEntityTooLarge) and too_large.code == 413
    assert too_large.description == "why"


async def test_outside_a_request_it_says_what_it_needs(store_path: Path) -> None:
    app = make_app("quart", store_path)
    store = Store(app)
    async with app.app_context():
        with pytest.raises(StoreError, match="needs a request"):
            await store.Provider.save_request()
    store.close()


# --- real servers: what no test client can send ---------------------------------------------


@pytest.fixture(params=["quart", "flask"])
def served(request: pytest.FixtureRequest, store_path: Path) -> Any:
    """A local-disk Client whose app is then run by a real server (``real_server``)."""
    app = make_app(request.param, store_path)
    store = Store(app)
    yield Client(request.param, app, store)
    store.close()


async def send_raw(port: int, head: bytes, body_parts: list[bytes], *, read: bool = True) -> int:
    """Send a request head and body pieces; return the status, or 0 when ``read`` is False
    (the client hangs up halfway without waiting for an answer)."""
    return await anyio.to_thread.run_sync(_send_raw, port, head, body_parts, read)


def _send_raw(port: int, head: bytes, body_parts: list[bytes], read: bool) -> int:
    answer = b""

    def receive(sock: socket.socket) -> None:
        # Read while sending: a server that answers early and closes resets the connection,
        # and a reset throws away whatever the client had not read yet.
        nonlocal answer
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer and (data := sock.recv(65536)):
                answer += data

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = threading.Thread(target=receive, args=(sock,), daemon=True)
        if read:
            reader.start()
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            sock.sendall(head)
            for part in body_parts:
                sock.sendall(part)
        if not read:
            return 0
        reader.join(10)
    return int(answer.split(b" ", 2)[1])


def _head(length: int | None, chunked: bool = False) -> bytes:
    lines = [
        b"POST /up HTTP/1.1",
        b"Host: localhost",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}".encode(),
        b"Connection: close",
    ]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _chunked(data: bytes, size: int = 65536) -> list[bytes]:
    pieces = [
        f"{len(data[i : i + size]):x}\r\n".encode() + data[i : i + size] + b"\r\n"
        for i in range(0, len(data), size)
    ]
    return [*pieces, b"0\r\n\r\n"]


async def test_a_chunked_body_over_the_limit_is_stopped_as_it_streams(
    served: Client, store_path: Path, free_tcp_port: int
) -> None:
    from .servers import real_server

    served.options = {"max_size": 1024 * 1024}
    body = multipart(("a", "first.bin", b"1" * 1000), ("b", "huge.bin", os.urandom(3 << 20)))
    async with real_server(served.app, free_tcp_port) as port:
        status = await send_raw(port, _head(None, chunked=True), _chunked(body))
    assert status == 413
    assert list(store_path.rglob("*")) == []  # first.bin deleted, no temp file


async def test_a_client_gone_halfway_leaves_nothing(
    served: Client, store_path: Path, free_tcp_port: int
) -> None:
    from .servers import real_server

    body = multipart(("a", "first.bin", b"1" * 1000), ("b", "half.bin", os.urandom(4 << 20)))
    async with real_server(served.app, free_tcp_port) as port:
        await send_raw(port, _head(len(body)), [body[: len(body) // 2]], read=False)
        with anyio.fail_after(10):  # the server notices the hang-up and cleans up
            while list(store_path.rglob("*")):
                await anyio.sleep(0.05)
    assert list(store_path.rglob("*")) == []


async def test_quart_buffers_at_most_about_a_mebibyte_of_a_streamed_body(
    store_path: Path,
) -> None:
    """Quart reads the body in its own task; unchecked, it would buffer all of it in memory
    while the file is written. Store(app)'s flow control holds that task back."""
    from async_store import LocalProvider
    from async_store._quart import QUEUE_MESSAGES
    from async_store._sources import Source
    from async_store.backends.local import LocalBackend

    class SlowBackend(LocalBackend):
        """A disk slower than the network: the consumer falls behind."""

        async def write(self, location: str, names: Any, source: Source) -> str:
            async def slow() -> Any:
                async for chunk in source.chunks(65536):
                    await anyio.sleep(0.002)
                    yield chunk

            return await super().write(location, names, Source(source.filename, chunks=slow()))

    class SlowDisk(LocalProvider):
        backend_class = SlowBackend

    app = make_app("quart", store_path, MAX_CONTENT_LENGTH=None, STORE_PROVIDER=SlowDisk)
    store = Store(app)

    @app.post("/up")
    async def up() -> str:
        await store.save_request()
        return "ok"

    body = multipart(("f", "big.bin", os.urandom(24 << 20)))
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    delivered = 0
    worst = 0

    def written() -> int:  # what is on disk: published files, and the file being saved
        published = sum(p.stat().st_size for p in store_path.rglob("*") if p.is_file())
        return published + sum(being_written(store_path).values())

    async def receive() -> dict[str, Any]:
        nonlocal delivered, worst
        await anyio.sleep(0)  # a network that is always ready, never the bottleneck
        if delivered // 65536 >= len(pieces):
            await anyio.sleep_forever()
        piece = pieces[delivered // 65536]
        delivered += len(piece)
        worst = max(worst, delivered - written())
        more = delivered < len(body)
        return {"type": "http.request", "body": piece, "more_body": more}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = upload_scope(len(body))
    with anyio.fail_after(60):
        # Hand-made ASGI messages: plain dicts, not hypercorn's TypedDicts (every key required).
        await app(scope, receive, send)  # type: ignore[arg-type]
    store.close()
    assert sent[0]["status"] == 200
    assert written() == 24 << 20
    # Unread: the queue, a few messages in flight, and the provider's two chunks (one being
    # written, the next being read); all 24 MiB without flow control.
    assert worst <= (QUEUE_MESSAGES + 16) * 65536 + 2 * 1024 * 1024, worst


async def test_a_small_file_part_is_stored_in_one_worker_thread_job(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from async_store import _sources, _threads

    jobs: list[str] = []
    real_small, real_thread = _threads.run_small, anyio.to_thread.run_sync

    async def small(fn: Any) -> Any:
        jobs.append("lane")
        return await real_small(fn)

    async def thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        jobs.append("thread")
        return await real_thread(fn, *args, **kwargs)

    monkeypatch.setattr(_sources, "run_small", small)
    monkeypatch.setattr(anyio.to_thread, "run_sync", thread)
    app = quart.Quart(__name__)
    app.config["STORE_PATH"] = str(store_path)
    store = Store(app)

    @app.post("/up")
    async def up() -> str:
        return str((await store.save_request()).files["f"].filename)

    small_file, big_file = os.urandom(4096), os.urandom(2 * 1024 * 1024 + 5)
    try:
        for data, name in ((small_file, "small.bin"), (big_file, "big.bin")):
            jobs.clear()
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            body = multipart(("f", name, data))
            response = await app.test_client().post("/up", data=body, headers=headers)
            assert response.status_code == 200, await response.get_data()
            assert (store_path / name).read_bytes() == data
            # Open, write and publish as one job for the small part; the big one streams.
            if data is small_file:
                assert jobs == ["lane"]
            else:
                assert "lane" not in jobs and len(jobs) > 2
    finally:
        store.close()
