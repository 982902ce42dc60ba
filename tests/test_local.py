"""What the local provider does beyond the shared contract: links, disk errors, memory, fsync.

Each test runs for Quart and Flask apps and, where it takes ``driver``, through both APIs.
"""

from __future__ import annotations

import errno
import os
import re
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from async_store import NotFoundError, ProviderError

COLLISION = re.compile(r"^(?P<root>.+)_[2-9A-HJ-NP-Za-km-z]{22}(?P<ext>\.\w+)?$")


def leftovers(store_path: Path) -> list[str]:
    """Temp or other hidden files anywhere in the store."""
    return [p.name for p in store_path.rglob(".*")]


async def agen(*chunks: bytes) -> Any:
    for chunk in chunks:
        await anyio.lowlevel.checkpoint()
        yield chunk


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
