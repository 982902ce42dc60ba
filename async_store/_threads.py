"""A worker-thread lane for small blocking jobs: one writer thread, batched handoffs.

``anyio.to_thread.run_sync`` pays a loop → worker → loop handoff per call, and for a 4 KiB save
that handoff costs about as much as the disk work. Here jobs queue for one long-lived writer
thread, which runs them one after another; finished jobs collect in a per-loop inbox that the
loop empties in one wake-up. With many saves in flight the writer never sleeps between jobs and
the loop wakes once per batch, not once per job; a lone save takes two plain thread wake-ups.

Only small jobs belong here (one chunk of in-memory content): the lane is a single thread, so a
long job would hold up every other. Cancellation behaves as with ``to_thread.run_sync``: a job
still queued is withdrawn and never runs (as a call still waiting for a worker thread); a job
already running is waited for, shielded, and runs to its end (a failed job cleans up after
itself). Jobs run without the caller's context variables.

A loop that only serves blocking callers (see :func:`serve_blocking_callers`: the sync shim's
loop thread) runs small jobs itself: its callers wait in threads of their own anyway, so a
handoff to the writer would only add a round trip. (The shim's local saves need no loop at
all: they run in the caller's thread, ``Provider.save_blocking``.)

The inbox needs the asyncio loop (``call_soon_threadsafe``); on other backends (trio) the lane is
plain ``to_thread.run_sync``.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import sys
import threading
import weakref
from collections import deque
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_small", "serve_blocking_callers"]

T = TypeVar("T")

#: Finished jobs handed to the loop at once, at most: more makes the loop's burst of work (and
#: the writer's wait for the GIL after it) longer; fewer wakes the loop more often.
_BATCH = 16


class _Job(Generic[T]):
    __slots__ = ("delivered", "error", "fn", "future", "inbox", "result", "token")

    def __init__(self, fn: Callable[[], T], inbox: _Inbox, future: asyncio.Future[None]) -> None:
        self.fn = fn
        self.inbox = inbox
        self.future = future  # replaced if the waiter is cancelled while the job runs
        self.delivered = False
        self.result: T | None = None
        self.error: BaseException | None = None
        # Whoever pops the token first decides: the writer (it runs) or a cancelled waiter (it
        # never will). list.pop is atomic, so neither side takes a lock the loop could block on.
        self.token = [True]

    def take(self) -> bool:
        try:
            return self.token.pop()
        except IndexError:
            return False

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # None only when T allows it


class _Inbox:
    """Finished jobs of one event loop, handed over in one callback however many there are."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: deque[_Job[Any]] = deque()  # append/popleft are atomic: no lock on the loop
        self.scheduled = False

    def wake(self) -> None:
        """Writer side, after filing jobs in ``done``: wake the loop unless a wake-up is on its
        way already."""
        # File first, then look: if the pending flush already cleared the flag it drains after
        # our append; if it has not, it will. Either way no job waits for a lost wake-up.
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: its tasks no longer wait for anything
                self.done.clear()

    def _flush(self) -> None:
        self.scheduled = False  # before draining, so a job filed while we drain gets a new flush
        done = self.done
        while done:
            job = done.popleft()
            job.delivered = True
            if not job.future.done():  # done: its waiter was cancelled natively, and left
                job.future.set_result(None)


class _Writer:
    """The thread that runs queued jobs; started on first use, lives as long as the process."""

    def __init__(self) -> None:
        self.queue: SimpleQueue[_Job[Any] | None] = SimpleQueue()  # put() never blocks the loop
        self.thread: threading.Thread | None = None
        self._start = [True]  # popped once, atomically: two loops never start two writers

    def submit(self, job: _Job[Any]) -> None:
        self.queue.put(job)
        if self._start:
            try:
                self._start.pop()
            except IndexError:
                return  # another loop's thread is starting it: the job waits in the queue
            self.thread = threading.Thread(target=self._run, name="async_store writer", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        queue, finished = self.queue, list[_Job[Any]]()
        while True:
            # Hand finished jobs over when no more are queued (a lone save waits for nothing)
            # or when a batch is full (the loop can queue more while we write).
            if finished and (len(finished) >= _BATCH or queue.empty()):
                _deliver(finished)
                finished = []
            job = queue.get()
            if job is None:
                return
            if not job.take():
                continue  # withdrawn by its cancelled waiter
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the waiting task, like to_thread does
                job.error = exc
            finished.append(job)

    def stop(self) -> None:
        """At exit: let queued jobs finish (a daemon thread would die mid-file otherwise)."""
        thread = self.thread
        if thread is not None and thread.is_alive():
            self.queue.put(None)
            thread.join()


def _deliver(jobs: list[_Job[Any]]) -> None:
    for job in jobs:
        job.inbox.done.append(job)
    for inbox in {job.inbox for job in jobs}:
        inbox.wake()


_writer = _Writer()
_inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}
# Loops whose every caller is a blocked thread: small jobs run on them directly.
_inline_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
atexit.register(lambda: _writer.stop())


def _reset_after_fork() -> None:
    global _writer
    _writer = _Writer()  # the child has no writer thread, and its queue may hold the parent's
    _inboxes.clear()
    _inline_loops.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        # Flask's async views run a loop per request: forget the closed ones as new ones come.
        for old in list(_inboxes):
            if old.is_closed():
                _inboxes.pop(old, None)
        inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


def _on_asyncio() -> bool:
    # Trio depends on sniffio, so without sniffio imported only asyncio can be running
    # (anyio assumes the same).
    sniffio = sys.modules.get("sniffio")
    return sniffio is None or bool(sniffio.current_async_library() == "asyncio")


async def serve_blocking_callers() -> None:
    """Mark the running loop as serving only callers that block in threads of their own (the
    sync shim's portal): :func:`run_small` then runs jobs on it directly, skipping the writer."""
    if _on_asyncio():
        _inline_loops.add(asyncio.get_running_loop())


async def run_small(fn: Callable[[], T]) -> T:
    """Run the small blocking job ``fn`` in the writer thread and return its result.

    Like ``anyio.to_thread.run_sync(fn)``, cancellation included, but batched with the other
    small jobs in flight. Keep ``fn`` short: every other small job waits behind it.
    """
    if not _on_asyncio():
        return await anyio.to_thread.run_sync(fn)
    await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller queues nothing
    loop = asyncio.get_running_loop()
    if loop in _inline_loops:
        return fn()
    job = _Job(fn, _inbox(loop), loop.create_future())
    _writer.submit(job)
    try:
        await job.future
    except BaseException:
        if job.take():
            raise  # still queued: withdrawn, it never runs
        # Running already: wait for its end, shielded, as to_thread does.
        while not job.delivered:
            job.future = loop.create_future()
            with anyio.CancelScope(shield=True):
                await job.future
        if anyio.current_effective_deadline() != -math.inf:
            raise  # not an anyio scope's cancellation, which would come again: never lose it
        # An anyio scope is cancelled: like to_thread, hand back the result; the cancellation
        # reaches the caller at its next checkpoint.
    return job.outcome()
