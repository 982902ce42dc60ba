"""The provider contract: what every provider does, through the async API and the sync shim.

Each test runs for Quart and Flask apps (``app_kind``) and for both drivers (``driver``).
"""

from __future__ import annotations

import errno
import io
import os
import re
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import quart.datastructures
import werkzeug.datastructures

from async_store import NotFoundError, ProviderError, StoreError, UnsafePathError

COLLISION = re.compile(r"^(?P<root>.+)_[2-9A-HJ-NP-Za-km-z]{22}(?P<ext>\.\w+)?$")


def leftovers(store_path: Path) -> list[str]:
    """Temp or other hidden files anywhere in the store."""
    return [p.name for p in store_path.rglob(".*")]


async def agen(*chunks: bytes) -> Any:
    for chunk in chunks:
        await anyio.lowlevel.checkpoint()
        yield chunk


class AsyncReader:
    def __init__(self, data: bytes, name: str) -> None:
        self._buf = io.BytesIO(data)
        self.name = name

    async def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)


def make_source(kind: str, tmp_path: Path) -> tuple[Any, dict[str, Any], str]:
    """kind -> (input, extra kwargs, expected filename); content is always b'0123456789'."""
    data = b"0123456789"
    path = tmp_path / "from disk.txt"
    path.write_bytes(data)
    makers: dict[str, Any] = {
        "werkzeug": lambda: (
            werkzeug.datastructures.FileStorage(io.BytesIO(data), "w.txt"),
            {},
            "w.txt",
        ),
        "quart": lambda: (quart.datastructures.FileStorage(io.BytesIO(data), "q.txt"), {}, "q.txt"),
        "path": lambda: (path, {}, "from_disk.txt"),
        "bytes": lambda: (data, {"filename": "b.bin"}, "b.bin"),
        "bytearray": lambda: (bytearray(data), {}, "file"),
        "binary file": lambda: (open(path, "rb"), {}, "from_disk.txt"),
        "iterator": lambda: (iter([data[:3], b"", data[3:]]), {"filename": "it.txt"}, "it.txt"),
        "async iterator": lambda: (agen(data[:4], data[4:]), {"filename": "ai.txt"}, "ai.txt"),
        "async reader": lambda: (AsyncReader(data, "/x/reader.txt"), {}, "reader.txt"),
    }
    return makers[kind]()  # type: ignore[no-any-return]


SOURCE_KINDS = [
    "werkzeug",
    "quart",
    "path",
    "bytes",
    "bytearray",
    "binary file",
    "iterator",
    "async iterator",
    "async reader",
]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_save_accepts_every_input(
    driver: Any, tmp_path: Path, store_path: Path, kind: str
) -> None:
    fp, kw, expected = make_source(kind, tmp_path)
    provider = driver.make(fp, **kw)
    url = await driver.save(provider)
    assert provider.filename == expected
    assert url == provider.absolute_url == f"http://files.test/uploads/{expected}"
    assert (store_path / expected).read_bytes() == b"0123456789"
    assert await driver.read_all(provider) == b"0123456789"
    if hasattr(fp, "close"):
        fp.close()


async def test_paths_and_urls(driver: Any, store_path: Path) -> None:
    provider = driver.make(b"x", "avatars/2024", filename="my photo.jpg")
    assert provider.filename == "my_photo.jpg"
    await driver.save(provider)
    assert provider.location == "avatars/2024"
    assert provider.relative_path == "avatars/2024/my_photo.jpg"
    assert provider.absolute_path == str(store_path / "avatars" / "2024" / "my_photo.jpg")
    assert provider.relative_url == "/uploads/avatars/2024/my_photo.jpg"
    assert provider.absolute_url == "http://files.test/uploads/avatars/2024/my_photo.jpg"
    assert os.path.isfile(provider.absolute_path)


async def test_unicode_name_is_kept_and_url_quoted(driver: Any, store_path: Path) -> None:
    provider = driver.make(b"x", filename="фото.jpg")
    await driver.save(provider)
    assert provider.filename == "фото.jpg"
    assert (store_path / "фото.jpg").is_file()
    assert provider.relative_url == "/uploads/%D1%84%D0%BE%D1%82%D0%BE.jpg"


async def test_collisions_never_overwrite(driver: Any, store_path: Path) -> None:
    first = driver.make(b"first", filename="report.pdf")
    second = driver.make(b"second", filename="report.pdf")
    third = driver.make(b"third", "sub", filename="report.pdf")
    for p in (first, second, third):
        await driver.save(p)
    assert first.filename == "report.pdf"
    assert third.filename == "report.pdf"  # another folder: the name is free there
    match = COLLISION.match(second.filename)
    assert match and match["root"] == "report" and match["ext"] == ".pdf"
    assert (store_path / "report.pdf").read_bytes() == b"first"
    assert (store_path / second.filename).read_bytes() == b"second"
    assert (store_path / "sub" / "report.pdf").read_bytes() == b"third"


async def test_compound_extension_survives_collision(driver: Any) -> None:
    await driver.save(driver.make(b"1", filename="data.tar.gz"))
    again = driver.make(b"2", filename="data.tar.gz")
    await driver.save(again)
    assert again.filename.startswith("data_") and again.filename.endswith(".tar.gz")


async def test_relative_urls_without_domain(app_kind: str, store_path: Path) -> None:
    from async_store import Store
    from tests.conftest import make_app

    app = make_app(app_kind, store_path, STORE_URL_PREFIX="/media/")
    store = Store(app)
    try:
        provider = store.state(app).provider_class(b"x", filename="a.txt")
        assert await provider.save() == "/media/a.txt"
        assert provider.absolute_url == provider.relative_url == "/media/a.txt"
    finally:
        store.close()


async def test_exists(driver: Any) -> None:
    provider = driver.make(b"x", "docs", filename="a.txt")
    await driver.save(provider)
    assert await driver.exists(provider)
    assert await driver.exists(provider, "a.txt")
    assert not await driver.exists(provider, "b.txt")
    with pytest.raises(UnsafePathError):
        await driver.exists(provider, "../a.txt")


async def test_stored_path_refers_to_existing_file(driver: Any) -> None:
    await driver.save(driver.make(b"hello", "docs", filename="a.txt"))
    stored = driver.make("docs/a.txt")
    assert stored.saved
    assert (stored.location, stored.filename) == ("docs", "a.txt")
    assert stored.absolute_url == "http://files.test/uploads/docs/a.txt"
    assert await driver.read_all(stored) == b"hello"
    same = driver.make("a.txt", "docs")
    assert same.relative_path == "docs/a.txt"
    with pytest.raises(StoreError, match="already stored"):
        await driver.save(stored)


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "a\\..\\b",
        "a/./b",
        ".hidden",
        "docs/.async_store-x.part",
        "a\x00b",
        "a//b",
        "",
    ],
)
def test_stored_path_cannot_escape(driver: Any, path: str) -> None:
    with pytest.raises(UnsafePathError):
        driver.make(path)


@pytest.mark.parametrize("location", ["..", "../x", "a/../..", "a\\b", ".git", "a/\x00"])
def test_location_cannot_escape(driver: Any, location: str) -> None:
    with pytest.raises(UnsafePathError):
        driver.make(b"x", location, filename="a.txt")


def test_location_slashes_are_ignored(driver: Any) -> None:
    # The manual writes location='/some/where': relative to STORE_PATH all the same.
    assert driver.make(b"x", "/some/where/", filename="a").relative_path == "some/where/a"


@pytest.mark.parametrize("bad", [None, 42, {"a": 1}, object()])
def test_bad_input_is_a_clear_type_error(driver: Any, bad: Any) -> None:
    with pytest.raises(TypeError, match="Provider"):
        driver.make(bad)


async def test_open_streams_in_chunks(driver: Any) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    provider = driver.make(data, filename="big.bin")
    await driver.save(provider)
    sizes = []
    async with driver.open(provider) as f:
        while chunk := await f.read(1024 * 1024):
            sizes.append(len(chunk))
    assert sizes == [1024 * 1024] * 3 + [7]
    assert await driver.read_all(provider) == data


async def test_open_and_delete_need_a_stored_file(driver: Any) -> None:
    provider = driver.make(b"x", filename="a.txt")
    with pytest.raises(StoreError, match="not stored yet"):
        async with driver.open(provider):
            pass
    with pytest.raises(StoreError, match="not stored yet"):
        await driver.delete(provider)


async def test_delete(driver: Any, store_path: Path) -> None:
    provider = driver.make(b"x", filename="a.txt")
    await driver.save(provider)
    await driver.delete(provider)
    assert not (store_path / "a.txt").exists()
    assert not await driver.exists(provider)
    with pytest.raises(NotFoundError) as info:
        await driver.delete(provider)
    assert isinstance(info.value, FileNotFoundError)  # NotFoundError is also the builtin
    await driver.delete(provider, missing_ok=True)
    with pytest.raises(NotFoundError):
        async with driver.open(provider):
            pass


async def test_delete_removes_a_link_not_its_target(driver: Any, store_path: Path) -> None:
    await driver.save(driver.make(b"target", filename="real.txt"))
    os.symlink(store_path / "real.txt", store_path / "alias.txt")
    await driver.delete(driver.make("alias.txt"))
    assert not (store_path / "alias.txt").exists()
    assert (store_path / "real.txt").read_bytes() == b"target"


async def test_symlink_out_of_the_store_is_not_a_stored_file(
    driver: Any, tmp_path: Path, store_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    os.symlink(secret, store_path / "leak.txt")
    leak = driver.make("leak.txt")
    assert not await driver.exists(leak)
    with pytest.raises(NotFoundError):
        await driver.read_all(leak)
    with pytest.raises(NotFoundError):
        await driver.delete(leak)
    assert secret.exists()


async def test_failed_upload_leaves_nothing(driver: Any, store_path: Path) -> None:
    def broken() -> Any:
        yield b"partial data"
        raise ConnectionResetError("client went away")

    provider = driver.make(broken(), filename="a.txt")
    with pytest.raises(ConnectionResetError):
        await driver.save(provider)
    assert list(store_path.iterdir()) == []
    assert not provider.saved
    with pytest.raises(StoreError, match="earlier save failed"):
        await driver.save(provider)


async def test_failed_async_upload_leaves_nothing(driver: Any, store_path: Path) -> None:
    async def broken() -> Any:
        yield b"x" * 3_000_000  # more than one chunk reaches the temp file
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await driver.save(driver.make(broken(), "deep/er", filename="a.txt"))
    assert [p for p in store_path.rglob("*") if p.is_file()] == []


async def test_cancelled_upload_leaves_nothing(store: Any, app: Any, store_path: Path) -> None:
    started = anyio.Event()

    async def slow() -> Any:
        yield b"x" * 2_000_000
        started.set()
        await anyio.sleep(30)
        yield b"never"

    provider = store.state(app).provider_class(slow(), filename="a.txt")
    async with anyio.create_task_group() as tg:
        tg.start_soon(provider.save)
        await started.wait()
        tg.cancel_scope.cancel()
    assert [p for p in store_path.rglob("*") if p.is_file()] == []


async def test_disk_errors_are_named_and_leave_nothing(
    driver: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(ProviderError, match="disk is full") as info:
        await driver.save(driver.make(b"x" * 100, filename="a.txt"))
    assert "a.txt" in str(info.value) and str(store_path) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert list(store_path.iterdir()) == []


async def test_filesystem_without_hard_links(
    driver: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first, second = driver.make(b"1", filename="a.txt"), driver.make(b"2", filename="a.txt")
    await driver.save(first)
    await driver.save(second)
    assert (store_path / "a.txt").read_bytes() == b"1"
    assert (store_path / second.filename).read_bytes() == b"2"
    assert leftovers(store_path) == []


async def test_saved_files_are_world_readable(driver: Any, store_path: Path) -> None:
    provider = driver.make(b"x", filename="a.txt")
    await driver.save(provider)
    assert (store_path / "a.txt").stat().st_mode & 0o777 == 0o644


async def test_save_streams_without_holding_the_file(store: Any, app: Any) -> None:
    chunk = b"x" * (1024 * 1024)

    async def forty_mib() -> Any:
        for _ in range(40):
            yield chunk

    provider = store.state(app).provider_class(forty_mib(), filename="big.bin")
    tracemalloc.start()
    try:
        await provider.save()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.path.getsize(provider.absolute_path) == 40 * len(chunk)
    assert peak < 8 * 1024 * 1024, f"save held {peak / 2**20:.1f} MiB at once"


async def test_async_api_never_blocks_the_event_loop(store: Any, app: Any) -> None:
    from blockbuster import blockbuster_ctx

    cls = store.state(app).provider_class
    with blockbuster_ctx("async_store"):
        provider = cls(agen(b"a" * 100_000, b"b"), "x/y", filename="a.txt")
        await provider.save()
        await cls(b"werkzeug", filename="b.txt").save()
        assert await provider.exists()
        async with provider.open() as f:
            assert len(await f.read()) == 100_001
        await provider.delete()


async def test_fsync_flushes_file_and_folder(
    app_kind: str, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from async_store import Store
    from tests.conftest import make_app

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    for fsync in (False, True):
        store = Store(make_app(app_kind, store_path / str(fsync), STORE_FSYNC=fsync))
        provider = store.state().provider_class(agen(b"x"), "sub", filename="a.txt")
        await provider.save()
        await store.state().provider_class(b"y", filename="b.txt").save()
        store.close()
    folder = str(store_path / "True")
    assert len(synced) == 4
    assert synced[1::2] == [f"{folder}/sub", folder]
    assert all(".async_store-" in path for path in synced[0::2])
