"""Background uploads as their callers and event loops see them.

:class:`BackgroundUpload` is the handle a background ``save()`` returns (``provider.upload``):
status, :meth:`~BackgroundUpload.wait`, callbacks, safe across threads. :class:`Uploader`
delivers a :class:`~async_store._background.Background`'s jobs on one long-lived event loop
(Quart's serving loop, the sync shim's loop): a queue, a task group, a rescan of the spool, a
watch for outcomes other workers post, and the drain at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

from .exceptions import ProviderUnavailableError, UploadError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._background import Background

__all__ = ["BackgroundUpload", "Status", "Uploader", "means_down"]

log = logging.getLogger("async_store.background")
Status = Literal["pending", "delivered", "failed", "discarded"]
#: How often a worker with uploads in flight looks for outcomes other workers posted.
_WATCH_SECONDS = 0.2
#: How long shutdown waits for cancelled deliveries to clean up.
_CANCEL_GRACE = 3.0
#: What shutdown asks the backend about to learn whether it is up (nothing is stored there).
_PROBE_KEY = "async-store-shutdown-probe"


class BackgroundUpload:
    """One background upload, as the caller sees it: status, :meth:`wait`, callbacks.

    Thread-safe: deliveries may run on another event loop than the caller's.
    """

    def __init__(self, job_id: str, key: str) -> None:
        self.job_id = job_id
        self.key = key
        self.status: Status = "pending"
        self.error: UploadError | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[BackgroundUpload], Any]] = []

    def __repr__(self) -> str:
        return f"<BackgroundUpload {self.key!r} {self.status}>"

    @property
    def done(self) -> bool:
        return self.status != "pending"

    def add_done_callback(self, callback: Callable[[BackgroundUpload], Any]) -> None:
        """Call ``callback(upload)`` once delivered or failed (at once if that already happened),
        on the thread that finished it; an async caller should hand it back to its own loop."""
        with self._lock:
            if not self.done:
                self._callbacks.append(callback)
                return
        callback(self)

    async def wait(self) -> None:
        """Wait until the file is delivered (bound it with ``anyio.fail_after``).

        :raises UploadError: if delivery failed (the file stays spooled and is retried).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        self.add_done_callback(lambda _: loop.call_soon_threadsafe(resolve))
        await future
        if self.error is not None:
            raise self.error

    def _finish(self, status: Status, error: UploadError | None = None) -> None:
        with self._lock:
            self.status, self.error = status, error
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a caller's hook must not break the uploader
                log.exception("background upload callback failed for %r", self.key)


class Uploader:
    """Delivers jobs on one event loop, in a task group of its own."""

    def __init__(self, background: Background) -> None:
        self._background = background
        self._loop = asyncio.get_running_loop()
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._limiter = anyio.CapacityLimiter(background.concurrency)
        self._task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []
        #: Set when draining starts: deliveries stop retrying, sleepers wake up.
        self.stopping = anyio.Event()
        #: Whether the last attempt on this loop met an outage (cleared by a success).
        self.down = False

    def start(self) -> None:
        # Its own task, not a task group entered in a startup hook: the host task of such a
        # group (Quart's lifespan task) would be cancelled by any failure inside it.
        self._task = self._loop.create_task(self._run(), name="async_store uploads")
        self._helpers = [
            self._loop.create_task(self._rescan(), name="async_store spool scan"),
            self._loop.create_task(self._watch(), name="async_store outcomes"),
        ]

    async def _rescan(self) -> None:
        """Queue again what is still spooled (failed for now, or left by a dead worker)."""
        background = self._background
        while True:
            await anyio.sleep(max(background.max_backoff, 0.05))
            try:
                job_ids = await anyio.to_thread.run_sync(background.spool.job_ids)
                await anyio.to_thread.run_sync(background.spool.sweep_inboxes)
            except OSError as exc:  # pragma: no cover - the spool folder went away
                log.warning("cannot list the spool %r: %s", background.spool.path, exc)
                continue
            for job_id in job_ids:
                background._schedule(job_id, self)

    async def _watch(self) -> None:
        """Follow the outcomes other workers post for the jobs this process spooled."""
        background = self._background
        while True:
            await anyio.sleep(_WATCH_SECONDS)
            if background.outcomes.watching:
                await background.outcomes.collect()

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg, self._receive:
            async for job_id in self._receive:
                tg.start_soon(self._deliver, job_id)

    def submit(self, job_id: str) -> None:
        """Queue a job; safe from any thread."""

        def put() -> None:
            with contextlib.suppress(anyio.ClosedResourceError):  # draining: stays spooled
                self._send.send_nowait(job_id)

        self._loop.call_soon_threadsafe(put)

    async def _deliver(self, job_id: str) -> None:
        async with self._limiter:
            try:
                await self._background.deliver(job_id, self)
            except Exception:
                # One job's surprise (its folder removed under us, a full disk) must not take
                # the task group, and every other delivery on this loop, down with it.
                log.exception("background delivery of job %s failed; it stays spooled", job_id)

    def hopeless(self) -> bool:
        """Whether the backend is known to be down: then nothing running will land soon."""
        return self.down or self._background.unreachable

    async def drain(self, seconds: float) -> None:
        """Deliver what is queued within ``seconds``, then cancel the rest (it stays spooled).

        Deliveries waiting to retry stop at once, and so does the wait once the backend is known
        to be down: a quick check (one attempt) tells whether the running ones can land.
        """
        self.stopping.set()
        self._send.close()
        task = self._task
        probe: asyncio.Task[None] | None = None
        if task is not None:
            with anyio.move_on_after(seconds):
                await asyncio.wait([task], timeout=0.05)  # nothing running: done at once
                if not task.done() and not self.hopeless():
                    probe = self._loop.create_task(self._probe())
                while not task.done() and not self.hopeless():
                    await asyncio.wait([task], timeout=0.05)
            if not task.done():
                why = "the backend is down" if self.hopeless() else f"running after {seconds}s"
                log.warning("background uploads left spooled for the next start: %s", why)
                task.cancel()
                await asyncio.wait([task], timeout=_CANCEL_GRACE)
        if probe is not None:
            probe.cancel()
            await asyncio.wait([probe], timeout=_CANCEL_GRACE)
        for helper in self._helpers:
            helper.cancel()
        if self._helpers:
            await asyncio.wait(self._helpers, timeout=_CANCEL_GRACE)

    async def _probe(self) -> None:
        """Whether the backend answers now; ``down`` if it does not."""
        try:
            await self._background.backend.exists_now(_PROBE_KEY)
        except Exception as exc:
            if means_down(exc):
                self.down = True


def means_down(exc: BaseException) -> bool:
    """Whether a backend call's error means the backend is down for now: a
    :class:`ProviderUnavailableError` anywhere in its chain of causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProviderUnavailableError):
            return True
        seen = seen.__cause__
    return False
