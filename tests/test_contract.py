"""The provider contract: what every provider does, through the async API and the sync shim.

Each test runs for local disk, S3 (``backend``, a real SeaweedFS), memory, a second named
storage and obstore (on its memory store; on SeaweedFS in one cell of the matrix), for Quart
and Flask apps, for both drivers (``driver``) and with background uploads off and on
(``variant``). What is stored is checked behind
the library's back (``inventory``). Disk-only behaviour is in test_local.py, S3-only in
test_s3.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import quart.datastructures
import werkzeug.datastructures

from async_store import NotFoundError, StoreError, UnsafePathError
from tests.conftest import storage_of

MIB = 1024 * 1024
# The S3 app stores below the key prefix "media"; the local one serves under "/uploads", and the
# memory one has the same URLs (with no route behind them).
# "named": a second storage of the app (STORE_STORAGES), on local disk.
# "obstore": obstore on SeaweedFS (below "media", as S3); "obstore-memory": obstore's MemoryStore.
PREFIX = {
    "local": "/uploads",
    "s3": "/media",
    "memory": "/uploads",
    "named": "/uploads-second",
    "obstore": "/media",
    "obstore-memory": "",
}


@pytest.fixture(params=["local", "s3", "memory", "named", "obstore-memory", "obstore"])
def backend(request: pytest.FixtureRequest) -> str:
    # obstore on SeaweedFS runs in one cell only (conftest's pytest_collection_modifyitems).
    return str(request.param)


@pytest.fixture(params=["quart", "flask", "quart-background"])
def variant(request: pytest.FixtureRequest) -> str:
    """The app, and whether ``STORE_BACKGROUND`` is on: every contract test runs for both
    modes (a background save returns once spooled; ``driver.save`` waits for its delivery
    before checking), each through both drivers. Background mode runs in a Quart app only: in
    a Flask app it runs on the same shim loop the sync driver already covers."""
    return str(request.param)


@pytest.fixture
def app_kind(variant: str) -> str:
    return variant.partition("-")[0]


@pytest.fixture
def mode(variant: str) -> str:
    return "background" if variant.endswith("-background") else "direct"


COLLISION = re.compile(r"^(?P<root>.+)_[2-9A-HJ-NP-Za-km-z]{22}(?P<ext>\.\w+)?$")


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
    driver: Any, tmp_path: Path, inventory: Any, backend: str, kind: str
) -> None:
    fp, kw, expected = make_source(kind, tmp_path)
    provider = driver.make(fp, **kw)
    url = await driver.save(provider)
    assert provider.filename == expected
    assert url == provider.absolute_url == f"http://files.test{PREFIX[backend]}/{expected}"
    assert inventory.files() == {expected: b"0123456789"}
    assert await driver.read_all(provider) == b"0123456789"
    if hasattr(fp, "close"):
        fp.close()


@pytest.mark.parametrize("kind", SOURCE_KINDS)
async def test_size_and_checksum_are_taken_as_the_bytes_stream_in(
    driver: Any, tmp_path: Path, kind: str
) -> None:
    fp, kw, expected = make_source(kind, tmp_path)
    provider = driver.make(fp, **kw, checksum=True)
    assert (provider.size, provider.sha256) == (None, None)  # nothing stored yet
    await driver.save(provider)
    assert provider.size == 10
    assert provider.sha256 == hashlib.sha256(b"0123456789").hexdigest()
    if hasattr(fp, "close"):
        fp.close()


async def test_without_checksum_the_size_is_still_counted(driver: Any) -> None:
    provider = driver.make(b"x" * 5000, filename="a.bin")
    await driver.save(provider)
    assert (provider.size, provider.sha256) == (5000, None)
    # A provider of a stored path knows neither: info() asks the backend.
    assert driver.make(provider.relative_path).size is None


async def test_info_gives_what_the_backend_knows(driver: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    provider = driver.make(b"<svg/>", "docs", filename="logo.svg")
    await driver.save(provider)
    for each in (provider, driver.make("docs/logo.svg")):
        info = await driver.call(each.info)
        assert (info.path, info.size, info.content_type) == ("docs/logo.svg", 6, "image/svg+xml")
        assert before < info.modified < datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(NotFoundError):
        await driver.call(driver.make("docs/absent.svg").info)
    with pytest.raises(StoreError, match="not saved yet"):
        await driver.call(driver.make(b"x", filename="new.txt").info)


@pytest.mark.parametrize("kind", ["werkzeug", "quart", "binary file"])
async def test_one_upload_saved_twice_is_stored_whole_twice(
    driver: Any, tmp_path: Path, inventory: Any, kind: str
) -> None:
    # The same FileStorage given to two providers (two rows, two columns): the second save
    # used to find the stream at its end and store an empty file.
    fp, kw, name = make_source(kind, tmp_path)
    first, second = driver.make(fp, **kw), driver.make(fp, **kw)
    await driver.save(first)
    await driver.save(second)
    assert first.relative_path != second.relative_path
    assert inventory.files() == {
        first.relative_path: b"0123456789",
        second.relative_path: b"0123456789",
    }
    fp.close()


@pytest.mark.parametrize("kind", ["iterator", "async iterator"])
async def test_one_shot_stream_saved_twice_is_refused(
    driver: Any, tmp_path: Path, inventory: Any, kind: str
) -> None:
    fp, kw, name = make_source(kind, tmp_path)
    first = driver.make(fp, **kw)  # kept, as a row keeps it
    await driver.save(first)
    with pytest.raises(StoreError, match="already read by another save"):
        await driver.save(driver.make(fp, **kw))
    assert inventory.files() == {name: b"0123456789"}  # never an empty second file
    assert inventory.leftovers() == []


async def test_paths_and_urls(driver: Any, store_path: Path, backend: str, inventory: Any) -> None:
    provider = driver.make(b"x", "avatars/2024", filename="my photo.jpg")
    assert provider.filename == "my_photo.jpg"
    await driver.save(provider)
    assert provider.location == "avatars/2024"
    assert provider.relative_path == "avatars/2024/my_photo.jpg"
    if backend in ("local", "named"):
        assert provider.absolute_path == str(store_path / "avatars" / "2024" / "my_photo.jpg")
    elif backend in ("memory", "obstore-memory"):  # the key (STORE_PATH is an empty prefix)
        assert provider.absolute_path == "avatars/2024/my_photo.jpg"
    else:  # the whole key
        assert provider.absolute_path == "media/avatars/2024/my_photo.jpg"
    prefix = PREFIX[backend]
    assert provider.relative_url == f"{prefix}/avatars/2024/my_photo.jpg"
    assert provider.absolute_url == f"http://files.test{prefix}/avatars/2024/my_photo.jpg"
    assert list(inventory.files()) == ["avatars/2024/my_photo.jpg"]


async def test_unicode_name_is_kept_and_url_quoted(
    driver: Any, inventory: Any, backend: str
) -> None:
    provider = driver.make(b"x", filename="фото.jpg")
    await driver.save(provider)
    assert provider.filename == "фото.jpg"
    assert list(inventory.files()) == ["фото.jpg"]
    assert provider.relative_url == f"{PREFIX[backend]}/%D1%84%D0%BE%D1%82%D0%BE.jpg"


async def test_collisions_never_overwrite(driver: Any, inventory: Any) -> None:
    first = driver.make(b"first", filename="report.pdf")
    second = driver.make(b"second", filename="report.pdf")
    third = driver.make(b"third", "sub", filename="report.pdf")
    for p in (first, second, third):
        await driver.save(p)
    assert first.filename == "report.pdf"
    assert third.filename == "report.pdf"  # another folder: the name is free there
    match = COLLISION.match(second.filename)
    assert match and match["root"] == "report" and match["ext"] == ".pdf"
    assert inventory.files() == {
        "report.pdf": b"first",
        second.filename: b"second",
        "sub/report.pdf": b"third",
    }


async def test_compound_extension_survives_collision(driver: Any) -> None:
    await driver.save(driver.make(b"1", filename="data.tar.gz"))
    again = driver.make(b"2", filename="data.tar.gz")
    await driver.save(again)
    assert again.filename.startswith("data_") and again.filename.endswith(".tar.gz")


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
    assert stored.absolute_url.startswith("http://files.test/")
    assert stored.absolute_url.endswith("/docs/a.txt")
    assert await driver.read_all(stored) == b"hello"
    same = driver.make("a.txt", "docs")
    assert same.relative_path == "docs/a.txt"
    with pytest.raises(StoreError, match=r"a str names a file stored before.*pathlib\.Path"):
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
    with pytest.raises(StoreError, match="not saved yet: await save"):
        async with driver.open(provider):
            pass
    with pytest.raises(StoreError, match="not saved yet: await save"):
        await driver.delete(provider)


async def test_urls_of_an_unsaved_provider_raise(driver: Any) -> None:
    # A forgotten await: the URL of the name it *would* get named another, stored file.
    await driver.save(driver.make(b"old", filename="a.txt"))
    unsaved = driver.make(b"new", filename="a.txt")
    for attribute in ("absolute_url", "relative_url", "absolute_path"):
        with pytest.raises(StoreError, match="not saved yet: await save"):
            getattr(unsaved, attribute)
    await driver.save(unsaved)
    assert unsaved.absolute_url.endswith(f"/{unsaved.filename}") and unsaved.filename != "a.txt"


def test_a_text_mode_file_is_refused_by_name(driver: Any, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with open(path) as text, pytest.raises(TypeError, match="text mode.*open it with 'rb'"):
        driver.make(text)
    with pytest.raises(TypeError, match="text mode"):
        driver.make(io.StringIO("hello"))


async def test_str_chunks_are_refused_by_name(driver: Any, inventory: Any) -> None:
    with pytest.raises(TypeError, match=r"yields str.*encode\(\)"):
        await driver.save(driver.make(iter(["text"]), filename="a.txt"))
    assert inventory.files() == {}
    assert inventory.leftovers() == []


async def test_delete(driver: Any, inventory: Any) -> None:
    provider = driver.make(b"x", filename="a.txt")
    await driver.save(provider)
    await driver.delete(provider)
    assert inventory.files() == {}
    assert not await driver.exists(provider)
    with pytest.raises(NotFoundError) as info:
        await driver.delete(provider)
    assert isinstance(info.value, FileNotFoundError)  # NotFoundError is also the builtin
    await driver.delete(provider, missing_ok=True)
    with pytest.raises(NotFoundError):
        async with driver.open(provider):
            pass


async def test_failed_upload_leaves_nothing(driver: Any, inventory: Any) -> None:
    def broken() -> Any:
        yield b"partial data"
        raise ConnectionResetError("client went away")

    provider = driver.make(broken(), filename="a.txt")
    with pytest.raises(ConnectionResetError):
        await driver.save(provider)
    assert inventory.files() == {}
    assert inventory.leftovers() == []
    assert not provider.saved
    with pytest.raises(StoreError, match="earlier save failed"):
        await driver.save(provider)


async def test_failed_async_upload_leaves_nothing(driver: Any, inventory: Any) -> None:
    async def broken() -> Any:
        # More than a chunk reaches the temp file; more than a part reaches S3 (multipart).
        yield b"x" * (9 * MIB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await driver.save(driver.make(broken(), "deep/er", filename="a.txt"))
    assert inventory.files() == {}
    assert inventory.leftovers() == []


async def test_cancelled_upload_leaves_nothing(
    store: Any, app: Any, inventory: Any, backend: str
) -> None:
    started = anyio.Event()

    async def slow() -> Any:
        yield b"x" * (9 * MIB)
        started.set()
        await anyio.sleep(30)
        yield b"never"

    provider = store.state(app, storage_of(backend)).provider_class(slow(), filename="a.txt")
    async with anyio.create_task_group() as tg:
        tg.start_soon(provider.save)
        await started.wait()
        tg.cancel_scope.cancel()
    assert inventory.files() == {}
    assert inventory.leftovers() == []
