"""Smoke tests of examples/: each module is loaded afresh, with STORE_PATH in tmp_path.

The Quart demo is also served by a real hypercorn process, as ``make demo`` serves it.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from types import ModuleType

import anyio
import httpx
import pytest
from quart.datastructures import FileStorage

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_serial = count()

Loader = Callable[..., ModuleType]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch, store_dir: Path) -> Iterator[Loader]:
    """Import ``examples/<name>.py`` as a new module each time, with STORE_PATH set."""
    monkeypatch.setenv("STORE_PATH", str(store_dir))
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


# Async tests touch files through anyio.Path and load modules in sync fixtures, so the tests
# themselves never block the event loop (should a blockbuster fixture be turned on).
async def async_stored_files(store_dir: Path) -> list[str]:
    return sorted([p.name async for p in anyio.Path(store_dir).iterdir()])


async def read(path: Path) -> bytes:
    return await anyio.Path(path).read_bytes()


async def write(path: Path, data: bytes) -> None:
    await anyio.Path(path).parent.mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).write_bytes(data)


@pytest.fixture
def quart_demo(load_example: Loader) -> ModuleType:
    return load_example("quart_app")


# --- Quart ---------------------------------------------------------------------------------------


async def test_quart_upload_download_list_delete(quart_demo: ModuleType, store_dir: Path) -> None:
    root = quart_demo.store.state(quart_demo.app).config.path
    assert root == str(await anyio.Path(store_dir).resolve())
    client = quart_demo.app.test_client()

    page = await client.get("/")
    assert page.status_code == 200
    assert 'name="afile" multiple' in await page.get_data(as_text=True)

    content = b"hello from quart\n" * 1000
    response = await client.post(
        "/upload", files={"afile": FileStorage(io.BytesIO(content), filename="x.txt")}
    )
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    url = (await response.get_data(as_text=True)).strip()
    assert url == "http://localhost/uploads/x.txt"
    assert await read(store_dir / "x.txt") == content

    download = await client.get("/uploads/x.txt")
    assert download.status_code == 200
    assert await download.get_data() == content

    # The same name again: a second file, never an overwrite.
    response = await client.post(
        "/upload", files={"afile": FileStorage(io.BytesIO(b"second"), filename="x.txt")}
    )
    second = (await response.get_data(as_text=True)).strip()
    assert second.startswith("http://localhost/uploads/x_") and second.endswith(".txt")
    assert await read(store_dir / "x.txt") == content

    page_text = await (await client.get("/")).get_data(as_text=True)
    assert '<a href="/uploads/x.txt">x.txt</a>' in page_text
    second_name = second.rsplit("/", 1)[1]
    assert f">{second_name}</a>" in page_text

    response = await client.post("/delete/x.txt")
    assert response.status_code == 200
    assert await async_stored_files(store_dir) == [second_name]
    assert (await client.get("/uploads/x.txt")).status_code == 404
    assert (await client.post("/delete/x.txt")).status_code == 404


async def test_quart_browser_form_redirects(quart_demo: ModuleType, store_dir: Path) -> None:
    client = quart_demo.app.test_client()
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = await client.post(
        "/upload",
        files={"afile": FileStorage(io.BytesIO(b"abc"), filename="form.txt")},
        headers=html,
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert await async_stored_files(store_dir) == ["form.txt"]

    response = await client.post("/delete/form.txt", headers=html)
    assert response.status_code == 303
    assert await async_stored_files(store_dir) == []


async def test_quart_upload_without_file_is_400(quart_demo: ModuleType, store_dir: Path) -> None:
    client = quart_demo.app.test_client()
    response = await client.post("/upload", form={"other": "x"})
    assert response.status_code == 400
    assert await async_stored_files(store_dir) == []


async def test_quart_index_escapes_names(quart_demo: ModuleType, store_dir: Path) -> None:
    client = quart_demo.app.test_client()
    # The store cleans client names, so "<script>" never reaches the disk through an upload...
    response = await client.post(
        "/upload",
        files={"afile": FileStorage(io.BytesIO(b"x"), filename="<script>alert(1)</script>.html")},
    )
    assert "<" not in (await response.get_data(as_text=True))
    # ...but a file put there by other means is listed too, and must be escaped.
    await write(store_dir / '<img src=x onerror="alert(1)">&.txt', b"y")
    await write(store_dir / ".hidden", b"z")
    await write(store_dir / "sub" / "deep.txt", b"deep")

    page = await (await client.get("/")).get_data(as_text=True)
    assert "<script>" not in page
    assert "<img" not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;.txt" in page
    assert "/uploads/%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E%26.txt" in page
    assert ".hidden" not in page
    assert '<a href="/uploads/sub/deep.txt">sub/deep.txt</a>' in page
    assert await (await client.get("/uploads/sub/deep.txt")).get_data() == b"deep"


async def test_quart_delete_refuses_unsafe_paths(quart_demo: ModuleType, store_dir: Path) -> None:
    client = quart_demo.app.test_client()
    await write(store_dir / ".hidden", b"z")
    assert (await client.post("/delete/.hidden")).status_code == 400
    assert await anyio.Path(store_dir / ".hidden").exists()


@pytest.mark.parametrize("name", ["quart_app", "flask_app"])
def test_store_path_defaults_to_instance_folder_next_to_the_example(
    name: str, load_example: Loader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A copy of the example, so the instance folder it creates is in tmp_path, not in the repo.
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(EXAMPLES / f"{name}.py", folder)
    monkeypatch.delenv("STORE_PATH")
    demo = load_example(name, folder)
    assert demo.app.instance_path == str(folder / "instance")
    expected = os.path.realpath(folder / "instance" / "uploads")
    assert demo.store.state(demo.app).config.path == expected
    assert os.path.isdir(expected)


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


def test_quart_demo_under_hypercorn(store_dir: Path, free_tcp_port: int) -> None:
    """What ``make demo`` does: hypercorn serving examples/quart_app.py on 127.0.0.1."""
    base = f"http://127.0.0.1:{free_tcp_port}"
    env = {**os.environ, "STORE_PATH": str(store_dir)}
    env.pop("STORE_DOMAIN", None)
    command = [
        *(sys.executable, "-m", "hypercorn"),
        *("--bind", f"127.0.0.1:{free_tcp_port}"),
        str(EXAMPLES / "quart_app.py") + ":app",
    ]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with httpx.Client(base_url=base, timeout=5) as client:
            deadline = time.monotonic() + 15
            while True:
                assert server.poll() is None, server.stdout.read().decode()  # type: ignore[union-attr]
                try:
                    if client.get("/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "hypercorn did not start within 15 s"
                time.sleep(0.1)

            big = os.urandom(3 * 1024 * 1024)
            response = client.post(
                "/upload",
                files=[("afile", ("big.bin", big)), ("afile", ("small.txt", b"small"))],
            )
            assert response.status_code == 200, response.text
            urls = response.text.split()
            assert urls == [f"{base}/uploads/big.bin", f"{base}/uploads/small.txt"]
            assert client.get(urls[0]).content == big
            small = client.get(urls[1])
            assert small.content == b"small"
            assert small.headers["x-content-type-options"] == "nosniff"
            assert "small.txt" in client.get("/").text
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()
