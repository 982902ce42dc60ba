"""The backend objects of local disk and memory, called directly: byte ranges, stat, listing,
the atomic claim, identities, and the error mapping each call does (S3's are in test_s3.py).

Each test that takes ``backend`` runs for both; the backend is the one ``Store(app)`` made.
"""

from __future__ import annotations

import builtins
import errno
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from async_store import NotFoundError, ProviderError, Store
from async_store._sources import Source, SourceFailure, to_source
from async_store.backends import Backend, NoFreeName
from async_store.backends.local import LocalBackend
from async_store.backends.memory import MemoryBackend
from async_store.providers.memory import MemoryProvider
from tests.conftest import make_app

DATA = bytes(range(256)) * 40  # 10,240 bytes, each offset recognisable


@pytest.fixture(params=["local", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, store_path: Path) -> Iterator[Store]:
    config = {"STORE_PROVIDER": "memory"} if kind == "memory" else {}
    store = Store(make_app("quart", store_path if kind == "local" else None, **config))
    yield store
    store.close()


@pytest.fixture
def backend(store: Store) -> Backend:
    return store.state().provider_class.backend


async def write(backend: Backend, key: str, data: bytes = DATA) -> str:
    location, _, name = key.rpartition("/")
    return await backend.write(location, iter([name]), to_source(data))


async def read(backend: Backend, key: str, start: int = 0, end: int | None = None) -> bytes:
    async with backend.open(key, start, end) as f:
        return await f.read()


def test_kind_and_loop(backend: Backend, kind: str, store: Store) -> None:
    assert backend.kind == kind
    assert backend.loop_bound is False
    assert store.state().provider_class.loop_bound is False  # the sync shim saves in-thread
    assert type(backend) is {"local": LocalBackend, "memory": MemoryBackend}[kind]


def test_identity(backend: Backend, kind: str, store_path: Path) -> None:
    if kind == "local":
        assert backend.identity == f"local path={os.path.realpath(store_path)}"
    else:
        assert backend.identity.startswith("memory name=")
        other = Store(make_app("quart", None, STORE_PROVIDER="memory"))
        assert other.state().provider_class.backend.identity != backend.identity
        other.close()
    assert repr(backend) == f"<{type(backend).__name__} {backend.identity}>"


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 10), (2, 5), (5, None), (10_000, 10_240), (10_000, 20_000), (3, 3)],
)
async def test_open_reads_the_range(backend: Backend, start: int, end: int | None) -> None:
    await write(backend, "docs/a.bin")
    assert await read(backend, "docs/a.bin", start, end) == DATA[start:end]


async def test_open_past_the_end_reads_nothing(backend: Backend) -> None:
    await write(backend, "a.bin")
    assert await read(backend, "a.bin", 20_000) == b""
    assert await read(backend, "a.bin", 20_000, 30_000) == b""


async def test_a_range_is_streamed_in_the_sizes_asked(backend: Backend) -> None:
    await write(backend, "a.bin")
    sizes = []
    async with backend.open("a.bin", 100, 1100) as f:
        while chunk := await f.read(300):
            sizes.append(len(chunk))
    assert sizes == [300, 300, 300, 100]


async def test_seek_and_tell_count_from_the_range_start(backend: Backend) -> None:
    await write(backend, "a.bin")
    async with backend.open("a.bin", 100, 200) as f:
        assert await f.read(10) == DATA[100:110]
        assert await f.tell() == 10  # type: ignore[attr-defined]
        assert await f.seek(-5, os.SEEK_END) == 95  # type: ignore[attr-defined]
        assert await f.read() == DATA[195:200]
        assert await f.seek(0) == 0  # type: ignore[attr-defined]
        assert await f.read(3) == DATA[100:103]
        with pytest.raises(ValueError, match="negative seek"):
            await f.seek(-1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4)])
async def test_a_reversed_or_negative_range_is_refused(
    backend: Backend, start: int, end: int | None
) -> None:
    await write(backend, "a.bin")
    with pytest.raises(ValueError, match="not a byte range of 'a.bin'"):
        await read(backend, "a.bin", start, end)


async def test_stat(backend: Backend) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)  # file systems round mtimes
    await write(backend, "docs/a.bin")
    stored = await backend.stat("docs/a.bin")
    assert (stored.path, stored.size) == ("docs/a.bin", len(DATA))
    assert stored.modified.tzinfo is not None and stored.modified.utcoffset() == timedelta(0)
    assert before <= stored.modified <= datetime.now(UTC) + timedelta(seconds=2)
    with pytest.raises(NotFoundError, match="docs/b.bin") as info:
        await backend.stat("docs/b.bin")
    assert isinstance(info.value, FileNotFoundError)


async def test_open_delete_and_stat_of_a_missing_key(backend: Backend) -> None:
    assert not await backend.exists("nothing.txt")
    with pytest.raises(NotFoundError):
        await read(backend, "nothing.txt")
    with pytest.raises(NotFoundError):
        await backend.delete("nothing.txt")
    await write(backend, "a.txt")
    assert await backend.exists("a.txt")
    await backend.delete("a.txt")
    assert not await backend.exists("a.txt")
    with pytest.raises(NotFoundError):
        await backend.stat("a.txt")


async def test_write_claims_the_first_free_name(backend: Backend) -> None:
    assert await backend.write("docs", iter(["a.txt", "b.txt"]), to_source(b"1")) == "a.txt"
    assert await backend.write("docs", iter(["a.txt", "b.txt"]), to_source(b"2")) == "b.txt"
    with pytest.raises(NoFreeName, match="no free name in 'docs'"):
        await backend.write("docs", iter(["a.txt", "b.txt"]), to_source(b"3"))
    assert await read(backend, "docs/a.txt") == b"1"
    assert await read(backend, "docs/b.txt") == b"2"


async def test_concurrent_writes_of_one_name_never_overwrite(backend: Backend) -> None:
    names: list[str] = []

    async def one(i: int) -> None:
        candidates = iter(["same.bin", *(f"same-{i}-{n}.bin" for n in range(3))])
        names.append(await backend.write("", candidates, to_source(b"%d" % i)))

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert len(set(names)) == 50 and "same.bin" in names
    contents = {await read(backend, name) for name in names}
    assert contents == {b"%d" % i for i in range(50)}


async def test_a_failing_source_passes_through_unmapped(backend: Backend) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")  # an OSError, yet the caller's

    with pytest.raises(SourceFailure) as info:
        await backend.write("", iter(["a.txt"]), Source("a.txt", blocking=broken()))
    assert isinstance(info.value.error, ConnectionResetError)
    assert not await backend.exists("a.txt")
    assert [f async for f in backend.list("")] == []


async def test_list_in_key_order(backend: Backend) -> None:
    for key in ("b.txt", "a/z.txt", "a.txt", "a/b/c.txt", "ab.txt", "é.txt"):
        await write(backend, key, key.encode())
    everything = [f.path async for f in backend.list("")]
    assert everything == sorted(everything, key=lambda k: k.encode())
    assert everything == ["a.txt", "a/b/c.txt", "a/z.txt", "ab.txt", "b.txt", "é.txt"]
    assert [f.path async for f in backend.list("a/")] == ["a/b/c.txt", "a/z.txt"]
    assert [f.path async for f in backend.list("a")] == ["a.txt", "a/b/c.txt", "a/z.txt", "ab.txt"]
    sizes = {f.path: f.size async for f in backend.list("")}
    assert sizes["a/b/c.txt"] == len(b"a/b/c.txt")


def test_absolute_path(backend: Backend, kind: str, store_path: Path) -> None:
    expected = str(store_path / "a" / "b.txt") if kind == "local" else "a/b.txt"
    assert backend.absolute_path("a/b.txt") == expected


# --- memory only ------------------------------------------------------------------------------


def test_memory_is_a_short_name_with_no_route() -> None:
    app = make_app("quart", None, STORE_PROVIDER="memory")
    store = Store(app)
    assert issubclass(store.state(app).provider_class, MemoryProvider)
    assert app.config["STORE_PATH"] == ""
    assert "store_file" not in {rule.endpoint for rule in app.url_map.iter_rules()}
    store.close()


def test_two_memory_stores_hold_their_own_files() -> None:
    apps = [make_app("flask", None, STORE_PROVIDER="memory") for _ in range(2)]
    stores = [Store(app) for app in apps]
    try:
        with apps[0].app_context():
            stores[0].Provider(b"one", filename="a.txt").save()
        with apps[1].app_context():
            assert not stores[1].Provider("a.txt").exists()
            stores[1].Provider(b"two", filename="a.txt").save()
            with stores[1].Provider("a.txt").open() as f:
                assert f.read() == b"two"
    finally:
        for store in stores:
            store.close()


# --- local only: what the store would not serve, and errors mapped at each call ---------------


@pytest.fixture
def local(store_path: Path) -> Iterator[LocalBackend]:
    store = Store(make_app("quart", store_path))
    backend = store.state().provider_class.backend
    assert isinstance(backend, LocalBackend)
    yield backend
    store.close()


async def test_stat_and_open_refuse_what_the_store_would_not_serve(
    local: LocalBackend, store_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.txt", store_path / "leak.txt")
    (store_path / "folder").mkdir()
    for key in ("leak.txt", "folder"):
        with pytest.raises(NotFoundError):
            await local.stat(key)
        with pytest.raises(NotFoundError):
            await read(local, key)
        assert not await local.exists(key)


def _denied(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(errno.EACCES, "Permission denied")


def _assert_mapped(info: pytest.ExceptionInfo[ProviderError], key: str, root: Path) -> None:
    assert type(info.value) is ProviderError
    assert isinstance(info.value.__cause__, PermissionError)
    message = str(info.value)
    assert f"{key!r}" in message and str(root) in message and "permission denied" in message


async def test_write_maps_errors(
    local: LocalBackend, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fchmod", _denied)
    for data in (b"small", DATA * 200):  # the batched lane, and a worker thread
        with pytest.raises(ProviderError) as info:
            await local.write("docs", iter(["a.txt"]), to_source(data))
        _assert_mapped(info, "docs/a.txt", store_path)
    assert [p.name for p in store_path.rglob("*") if p.is_file()] == []


async def test_open_and_read_map_errors(
    local: LocalBackend, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write(local, "a.bin")
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", _denied)
        with pytest.raises(ProviderError) as info:
            await read(local, "a.bin")
        _assert_mapped(info, "a.bin", store_path)

    class Unreadable:  # the disk fails under an open file
        def read(self, size: int) -> bytes:
            raise PermissionError(errno.EACCES, "Permission denied")

        def close(self) -> None:
            pass

    async with local.open("a.bin") as f:
        real, f._file = f._file, Unreadable()  # type: ignore[assignment]
        with pytest.raises(ProviderError) as info:
            await f.read(10)
        _assert_mapped(info, "a.bin", store_path)
        f._file = real


async def test_delete_maps_errors(
    local: LocalBackend, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write(local, "a.bin")
    monkeypatch.setattr(os, "unlink", _denied)
    with pytest.raises(ProviderError) as info:
        await local.delete("a.bin")
    _assert_mapped(info, "a.bin", store_path)

    def gone(path: str) -> None:  # removed by someone else between the check and the unlink
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    monkeypatch.setattr(os, "unlink", gone)
    with pytest.raises(NotFoundError, match="no stored file 'a.bin'") as missing:
        await local.delete("a.bin")
    assert isinstance(missing.value.__cause__, FileNotFoundError)


async def test_list_maps_errors(
    local: LocalBackend, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write(local, "docs/a.bin")
    monkeypatch.setattr(os, "scandir", _denied)
    with pytest.raises(ProviderError) as info:
        [f async for f in local.list("docs/")]
    _assert_mapped(info, "docs/", store_path)
    with pytest.raises(ProviderError) as info:
        [f async for f in local.list("")]
    _assert_mapped(info, "/", store_path)


async def test_stat_and_exists_of_an_unreadable_file(
    local: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # resolve_file answers "not a stored file" for what it cannot stat: never a 500.
    await write(local, "a.bin")
    monkeypatch.setattr(os, "stat", _denied)
    assert not await local.exists("a.bin")
    with pytest.raises(NotFoundError):
        await local.stat("a.bin")


async def test_stat_mtime_follows_the_file(local: LocalBackend, store_path: Path) -> None:
    await write(local, "a.bin")
    past = time.time() - 3600
    os.utime(store_path / "a.bin", (past, past))
    stored = await local.stat("a.bin")
    assert stored.modified == datetime.fromtimestamp(past, UTC)
