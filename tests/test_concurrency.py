"""Many uploads of one name at once: every one is stored whole, none overwrites another."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import flask
import httpx
from werkzeug.serving import make_server

from async_store import Store
from tests.conftest import make_app

N = 100


def payloads(n: int = N) -> list[bytes]:
    # Different sizes too, so a torn or mixed-up file cannot pass by accident.
    return [os.urandom(1000 + 997 * i) for i in range(n)]


def assert_all_intact(store_path: Path, sent: list[bytes], names: list[str]) -> None:
    files = sorted(p for p in store_path.rglob("*") if p.is_file())
    assert len(files) == len(sent) == len(set(names))
    stored = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
    assert stored == sorted(hashlib.sha256(d).hexdigest() for d in sent)
    assert "same.bin" in names
    assert not [p for p in store_path.rglob(".*")], "temp files left behind"


async def test_async_uploads_of_one_name(store: Any, app: Any, store_path: Path) -> None:
    cls = store.state(app).provider_class
    sent = payloads()
    names: list[str] = []

    async def one(data: bytes) -> None:
        async def chunks() -> Any:
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]
                await anyio.lowlevel.checkpoint()

        provider = cls(chunks(), filename="same.bin")
        await provider.save()
        names.append(provider.filename)

    async with anyio.create_task_group() as tg:
        for data in sent:
            tg.start_soon(one, data)
    assert_all_intact(store_path, sent, names)


def test_sync_shim_uploads_of_one_name_from_threads(store_path: Path) -> None:
    store = Store(make_app("flask", store_path))
    sent = payloads()

    def one(data: bytes) -> str:
        provider = store.Provider(data, filename="same.bin")
        provider.save()
        return str(provider.filename)

    with ThreadPoolExecutor(32) as pool:
        names = list(pool.map(one, sent))
    store.close()
    assert_all_intact(store_path, sent, names)


def test_flask_threaded_server_many_uploads(store_path: Path) -> None:
    """The manual's Flask view under Werkzeug's threaded server, many requests at once."""
    app = make_app("flask", store_path)
    store = Store(app)

    @app.route("/upload", methods=["POST"])
    def upload() -> str:
        provider = store.Provider(flask.request.files.get("afile"))
        provider.save()
        with provider.open() as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        return f"{provider.absolute_url} {digest}"

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sent = payloads(60)
    try:
        base = f"http://127.0.0.1:{server.server_port}"

        def post(data: bytes) -> httpx.Response:
            with httpx.Client(timeout=30) as client:
                return client.post(f"{base}/upload", files={"afile": ("same.bin", data)})

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(post, sent))
        assert [r.status_code for r in responses] == [200] * len(sent)
        names = []
        for response, data in zip(responses, sent, strict=True):
            url, digest = response.text.split()
            assert digest == hashlib.sha256(data).hexdigest()
            names.append(url.rsplit("/", 1)[1])
            with httpx.Client(timeout=30) as client:
                assert client.get(f"{base}{url}").content == data
    finally:
        server.shutdown()
        thread.join(10)
        store.close()
    assert_all_intact(store_path, sent, names)
