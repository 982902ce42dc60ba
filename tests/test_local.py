"""What the local provider does beyond the shared contract: links, disk errors, memory, fsync,
and the batched lane small in-memory saves take (``_threads``).

Each test runs for Quart and Flask apps and, where it takes ``driver``, through both APIs;
tests that take ``publish`` run once with ``renameat2`` and once with the hard-link fallback.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.formparser import default_stream_factory

from async_store import NotFoundError, ProviderError, _rename, _sources, _threads
from async_store.backends import _local_fs, _local_write
from tests.conftest import unavailable

COLLISION = re.compile(r"^(?P<root>.+)_[2-9A-HJ-NP-Za-km-z]{22}(?P<ext>\.\w+)?$")


def leftovers(store_path: Path) -> list[str]:
    """Temp or other hidden files anywhere in the store."""
    return [p.name for p in store_path.rglob(".*")]


async def agen(*chunks: bytes) -> Any:
    for chunk in chunks:
        await anyio.lowlevel.checkpoint()
        yield chunk


@pytest.fixture(params=["unnamed", "rename", "link"])
def publish(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a finished file gets its name: an unnamed (O_TMPFILE) file linked in, or a temp
    file renamed with renameat2, or (without it) hard-linked."""
    if request.param != "unnamed":  # as where unnamed files cannot be linked: a temp file
        monkeypatch.setattr(_rename, "_linkat", None)
    elif _rename._linkat is None:
        unavailable("no linkat or no /proc/self/fd on this system")
    if request.param == "link":
        monkeypatch.setattr(_rename, "_renameat2", None)
    elif request.param == "rename" and _rename._renameat2 is None:
        unavailable("no renameat2 on this system (Linux 3.15+, glibc 2.28+)")
    return str(request.param)


@pytest.fixture
def lane_jobs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the jobs that go through the batched lane."""
    jobs: list[int] = []
    real = _threads.run_small  # what _sources imported

    async def counted(fn: Any) -> Any:
        jobs.append(1)
        return await real(fn)

    monkeypatch.setattr(_sources, "run_small", counted)
    return jobs


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


async def test_disk_errors_are_named_and_leave_nothing(
    driver: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch, publish: str
) -> None:
    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    monkeypatch.setattr(_rename, "rename_noreplace", full if publish == "rename" else _no_rename)
    if publish == "unnamed":
        monkeypatch.setattr(_rename, "link_open_file", full)
    with pytest.raises(ProviderError, match="disk is full") as info:
        await driver.save(driver.make(b"x" * 100, filename="a.txt"))
    assert "a.txt" in str(info.value) and str(store_path) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert list(store_path.iterdir()) == []


def _no_rename(src: str, dst: str) -> bool:
    return False


async def test_filesystem_without_hard_links(
    driver: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_rename, "_renameat2", None)
    monkeypatch.setattr(_rename, "_linkat", None)  # no links at all: not of unnamed files either
    monkeypatch.setattr(os, "link", no_links)
    first, second = driver.make(b"1", filename="a.txt"), driver.make(b"2", filename="a.txt")
    await driver.save(first)
    await driver.save(second)
    assert (store_path / "a.txt").read_bytes() == b"1"
    assert (store_path / second.filename).read_bytes() == b"2"
    assert leftovers(store_path) == []


def test_rename_noreplace_falls_back_where_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _rename._renameat2 is None:
        unavailable("no renameat2 on this system (Linux 3.15+, glibc 2.28+)")
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        _rename.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert _rename.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert not (tmp_path / "a").exists() and (tmp_path / "c").read_bytes() == b"a"

    def einval(*args: Any) -> int:
        import ctypes

        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(_rename, "_renameat2", einval)
    assert not _rename.rename_noreplace(str(tmp_path / "c"), str(tmp_path / "d"))
    assert _rename._renameat2 is None  # remembered: links from now on
    assert (tmp_path / "c").exists() and not (tmp_path / "d").exists()


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


def local_backend(store: Any) -> Any:
    from async_store.backends.local import LocalBackend

    backend = store.state().provider_class.backend
    assert isinstance(backend, LocalBackend)
    return backend


async def test_fsync_flushes_file_and_folder(
    app_kind: str, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from async_store import Store
    from tests.conftest import make_app

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    for fsync in (False, True):
        store = Store(make_app(app_kind, store_path / str(fsync), STORE_FSYNC=fsync))
        provider = store.state().provider_class(agen(b"x"), "sub", filename="a.txt")
        await provider.save()
        await store.state().provider_class(b"y", filename="b.txt").save()
        unnamed = local_backend(store).writes_unnamed
        store.close()
    folder = str(store_path / "True")
    assert len(synced) == 4
    assert synced[1::2] == [f"{folder}/sub", folder]
    # Each file is flushed before it has its name, in its target folder: unnamed (O_TMPFILE),
    # or a hidden temp file where the file system makes no unnamed files.
    assert [os.path.dirname(path) for path in synced[0::2]] == [f"{folder}/sub", folder]
    mark = " (deleted)" if unnamed else ".async_store-"
    assert all(mark in path for path in synced[0::2])


async def test_a_file_being_saved_has_no_name_in_the_folder(
    app_kind: str, store_path: Path
) -> None:
    from async_store import Store
    from tests.conftest import make_app

    written, go_on = anyio.Event(), anyio.Event()

    async def slow() -> Any:
        yield b"x" * 2_000_000  # more than a chunk: written while the rest is awaited
        written.set()
        await go_on.wait()
        yield b"y"

    store = Store(make_app(app_kind, store_path))
    provider = store.state().provider_class(slow(), filename="a.bin")
    async with anyio.create_task_group() as tg:
        tg.start_soon(provider.save)
        await written.wait()
        await anyio.sleep(0.2)  # the writer thread has the first chunk
        # Nothing to see, serve or list (and nothing a kill -9 could leave behind); where the
        # file system makes no unnamed files, a hidden temp file, which nothing serves or lists.
        hidden = [n for n in os.listdir(store_path) if n.startswith(".async_store-")]
        assert os.listdir(store_path) == ([] if local_backend(store).writes_unnamed else hidden)
        go_on.set()
    assert os.listdir(store_path) == ["a.bin"]
    assert (store_path / "a.bin").stat().st_size == 2_000_001
    store.close()


@pytest.mark.parametrize("refused", ["unnamed files", "linking them"])
async def test_without_unnamed_files_a_named_temp_file_does(
    app_kind: str, store_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    # Some file systems (NFS, FUSE, old kernels) make no O_TMPFILE files, or refuse to link
    # them: the save goes through a hidden temp file instead, with the same guarantees.
    from async_store import Store, _rename
    from tests.conftest import make_app

    if refused == "unnamed files":
        real_open = os.open

        def no_unnamed(path: Any, flags: int, *args: Any) -> int:
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "not here")
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", no_unnamed)
    else:
        monkeypatch.setattr(_rename, "link_open_file", lambda fd, dst: False)
    store = Store(make_app(app_kind, store_path))
    for name in ("a.txt", "a.txt", "b.txt"):
        await store.state().provider_class(b"content " + name.encode(), filename=name).save()
    assert not local_backend(
        store
    ).writes_unnamed  # remembered: the next saves go straight to named temp files
    stored = sorted(p.name for p in store_path.iterdir())
    assert len(stored) == 3 and stored[0] == "a.txt" and stored[2] == "b.txt"
    assert all(not name.startswith(".") for name in stored)  # no temp file left
    assert (store_path / "b.txt").read_bytes() == b"content b.txt"
    store.close()


# --- the batched lane for small in-memory saves ----------------------------------------------


async def test_only_small_in_memory_saves_take_the_lane(
    app_kind: str, store_path: Path, lane_jobs: list[int]
) -> None:
    from async_store import Store
    from tests.conftest import make_app

    store = Store(make_app(app_kind, store_path, STORE_CHUNK_SIZE=64 * 1024))
    cls = store.state().provider_class

    streams: list[Any] = []

    def upload(size: int) -> FileStorage:  # as Werkzeug and Quart parse a form's file field
        stream = default_stream_factory(
            total_content_length=size, content_type="text/plain", filename="up.txt"
        )
        streams.append(stream)
        stream.write(b"u" * size)
        stream.seek(0)
        return FileStorage(stream, filename="up.txt")

    try:
        await cls(b"x" * 64 * 1024, filename="small.bin").save()
        await cls(upload(1000)).save()  # a SpooledTemporaryFile still in memory
        assert len(lane_jobs) == 2
        await cls(b"x" * (64 * 1024 + 1), filename="big.bin").save()  # more than a chunk
        await cls(upload(600 * 1024)).save()  # rolled over to disk
        await cls(agen(b"async"), filename="async.bin").save()
        await cls(store_path / "small.bin", filename="path.bin").save()  # unknown without stat
        assert len(lane_jobs) == 2
    finally:
        store.close()
        for stream in streams:
            stream.close()
    assert (store_path / "big.bin").stat().st_size == 64 * 1024 + 1
    assert sorted(p.stat().st_size for p in store_path.glob("up*.txt")) == [1000, 600 * 1024]


async def test_many_small_saves_of_one_name_all_survive(
    store: Any, app: Any, store_path: Path, publish: str, lane_jobs: list[int]
) -> None:
    cls = store.state(app).provider_class
    sent = [os.urandom(100 + i) for i in range(200)]
    names: list[str] = []

    async def one(data: bytes) -> None:
        provider = cls(data, filename="same.bin")
        await provider.save()
        names.append(provider.filename)

    async with anyio.create_task_group() as tg:
        for data in sent:
            tg.start_soon(one, data)
    assert len(lane_jobs) == len(sent)
    assert "same.bin" in names and len(set(names)) == len(sent)
    assert all(name == "same.bin" or COLLISION.match(name) for name in names)
    stored = sorted((store_path / name).read_bytes() for name in names)
    assert stored == sorted(sent)
    assert leftovers(store_path) == []


async def test_failed_small_saves_leave_no_temp_file(
    store: Any, app: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch, publish: str
) -> None:
    cls = store.state(app).provider_class
    calls = 0
    real_fchmod = os.fchmod

    def every_third_fails(fd: int, mode: int) -> None:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise OSError(errno.EACCES, "Permission denied")
        real_fchmod(fd, mode)

    real_claim = _local_fs._claim  # what _local_write imported (and calls)
    claims = 0

    def every_fourth_claim_fails(temp: str, *args: Any) -> str:
        nonlocal claims
        claims += 1
        if claims % 4 == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_claim(temp, *args)

    monkeypatch.setattr(os, "fchmod", every_third_fails)
    monkeypatch.setattr(_local_write, "_claim", every_fourth_claim_fails)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            await cls(b"x" * 100, filename=f"{i}.bin").save()
            outcomes.append("saved")
        except ProviderError:
            outcomes.append("failed")

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    assert len(outcomes) == 60 and "failed" in outcomes and "saved" in outcomes
    assert leftovers(store_path) == []
    assert len(list(store_path.iterdir())) == outcomes.count("saved")


async def test_cancelled_small_saves_leave_whole_files_or_nothing(
    store: Any, app: Any, store_path: Path
) -> None:
    cls = store.state(app).provider_class
    payload = os.urandom(4096)
    finished = 0

    async def one(i: int, tg: anyio.abc.TaskGroup) -> None:
        nonlocal finished
        await cls(payload, filename=f"{i}.bin").save()
        finished += 1
        if finished == 20:
            tg.cancel_scope.cancel()  # many more are queued in the writer by now

    async with anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(one, i, tg)
    stored = list(store_path.iterdir())
    assert 20 <= len(stored) < 500
    assert all(p.read_bytes() == payload for p in stored)
    assert leftovers(store_path) == []


async def test_location_swapped_for_a_link_out_is_refused(
    driver: Any, tmp_path: Path, store_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    await driver.save(driver.make(b"1", "a/b", filename="first.txt"))
    await driver.save(driver.make(b"1", "c", filename="first.txt"))
    # Move the folders out of the store and link them back in, between two saves.
    os.rename(store_path / "a", outside / "a")
    os.symlink(outside / "a", store_path / "a")
    os.rename(store_path / "c", outside / "c")
    os.symlink(outside / "c", store_path / "c")
    for location in ("a/b", "c"):
        with pytest.raises(ProviderError, match="link out of STORE_PATH"):
            await driver.save(driver.make(b"2", location, filename="second.txt"))
    assert sorted(p.name for p in outside.rglob("*.txt")) == ["first.txt", "first.txt"]
    assert leftovers(outside) == [] and leftovers(store_path) == []


async def test_links_inside_the_store_are_followed(driver: Any, store_path: Path) -> None:
    (store_path / "real").mkdir()
    os.symlink(store_path / "real", store_path / "alias")
    await driver.save(driver.make(b"1", "alias", filename="a.txt"))
    assert (store_path / "real" / "a.txt").read_bytes() == b"1"


async def test_lane_falls_back_to_to_thread_off_asyncio(
    store: Any, app: Any, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[int] = []
    real = anyio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kw: Any) -> Any:
        hops.append(1)
        return await real(fn, *args, **kw)

    monkeypatch.setattr(_threads, "_on_asyncio", lambda: False)
    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    await store.state(app).provider_class(b"x", filename="a.txt").save()
    assert hops == [1]
    assert (store_path / "a.txt").read_bytes() == b"x"


async def test_lane_hands_back_errors_and_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _threads.run_small(lambda: 42) == 42

    def boom() -> None:
        raise KeyError("from the writer")

    with pytest.raises(KeyError, match="from the writer"):
        await _threads.run_small(boom)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await _threads.run_small(boom)  # a cancelled caller queues nothing
    assert scope.cancelled_caught


async def test_lane_cancellation_is_like_to_thread() -> None:
    running, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow() -> str:
        running.set()
        release.wait(10)
        ran.append("slow")
        return "slow"

    def queued() -> str:  # pragma: no cover - withdrawn before it runs
        ran.append("queued")
        return "queued"

    results: list[str] = []

    async def call(fn: Any) -> None:
        results.append(await _threads.run_small(fn))
        await anyio.lowlevel.checkpoint()
        results.append("past the checkpoint")  # never: the cancellation arrives there

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, slow)
        await anyio.to_thread.run_sync(running.wait)  # the writer runs slow()
        tg.start_soon(call, queued)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()  # queued() waits behind it
        tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            for _ in range(5):
                await anyio.lowlevel.checkpoint()  # the cancellation reaches both callers
        release.set()
    # The running job ended and its caller got the result, as to_thread's would; the queued one
    # was withdrawn.
    assert results == ["slow"]
    await _threads.run_small(lambda: None)  # the writer has passed queued() by now
    assert ran == ["slow"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_lane_never_swallows_a_native_cancellation() -> None:
    running, release = threading.Event(), threading.Event()

    def slow() -> int:
        running.set()
        release.wait(10)
        return 1

    task = asyncio.ensure_future(_threads.run_small(slow))
    await anyio.to_thread.run_sync(running.wait)
    task.cancel()
    await anyio.lowlevel.checkpoint()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_shim_saves_from_many_threads_all_survive(store_path: Path, publish: str) -> None:
    # A Flask view's local save runs in the view's own thread (a private loop per thread at a
    # time, no handoff to the shim's loop): sixteen request threads saving one name at once
    # still get sixteen files, whole, under sixteen names, and the shim's loop never starts.
    from async_store import Store
    from tests.conftest import make_app

    app = make_app("flask", store_path)
    store = Store(app)
    sent = [os.urandom(1000 + i) for i in range(16)]
    names: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(sent))

    def view(data: bytes) -> None:
        try:
            with app.app_context():
                start.wait()
                for _ in range(5):
                    provider = store.Provider(data, "inbox", filename="same.bin")
                    provider.save()
                    names.append(provider.filename)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=view, args=(data,)) for data in sent]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(set(names)) == len(names) == 5 * len(sent) and "same.bin" in names
        stored = sorted((store_path / "inbox" / name).read_bytes() for name in names)
        assert stored == sorted(sent * 5)
        assert leftovers(store_path) == []
        assert not [t for t in threading.enumerate() if t.name == "async_store"]
    finally:
        store.close()


def test_shim_close_waits_for_calls_in_flight(store_path: Path) -> None:
    # store.close() from one thread while another thread's call runs on the shim's loop: the
    # call finishes and returns its result, as it did when the portal's task group held it.
    from async_store import Store
    from tests.conftest import make_app

    store = Store(make_app("flask", store_path))
    owner = store._portal
    running = threading.Event()
    results: list[str] = []

    async def slow() -> str:
        running.set()
        await anyio.sleep(0.3)
        return "done"

    caller = threading.Thread(target=lambda: results.append(owner.call(slow)))
    caller.start()
    assert running.wait(10)
    store.close()
    caller.join(10)
    assert results == ["done"]
