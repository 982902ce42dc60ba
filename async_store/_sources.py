"""The write loop: a :class:`Source` streamed into a file, cleaned up on any failure or cancel.

``write_source`` copies a source into the file a backend opens and publishes, in as few
worker-thread hops as the source allows; ``Guard`` orders those blocking steps against the
cleanup, and ``finish_anyway`` runs a cleanup to its end even when its task is cancelled again.

The source types themselves (what ``Provider(fp)`` accepts, ``to_source``) are in
``_source_types`` and ``_source_inputs``; they are re-exported here, where the rest of the
package imports them from.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import IO, TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from ._source_inputs import AsyncReadable, FileLike, SourceInput, to_source
from ._source_types import Source, SourceFailure
from ._threads import run_small

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = [
    "AsyncReadable",
    "FileLike",
    "Guard",
    "Source",
    "SourceFailure",
    "SourceInput",
    "finish_anyway",
    "to_source",
    "write_source",
]

T = TypeVar("T")


async def write_source(
    source: Source,
    open_file: Callable[[], IO[bytes]],
    finish: Callable[[IO[bytes]], T],
    cleanup: Callable[[], None],
    chunk_size: int,
) -> T:
    """Stream ``source`` into the file ``open_file()`` returns, then return ``finish(file)``.

    Blocking sources take one worker-thread hop for everything (open, copy, finish): in the
    small-jobs lane (batched handoffs, see ``_threads``) when the content is in memory and fits
    in one chunk, else through ``to_thread``, so big files never hold up the lane. Async
    sources take a hop per ``chunk_size`` written. On any failure or cancellation
    ``cleanup()`` runs (in a thread, to its end even if cancelled again) before the error
    propagates; it undoes whatever ``open_file`` and ``finish`` did, a published file included
    (a caller cancelled during ``finish`` never learns the name). All three callables block.
    """
    guard = Guard(cleanup)
    try:
        if source.is_blocking:

            def everything() -> T:
                with open_file() as f:
                    for chunk in source.blocking_chunks(chunk_size):
                        f.write(chunk)
                    return finish(f)

            size = source.size
            if size is not None and size <= chunk_size:
                return await run_small(lambda: guard.run(everything))
            return await anyio.to_thread.run_sync(guard.run, everything)
        f = await anyio.to_thread.run_sync(guard.open, open_file)
        with f:
            await _write_pipelined(source.chunks(chunk_size), f, chunk_size)
            return await anyio.to_thread.run_sync(guard.run, finish, f)
    except BaseException:
        await finish_anyway(lambda: anyio.to_thread.run_sync(guard.clean))
        raise


class Guard:
    """Orders one save's blocking steps against its cleanup.

    A natively cancelled caller (``Task.cancel()``: Quart and hypercorn cancel a request whose
    client has gone) stops waiting for its worker thread, which may still be running a step, or
    not have started it yet, when the cleanup runs. Steps and the cleanup take one lock, and no
    step starts once the cleanup has run: so a file is never opened, written or published after
    its cleanup, and the cleanup sees, and undoes, whatever the steps did (a published file
    included: the caller never learnt its name).
    """

    def __init__(self, cleanup: Callable[[], None]) -> None:
        self._cleanup = cleanup
        self._lock = threading.Lock()
        self._cleaned = False
        self._opened: list[IO[bytes]] = []

    def run(self, step: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._cleaned:
                raise RuntimeError("the save was cancelled before this step started")
            return step(*args)

    def open(self, open_file: Callable[[], IO[bytes]]) -> IO[bytes]:
        # Kept where the cleanup finds it: a caller cancelled while the thread opens the file
        # never gets it back, and it must still be closed.
        f = self.run(open_file)
        self._opened.append(f)
        return f

    def clean(self) -> None:
        with self._lock:
            self._cleaned = True
            for f in self._opened:
                with contextlib.suppress(OSError):
                    f.close()
            self._cleanup()


# Cleanups still running after their task was cancelled again: asyncio keeps only weak
# references to tasks.
_finishing: set[asyncio.Task[Any]] = set()


async def finish_anyway(func: Callable[[], Awaitable[T]]) -> T:
    """Run ``func()`` to its end even if this task is cancelled while it runs.

    ``anyio.CancelScope(shield=True)`` holds against anyio's cancel scopes, not against a native
    ``Task.cancel()``: Quart cancels a request's task when its client goes away, and hypercorn
    cancels it again when the connection closes. A second cancel during a shielded
    ``to_thread.run_sync`` drops the job before its thread starts (a temp file left behind).
    Here the work runs in a task of its own that no cancel reaches; a cancelled caller raises at
    once and the cleanup finishes a moment later.
    """
    task = asyncio.ensure_future(func())
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    with anyio.CancelScope(shield=True):
        result = await asyncio.shield(task)
    return result


async def _write_pipelined(chunks: AsyncIterator[bytes], f: IO[bytes], chunk_size: int) -> None:
    """Write ``chunks`` to ``f`` in batches of ``chunk_size``, one batch in a worker thread
    while the next is read: the disk and the source (a request body being parsed) overlap."""
    send, receive = anyio.create_memory_object_stream[list[bytes]]()

    def write(batch: list[bytes]) -> None:
        for chunk in batch:
            f.write(chunk)

    async def writer() -> None:
        async with receive:
            async for batch in receive:
                await anyio.to_thread.run_sync(write, batch)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            async with send:
                batch: list[bytes] = []
                size = 0
                async for chunk in chunks:
                    batch.append(chunk)  # no copy into a buffer: the thread writes each
                    size += len(chunk)
                    if size >= chunk_size:
                        await send.send(batch)  # waits while the writer is busy
                        batch, size = [], 0
                if batch:
                    await send.send(batch)
    except BaseExceptionGroup as group:  # the task group wraps even a single error
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        raise error from error.__cause__
