"""A save cancelled while its file is being published leaves no file behind.

Quart cancels a request's task when its client goes away, and hypercorn cancels it again when
the connection closes: native ``Task.cancel()`` calls, which anyio's shields do not hold. A
caller cancelled that way stops waiting for the worker thread that publishes its file; the
thread goes on and publishes it under a name the caller never learns. The save must then take
it back: the upload failed, and an orphan nobody can refer to is a file lost to its owner and
kept from the store's cleanup.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import quart

from async_store import Store
from async_store.backends import _local_fs, _local_write


async def _chunks() -> AsyncIterator[bytes]:
    yield b"a" * 100_000
    yield b"b" * 100_000


@pytest.mark.parametrize("content", ["bytes", "file", "async"])
async def test_a_save_cancelled_while_publishing_leaves_no_file(
    tmp_path: Path, content: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = quart.Quart(__name__)
    app.config["STORE_PATH"] = str(tmp_path)
    store = Store(app)
    publishing = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slowed(claim: Any) -> Any:
        def slow_claim(*args: Any) -> Any:
            """The local backend's publishing step, stretched to hit it with a cancel."""
            loop.call_soon_threadsafe(publishing.set)
            time.sleep(0.3)
            return claim(*args)

        return slow_claim

    async with app.app_context():
        # What _local_write imported (and calls): naming an unnamed file, or a temp file where the
        # file system makes no unnamed files.
        monkeypatch.setattr(_local_write, "_claim", slowed(_local_fs._claim))
        monkeypatch.setattr(_local_write, "_claim_unnamed", slowed(_local_fs._claim_unnamed))
        source: Any = {
            "bytes": b"x" * 1000,  # the small-jobs lane
            "file": (tmp_path.parent / "big.bin"),  # a blocking source through to_thread
            "async": _chunks(),  # the pipelined path
        }[content]
        if content == "file":
            source.write_bytes(b"y" * 3_000_000)
        task = asyncio.ensure_future(store.AsyncProvider(source, filename="report.txt").save())
        await asyncio.wait_for(publishing.wait(), 5)
        for _ in range(2):  # as Quart, then hypercorn
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
    monkeypatch.undo()
    deadline = time.monotonic() + 3
    while os.listdir(tmp_path) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert os.listdir(tmp_path) == []
    # Nothing is held up for the saves that follow: the same name is free again.
    async with app.app_context():
        provider = store.AsyncProvider(b"again", filename="report.txt")
        await provider.save()
        assert provider.filename == "report.txt"
    store.close()


async def test_a_background_save_cancelled_while_its_job_is_published_uploads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for background mode: a job published for a caller that got no answer would be
    delivered behind its back, an orphan in the bucket."""
    app = quart.Quart(__name__)
    store_path = tmp_path / "store"
    app.config.update(
        STORE_PATH=str(store_path),
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(tmp_path / "spool"),
    )
    store = Store(app)
    publishing = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with app.app_context():
        background = store.state().background
        assert background is not None
        spool = background.spool
        write_job = spool.write_job

        def slow_write_job(*args: Any) -> None:
            loop.call_soon_threadsafe(publishing.set)
            time.sleep(0.3)
            write_job(*args)

        monkeypatch.setattr(spool, "write_job", slow_write_job)
        task = asyncio.ensure_future(store.AsyncProvider(b"x" * 5000, filename="a.txt").save())
        await asyncio.wait_for(publishing.wait(), 5)
        for _ in range(2):
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.setattr(spool, "write_job", write_job)
        # A save after it is delivered as usual: the cancelled one never appears.
        await store.AsyncProvider(b"kept", filename="b.txt").save()
        spooled = spool.job_ids
        deadline = time.monotonic() + 5
        # The spool's listing blocks: the test's own look, in a thread.
        while (await anyio.to_thread.run_sync(spooled) or not store_path.exists()) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for a wrongly kept job to be delivered too
        assert await anyio.to_thread.run_sync(spooled) == []
    assert sorted(os.listdir(store_path)) == ["b.txt"]
    assert os.listdir(tmp_path / "spool" / "names") == []
    store.close()
