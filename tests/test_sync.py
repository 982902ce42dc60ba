"""The sync shim: a thin, thread-safe facade over the async core."""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from async_store import Store, StoreError, SyncStore
from tests.conftest import make_app


@pytest.fixture
def flask_store(store_path: Path) -> Iterator[SyncStore]:
    store: SyncStore = Store(make_app("flask", store_path))
    yield store
    store.close()


def test_sync_file_is_a_real_binary_file(flask_store: SyncStore) -> None:
    data = bytes(range(256)) * 1000
    provider = flask_store.Provider(data, filename="a.bin")
    provider.save()
    with provider.open() as f:
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        f.seek(-6, io.SEEK_END)
        assert f.read() == data[-6:]
        f.seek(0)
        out = io.BytesIO()
        shutil.copyfileobj(io.BufferedReader(f), out)
    assert out.getvalue() == data
    assert f.closed


def test_one_loop_thread_serves_every_call(flask_store: SyncStore) -> None:
    warmup = flask_store.Provider(b"x", filename="warmup")
    warmup.save()  # a local save runs in this thread (Provider.loop_bound)...
    assert warmup.exists()  # ...exists() starts the loop thread
    before = threading.active_count()
    for i in range(50):
        provider = flask_store.Provider(b"x", filename=f"{i}.txt")
        provider.save()
        assert provider.exists()
    assert threading.active_count() <= before + 1


def test_close_then_use_again(flask_store: SyncStore) -> None:
    flask_store.Provider(b"1", filename="a.txt").save()
    flask_store.close()
    assert not [t for t in threading.enumerate() if t.name == "async_store"]
    assert flask_store.Provider(b"2", filename="b.txt").save() == "/uploads/b.txt"


def test_mirrors_the_async_provider(flask_store: SyncStore) -> None:
    provider = flask_store.Provider(b"x", "docs", filename="r.txt")
    assert repr(provider) == "<SyncLocalProvider unsaved 'docs/r.txt'>"
    assert not provider.saved
    assert provider.save() == provider.absolute_url == provider.url() == "/uploads/docs/r.txt"
    assert provider.saved and provider.location == "docs" and provider.filename == "r.txt"
    assert provider.relative_path == "docs/r.txt" and provider.relative_url == "/uploads/docs/r.txt"
    assert provider.absolute_path.endswith("/docs/r.txt")
    assert provider.provider.relative_path == "docs/r.txt"
    provider.delete()
    assert not provider.exists()


async def test_shim_inside_a_running_loop_is_refused(flask_store: SyncStore) -> None:
    provider = flask_store.Provider(b"x", filename="a.txt")
    with pytest.raises(StoreError, match=r"AsyncProvider\(\.\.\.\)\.save\(\)"):
        provider.save()
    with pytest.raises(StoreError, match="running event loop"):
        with provider.open():
            pass


@pytest.mark.parametrize("kind", ["bytes", "path", "iterator"])
def test_large_saves_start_no_thread_each(
    flask_store: SyncStore, tmp_path: Path, kind: str
) -> None:
    # Each save above one chunk used to start a worker thread for its private loop's run, and
    # stop it again at the end of the run: a thread per upload.
    data = b"x" * (3 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    make: Callable[[], object] = {
        "bytes": lambda: data,
        "path": lambda: tmp_path / "big.bin",
        "iterator": lambda: iter([data[:1000], data[1000:]]),
    }[kind]
    flask_store.Provider(make(), filename="warmup.bin").save()
    started: list[str] = []

    def tracer(*_: object) -> None:
        started.append(threading.current_thread().name)

    threading.settrace(tracer)  # called in every thread started from now on
    try:
        saved = [flask_store.Provider(make(), filename="big.bin") for _ in range(5)]
        for provider in saved:
            provider.save()
    finally:
        threading.settrace(None)
    assert started == []
    assert all(Path(p.absolute_path).read_bytes() == data for p in saved)


def test_a_local_save_runs_in_the_calling_thread_with_no_loop(
    flask_store: SyncStore, store_path: Path
) -> None:
    """A FileStorage, bytes or a path saved to local disk through the shim never starts the
    shim's loop thread: the blocking steps run where the view runs."""
    flask_store.close()
    (store_path.parent / "src.bin").write_bytes(b"p" * 5000)
    for fp in (b"b" * 10, store_path.parent / "src.bin", io.BytesIO(b"f" * 70_000)):
        flask_store.Provider(fp, filename="a.bin").save()
    assert not [t for t in threading.enumerate() if t.name == "async_store"]
    assert sorted(p.stat().st_size for p in store_path.iterdir()) == [10, 5000, 70_000]

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            raise ConnectionResetError("the client went away")

    before = sorted(p.name for p in store_path.iterdir())
    with pytest.raises(ConnectionResetError, match="the client went away"):
        flask_store.Provider(io.BufferedReader(Broken()), filename="b.bin").save()
    # The upload's own error, and nothing left of it: no temp file, no file under its name.
    assert sorted(p.name for p in store_path.iterdir()) == before
    assert not [t for t in threading.enumerate() if t.name == "async_store"]
