"""What an object-store backend needs to send uploads in parts, whatever the store's API.

* :class:`Budgets`: the upload bytes one event loop's saves hold in memory, bounded;
* :func:`read_head`: reads an upload up to the multipart threshold, in as few worker-thread
  hops as it can, and tells one write (the file ended there) from a multipart upload;
* :func:`cut` / :func:`acut`: chunks re-cut into parts of exactly the part size;
* :func:`send_parts`: a multipart upload's loop, parts in flight bounded (memory is N parts),
  aborted when anything fails or the save is cancelled, so no part is left to be billed;
* :class:`Claims`: one conditional write of a key at a time in this process.

The S3 backend (``backends/s3.py``) uses all of it; what is S3's (requests, ETags, the
conditional complete) stays there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .exceptions import first_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from ._sources import Source

__all__ = [
    "Budget",
    "Budgets",
    "Charge",
    "Claims",
    "Cutter",
    "Parts",
    "acut",
    "cut",
    "in_thread",
    "read_head",
    "send_parts",
    "take",
]


class Budget:
    """Bytes of upload content that one event loop's saves hold in memory (parts being read or
    sent): at most ``limit``, whatever the number of concurrent uploads.

    A save takes bytes as it reads them and waits while the budget is spent, so its client is
    slowed down (TCP backpressure) instead of memory growing with concurrency. The oldest save
    may always go on, past the limit if it must: every waiting save holds bytes, so otherwise
    they could all wait for each other. Memory stays under the limit plus one save's worth.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._holders: dict[int, int] = {}  # ticket: bytes held, oldest first
        self._tickets = itertools.count()
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def charge(self) -> AsyncIterator[Charge]:
        """One save's account; what it still holds is given back when the block ends."""
        ticket = next(self._tickets)
        self._holders[ticket] = 0
        try:
            yield Charge(self, ticket)
        finally:
            self.used -= self._holders.pop(ticket)
            self._wake()

    async def take(self, ticket: int, size: int) -> None:
        while self.used + size > self.limit and next(iter(self._holders)) != ticket:
            await self._changed.wait()
        self.used += size
        self._holders[ticket] += size

    def give(self, ticket: int, size: int) -> None:
        size = min(size, self._holders[ticket])
        self.used -= size
        self._holders[ticket] -= size
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class Charge:
    """One save's account in a :class:`Budget`."""

    def __init__(self, budget: Budget, ticket: int) -> None:
        self._budget, self._ticket = budget, ticket

    async def take(self, size: int) -> None:
        await self._budget.take(self._ticket, size)

    def give(self, size: int) -> None:
        self._budget.give(self._ticket, size)

    async def chunks(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, each taken from the budget once read."""
        async for chunk in chunks:
            await self.take(len(chunk))
            yield chunk


class Budgets:
    """A :class:`Budget` of ``limit`` bytes for each event loop, made when first asked for."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Budget] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> Budget:
        """This loop's budget."""
        loop = asyncio.get_running_loop()
        budget = self._budgets.get(loop)
        if budget is None:
            budget = self._budgets[loop] = Budget(self.limit)
        return budget


class Claims:
    """Serialises this process's conditional writes of one key, per event loop.

    Not every server makes a conditional write atomic (SeaweedFS lets two simultaneous
    ``CompleteMultipartUpload`` calls with ``If-None-Match`` for one new key both succeed: the
    later one silently replaces the earlier). One writer at a time per key keeps the check
    meaningful within a process; across processes it is the server's job.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[asyncio.AbstractEventLoop, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def claiming(self, key: str) -> AsyncIterator[None]:
        ident = (asyncio.get_running_loop(), key)
        lock, users = self._held.get(ident, (asyncio.Lock(), 0))
        self._held[ident] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._held[ident]
            if users == 1:
                del self._held[ident]
            else:
                self._held[ident] = (lock, users - 1)


# --- reading an upload into parts -----------------------------------------------------------


async def read_head(
    source: Source, charge: Charge, threshold: int, part_size: int
) -> tuple[list[bytes], AsyncIterator[bytes] | None]:
    """Read up to ``threshold`` bytes of ``source``: ``(parts, None)`` when the file ended there
    (one write), ``(first parts, the rest)`` for a multipart upload. Parts are ``part_size``
    bytes (the last one less); every byte read is taken from ``charge``'s budget."""
    if source.is_blocking:
        size = source.size
        if size is not None and size <= threshold:
            # In memory, one write: reading cannot block, so no worker thread at all (a hop
            # costs ~1 ms at concurrency 1 on a 2-core VM, an eighth of a 4 KiB PUT).
            await charge.take(size)
            return list(source.blocking_chunks(part_size)), None
        # Else the whole head in one hop: not one per chunk plus one more to find the end.
        reserved = threshold + part_size
        await charge.take(reserved)
        parts = cut(source.blocking_chunks(part_size), part_size)
        head, more = await anyio.to_thread.run_sync(take, parts, threshold)
        charge.give(reserved - sum(map(len, head)))
        return head, (charge.chunks(in_thread(parts)) if more else None)
    chunks = acut(charge.chunks(source.chunks(part_size)), part_size).__aiter__()
    head = []
    size = 0
    async for part in chunks:
        head.append(part)
        size += len(part)
        if size > threshold:
            return head, chunks
    return head, None


class Cutter:
    """Re-cuts chunks into parts of exactly ``size`` bytes (the last one less)."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Chunks are collected, then joined once: one copy per part, never a growing buffer.
        self._pending: list[bytes] = []
        self._count = 0

    def add(self, chunk: bytes) -> Iterator[bytes]:
        self._pending.append(chunk)
        self._count += len(chunk)
        if self._count == self.size:  # chunks that add up to a part (the usual case): no cut
            yield b"".join(self._pending)
            self._pending, self._count = [], 0
        while self._count >= self.size:
            joined = b"".join(self._pending)
            yield joined[: self.size]
            self._pending, self._count = [joined[self.size :]], self._count - self.size
            del joined

    def end(self) -> Iterator[bytes]:
        if self._count:
            yield b"".join(self._pending)


def cut(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` as parts of ``size`` bytes (blocking)."""
    cutter = Cutter(size)
    for chunk in chunks:
        yield from cutter.add(chunk)
    yield from cutter.end()


async def acut(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """``chunks`` as parts of ``size`` bytes."""
    cutter = Cutter(size)
    async for chunk in chunks:
        for part in cutter.add(chunk):
            yield part
    for part in cutter.end():
        yield part


def take(parts: Iterator[bytes], threshold: int) -> tuple[list[bytes], bool]:
    """Blocking: the parts up to just past ``threshold``, and whether more may follow."""
    head: list[bytes] = []
    size = 0
    for part in parts:
        head.append(part)
        size += len(part)
        if size > threshold:
            return head, True
    return head, False


async def in_thread(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's items, each fetched in a worker thread."""
    while part := await anyio.to_thread.run_sync(next, parts, b""):
        yield part


# --- sending them ----------------------------------------------------------------------------


class Parts(ABC):
    """One multipart upload, begun: what :func:`send_parts` calls. A backend implements it
    with its store's requests."""

    @abstractmethod
    async def send(self, number: int, body: bytes) -> None:
        """Upload part ``number`` (from 1)."""

    @abstractmethod
    async def complete(self) -> None:
        """Make the object of every part sent visible (where a name is claimed)."""

    @abstractmethod
    async def abort(self) -> None:
        """Throw the parts away; called shielded from cancellation, its errors ignored."""


async def send_parts(
    upload: Parts,
    head: list[bytes],
    rest: AsyncIterator[bytes],
    *,
    concurrency: int,
    charge: Charge,
) -> None:
    """Send ``head`` then ``rest`` with at most ``concurrency`` parts in flight, each given
    back to ``charge`` once sent, then :meth:`~Parts.complete` the upload. When anything fails
    (a part, the upload's own stream, the completion) or the caller is cancelled, the upload is
    aborted and the first error raised as itself."""
    # Each part in flight holds its bytes: the limiter bounds memory to N parts.
    limiter = anyio.Semaphore(concurrency)

    async def send(number: int, body: bytes) -> None:
        try:
            await upload.send(number, body)
        finally:
            limiter.release()
            charge.give(len(body))

    try:
        try:
            async with anyio.create_task_group() as tg:
                following = len(head) + 1
                for number, body in enumerate(head, start=1):
                    await limiter.acquire()
                    tg.start_soon(send, number, body)
                head.clear()  # the part uploads hold them now; free each as it is sent
                for number in itertools.count(following):
                    # Wait for a free slot *before* reading the next part into memory.
                    await limiter.acquire()
                    body = await anext(rest, b"")  # parts are never empty
                    if not body:
                        limiter.release()
                        break
                    tg.start_soon(send, number, body)
                    del body
        except BaseExceptionGroup as group:
            # One failure (a part upload, or the upload's own stream): raise it as itself.
            raise first_error(group) from None
        await upload.complete()
    except BaseException:
        # Failed, cancelled or lost the name: never leave parts behind to be billed.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await upload.abort()
        raise
