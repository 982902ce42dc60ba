"""Background uploads: ``save()`` returns once the file is spooled; an anyio task delivers it.

The seed's gevent greenlets, rebuilt so that no upload is ever lost:

* **Spool.** ``save()`` picks the final name (the backend says it is free, and a reservation
  under ``STORE_SPOOL_PATH/names``, a symlink to the job's id, claims it across processes), so
  the URL is known at once. Meanwhile the upload is written to ``.tmp-ID/``, which is then
  published by renaming it to ``ID/`` (``data`` and ``job.json``): a job is either whole or not
  there. Nothing is hashed on the way: only a redelivery after a crash compares content.
* **Destination.** A job names where its bytes go (provider kind, bucket, key prefix), not how
  the backend is reached: an app restarted with ``STORE_S3_ENDPOINT_URL`` spelt otherwise still
  delivers what it spooled. Jobs of another destination are reported by ``drain`` and ``check``.
* **Delivery.** Each long-lived event loop (Quart's serving loop, the sync shim's loop) runs an
  :class:`Uploader`: a task group fed by a queue. A delivery holds an ``flock`` on the job's
  ``data`` (never replaced, unlike ``job.json``), so several workers sharing one spool never
  deliver a job twice, and claims only the name reserved for it. If that name is already taken
  by the same content (a crash after the upload, before the spool was cleared) the job counts as
  delivered: exactly once. Failures are retried with exponential backoff; a job that still fails
  stays spooled, and the uploader looks at the spool again every ``STORE_BACKGROUND_MAX_BACKOFF``
  seconds, so an outage longer than every retry is delivered once it ends, without a restart.
* **Outcomes.** Whichever worker delivers (or gives up on, or discards) a job, the handle of the
  ``save()`` that spooled it follows: a worker posts the outcome to the spooling worker's inbox
  (``.inbox-*``, there while that worker has uploads in flight), which it polls.
* **Outages.** A name check that cannot reach the backend is remembered until a delivery
  succeeds; meanwhile ``save()`` skips the check, spools under a unique name in one thread hop
  (as a local save does) and leaves the delivery to the next scan.
* **Deletes.** ``discard()`` marks a spooled job, found by its handle or its name's reservation,
  and removes it at once unless a delivery holds it; that delivery looks for the mark after it
  took the job out of the spool, and deletes what it delivered.
* **Shutdown.** Draining waits ``STORE_BACKGROUND_DRAIN_TIMEOUT`` for running deliveries, then
  cancels them; a delivery waiting to retry stops at once, a failed one is not retried, and the
  wait ends at once when the backend is known to be down (a quick check tells, if nothing did
  yet). What was not delivered stays spooled and the next start delivers it.

Quart's ``add_background_task`` is not used: it cancels work 5 seconds into shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
from typing import IO, TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

from ._sources import Guard, Source, finish_anyway, write_source
from ._spool import Job, Spool
from .backends.local import os_error
from .exceptions import NotConfiguredError, NotFoundError, StoreError, UploadError, first_error

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .config import StoreConfig
    from .providers.base import Provider

__all__ = ["Background", "BackgroundUpload"]

log = logging.getLogger("async_store.background")
Status = Literal["pending", "delivered", "failed", "discarded"]
#: How often a worker with uploads in flight looks for outcomes other workers posted.
_WATCH_SECONDS = 0.2
#: How long shutdown waits for cancelled deliveries to clean up.
_CANCEL_GRACE = 3.0
#: What shutdown asks the backend about to learn whether it is up (nothing is stored there).
_PROBE_KEY = "async-store-shutdown-probe"


_ENDED: dict[str, Status] = {"delivered": "delivered", "failed": "failed", "discarded": "discarded"}


def destination(provider_class: type[Provider]) -> str:
    """Where a provider's files go: its backend's identity (kind, bucket, key prefix), never
    the endpoint. A provider of the old kind, without a backend object: its writing class."""
    if provider_class.backend_class is not None:
        return provider_class.backend.identity
    config = provider_class.config
    parts = [_kind(provider_class)]
    if config.get("STORE_S3_BUCKET"):
        parts.append(f"bucket={config['STORE_S3_BUCKET']}")
    parts.append(f"path={config.get('STORE_PATH') or ''}")
    return " ".join(parts)


def _kind(cls: type) -> str:
    """What stores the files: the backend's kind (``S3GeventProvider`` stores like
    ``S3Provider``: ``s3``), or the class that writes them."""
    backend: Any = getattr(cls, "backend_class", None)
    if backend is not None:
        return str(backend.kind)
    writer = next((c for c in cls.__mro__ if "_save" in vars(c)), cls)
    return f"{writer.__module__}.{writer.__qualname__}"


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
            if background._inbox is not None:
                await background._collect()

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
        provider = self._background.provider_class(_PROBE_KEY)
        try:
            await provider._exists_now(_PROBE_KEY)
        except Exception as exc:
            if _means_down(provider, exc):
                self.down = True


class Background:
    """Background uploads of one app: its spool, and one :class:`Uploader` per loop."""

    def __init__(
        self,
        config: StoreConfig,
        provider_class: type[Provider],
        fallback_loop: Callable[[], None],
    ) -> None:
        self.spool = Spool(str(config["STORE_SPOOL_PATH"]), bool(config["STORE_FSYNC"]))
        self.provider_class = provider_class
        self.chunk_size = config.chunk_size
        self.retries = int(config["STORE_BACKGROUND_RETRIES"])
        self.backoff = float(config["STORE_BACKGROUND_BACKOFF"])
        self.max_backoff = float(config["STORE_BACKGROUND_MAX_BACKOFF"])
        self.concurrency = int(config["STORE_BACKGROUND_CONCURRENCY"])
        self.drain_timeout = float(config["STORE_BACKGROUND_DRAIN_TIMEOUT"])
        # Jobs of another app that shares the spool folder are not ours to deliver.
        self.target = destination(provider_class)
        self._kind = _kind(provider_class)
        self._old_target_tail = (
            ":".join(str(config.get(k) or "") for k in ("STORE_PATH", "STORE_S3_BUCKET")) + ":"
        )
        #: This worker's name in the spool: jobs it spools carry it, others post outcomes to it.
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._inbox: int | None = None
        #: Since when a name check found the backend unreachable (None: not known to be down).
        self._unreachable_since: float | None = None
        self._start_fallback_loop = fallback_loop
        self._uploaders: dict[asyncio.AbstractEventLoop, Uploader] = {}
        self._handles: dict[str, BackgroundUpload] = {}
        self._scheduled: set[str] = set()
        self._lock = threading.Lock()
        try:
            self.spool.prepare()
        except OSError as exc:
            raise NotConfiguredError(
                f"STORE_SPOOL_PATH {self.spool.path!r} cannot be created ({exc.strerror}); set "
                f"it to a folder this process can write to (on a disk that survives restarts)."
            ) from exc

    # --- which jobs are ours -------------------------------------------------------------------

    def owns(self, target: str) -> bool:
        """Whether a job's target is this app's destination (however the backend is reached)."""
        if target == self.target:
            return True
        # An earlier version's ``module.Class:PATH:BUCKET:ENDPOINT``: any endpoint will do.
        name, sep, rest = target.partition(":")
        old = bool(sep) and " " not in name and rest.startswith(self._old_target_tail)
        return old and self._same_kind(name)

    def _same_kind(self, name: str) -> bool:
        if name == self._kind:
            return True
        module, _, attr = name.rpartition(".")
        # Only classes already imported: a spool file never makes this process import code.
        found = getattr(sys.modules.get(module), attr, None)
        return isinstance(found, type) and _kind(found) == self._kind

    async def jobs(self) -> tuple[list[Job], list[Job]]:
        """The spooled jobs: this app's, and those of other destinations (never delivered here)."""
        spool = self.spool

        def scan() -> tuple[list[Job], list[Job]]:
            ours: list[Job] = []
            others: list[Job] = []
            for job_id in spool.job_ids():
                try:
                    job = spool.load(job_id)
                except (OSError, ValueError, TypeError):
                    continue  # delivered meanwhile, or not a job
                (ours if self.owns(job.target) else others).append(job)
            return ours, others

        return await anyio.to_thread.run_sync(scan)

    def _adopt(self, job: Job) -> None:
        """Give a job an earlier version spooled this version's target and reservation (with
        the lock held), so a delete by path finds it and a new save cannot take its name."""
        old = job.target
        job.target = self.target
        self.spool.reserve(self.target, job.key, job.id)
        self.spool.write_job(os.path.join(self.spool.path, job.id), job)
        self.spool.release(old, job.key, job.id)

    # --- lifecycle, on a long-lived loop -----------------------------------------------------

    async def startup(self) -> None:
        """Start an uploader on this loop and deliver what earlier runs left spooled."""
        uploader = Uploader(self)
        uploader.start()
        self._uploaders[asyncio.get_running_loop()] = uploader
        await anyio.to_thread.run_sync(self.spool.sweep)
        ours, _ = await self.jobs()
        for job in ours:
            if job.target != self.target:
                await anyio.to_thread.run_sync(self._adopt_locked, job.id)
        for job in ours:
            self._schedule(job.id, uploader)

    def _adopt_locked(self, job_id: str) -> None:
        fd = self.spool.lock(job_id)
        if fd is None:
            return  # another worker delivers it (and adopts it first)
        try:
            job = self.spool.load(job_id)
            if job.target != self.target and self.owns(job.target):
                self._adopt(job)
        finally:
            os.close(fd)

    async def shutdown(self) -> None:
        uploader = self._uploaders.pop(asyncio.get_running_loop(), None)
        if uploader is not None:
            await uploader.drain(self.drain_timeout)
        if not self._uploaders:
            # Nobody here polls any more: a worker that delivers one of our jobs finds no inbox.
            await anyio.to_thread.run_sync(self._close_inbox, True)

    def _schedule(self, job_id: str, uploader: Uploader) -> None:
        with self._lock:
            if job_id in self._scheduled:
                return
            self._scheduled.add(job_id)
        uploader.submit(job_id)

    def _uploader(self) -> Uploader:
        uploader = self._uploaders.get(asyncio.get_running_loop())
        if uploader is not None:
            return uploader
        # This loop is not long-lived (a Flask async view's, a script's): deliver on the sync
        # shim's loop thread, which outlives it and is drained at exit.
        self._start_fallback_loop()
        for loop, uploader in list(self._uploaders.items()):
            if not loop.is_closed():
                return uploader
        raise UploadError("no event loop is running background uploads")  # pragma: no cover

    # --- the outage memory -------------------------------------------------------------------

    @property
    def unreachable(self) -> bool:
        """Whether a name check found the backend down, and no delivery succeeded since."""
        return self._unreachable_since is not None

    def _note_unreachable(self, key: str, exc: Exception) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning(
                "cannot reach the backend to check the name %r (%s): until a delivery succeeds, "
                "background saves skip the check and spool under unique names",
                key,
                exc,
            )

    def _note_reachable(self) -> None:
        if self._unreachable_since is not None:
            self._unreachable_since = None
            log.info("a background delivery succeeded: name checks resume")

    # --- handles and outcomes ----------------------------------------------------------------

    def _register(self, handle: BackgroundUpload) -> None:
        """Keep a handle until its job ends; open the inbox others post its outcome to."""
        with self._lock:
            self._handles[handle.job_id] = handle
            if self._inbox is None:
                self._inbox = self.spool.open_inbox(self.token)

    def _close_inbox(self, always: bool = False) -> None:
        with self._lock:
            if self._inbox is not None and (always or not self._handles):
                self.spool.close_inbox(self.token, self._inbox)
                self._inbox = None

    async def _settle(self, job_id: str, status: str, error: UploadError | None) -> None:
        """Finish this process's handle of a job; close the inbox once none is left."""
        handle = self._handles.get(job_id)
        if status == "delivered":
            self._note_reachable()  # wherever it landed, the backend answers
        ended = _ENDED.get(status)
        if handle is None or ended is None:
            return
        handle._finish(ended, error)
        if status != "failed":  # a failed job stays spooled and may still be delivered
            self._handles.pop(job_id, None)
            if not self._handles:
                await anyio.to_thread.run_sync(self._close_inbox)

    async def _report(self, job: Job, status: Status, error: UploadError | None = None) -> None:
        """Tell whoever waits for a job how it ended: our own handle, or its worker's inbox."""
        if job.id in self._handles or not job.owner or job.owner == self.token:
            await self._settle(job.id, status, error)
            return
        message = str(error) if error is not None else None
        await anyio.to_thread.run_sync(self.spool.post, job.owner, job.id, status, message)
        if status == "delivered":
            self._note_reachable()

    async def _collect(self) -> None:
        try:
            outcomes = await anyio.to_thread.run_sync(self.spool.collect, self.token)
        except OSError:
            return  # the inbox is being closed
        for job_id, status, message in outcomes:
            error = UploadError(message) if status == "failed" and message else None
            await self._settle(job_id, status, error)

    # --- spooling, in save() -----------------------------------------------------------------

    async def submit(self, provider: Provider, source: Source, candidates: Iterable[str]) -> Job:
        """Reserve a name and spool ``source``, then queue the delivery; return the job.

        Both at once: the name check is a round trip to the backend (a HEAD for S3), the spooling
        a local copy, and ``save()`` waits for the slower of the two, not for their sum.
        """
        location = provider.location
        names = iter(candidates)  # made as they are needed: a collision name costs ~7 µs
        job_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"
        temp = os.path.join(self.spool.path, f".tmp-{job_id}")
        job = Job(job_id, self.target, location, "", 0, time.time(), owner=self.token)
        handle = BackgroundUpload(job_id, "")
        reserved: list[str] = []

        def open_data() -> IO[bytes]:
            os.mkdir(temp)
            return open(os.path.join(temp, "data"), "wb")

        def finish(data: IO[bytes]) -> None:
            self.spool._sync(data)
            job.size = data.tell()

        published = os.path.join(self.spool.path, job_id)

        def publish() -> None:
            handle.key = job.key
            self._register(handle)  # before the job exists: its outcome has somewhere to go
            self.spool.write_job(temp, job, False)  # not visible yet: no temp file needed
            os.rename(temp, published)  # now a job

        def discard() -> None:
            # A job only when the caller was cancelled natively (Quart, hypercorn) while it was
            # published: it got no answer, so the upload must not happen behind its back.
            shutil.rmtree(published, ignore_errors=True)
            shutil.rmtree(temp, ignore_errors=True)
            if reserved:
                self.spool.release(self.target, job.key, job_id)
            if self._handles.pop(job_id, None) is not None:
                self._close_inbox()

        async def reserve() -> None:
            job.name = await self._reserve(provider, location, names, job_id)
            reserved.append(job.name)

        def open_unchecked() -> IO[bytes]:
            job.name = self._claim(location, itertools.islice(names, 1, None), job_id)
            reserved.append(job.name)
            return open_data()

        def finish_and_publish(data: IO[bytes]) -> None:
            finish(data)
            publish()

        guard = Guard(discard)
        try:
            if self.unreachable:
                # No name check to wait for: claim, spool and publish in one hop, as a local
                # save does (the write's guard takes a published job back if cancelled).
                await write_source(
                    source, open_unchecked, finish_and_publish, discard, self.chunk_size
                )
            else:
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(reserve)
                        await write_source(source, open_data, finish, discard, self.chunk_size)
                except BaseExceptionGroup as group:
                    # One of the two failed (a taken name, an unreadable upload): raise it as
                    # itself.
                    error = first_error(group)
                    raise error from error.__cause__
                # Runs to its end whatever cancels this task; a cancel that interrupts the wait
                # for it still fails save(), and the guard makes the discard below take the job
                # back.
                await finish_anyway(lambda: anyio.to_thread.run_sync(guard.run, publish))
        except BaseException as exc:
            await finish_anyway(lambda: anyio.to_thread.run_sync(guard.clean))
            if isinstance(exc, OSError) and not isinstance(exc, StoreError):
                # The spool's own disk (full, read-only, …): the backend's and the upload's
                # errors arrive mapped, or as the upload's own.
                where = job.key if job.name else provider.relative_path
                raise os_error(exc, where, self.spool.path, "STORE_SPOOL_PATH") from exc
            raise
        provider._background_upload = handle
        if not self.unreachable:  # else the next scan tries: no herd of doomed attempts
            self._schedule(job_id, self._uploader())
        return job

    def _claim(self, location: str, names: Iterable[str], job_id: str) -> str:
        """Reserve the first of ``names`` that is free in the spool (blocks)."""
        for name in names:
            if self.spool.reserve(self.target, f"{location}/{name}" if location else name, job_id):
                return name
        from .providers.base import no_free_name

        raise no_free_name(location)

    async def _reserve(
        self, provider: Provider, location: str, candidates: Iterable[str], job_id: str
    ) -> str:
        # While the backend is known to be down, no check: it would only wait, then fail.
        check = not self.unreachable
        for index, name in enumerate(candidates):
            key = f"{location}/{name}" if location else name
            if check:
                try:
                    if await provider._exists_now(key):
                        continue
                except Exception as exc:
                    if not provider._is_outage(exc):
                        raise  # refused for good (access denied): tell the caller now
                    # The backend is down: the upload is spooled all the same, which is what
                    # background mode is for.
                    self._note_unreachable(key, exc)
                    check = False
            if not check and index == 0:
                # Unchecked, the client's name may be taken there: take a collision-proof
                # ``{root}_{shortuuid}`` one.
                continue
            # Shielded (the thread runs to its end anyway): a reservation made is reported, so
            # a cancelled save releases it.
            with anyio.CancelScope(shield=True):
                claimed = await anyio.to_thread.run_sync(
                    self.spool.reserve, self.target, key, job_id
                )
            if claimed:
                return name
        from .providers.base import no_free_name

        raise no_free_name(location)

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, job_id: str, uploader: Uploader | None = None) -> None:
        """Deliver one spooled job, with retries; never raises."""
        fd = await anyio.to_thread.run_sync(self.spool.lock, job_id)
        if fd is None:
            with self._lock:
                self._scheduled.discard(job_id)
            return
        try:
            job = await anyio.to_thread.run_sync(self.spool.load, job_id)
            if not self.owns(job.target):
                return
            if job.target != self.target:
                await anyio.to_thread.run_sync(self._adopt, job)
            await self._attempts(job, uploader)
        finally:
            os.close(fd)
            with self._lock:
                self._scheduled.discard(job_id)

    async def _attempts(self, job: Job, uploader: Uploader | None) -> None:
        from .providers.base import NoFreeName

        provider = self.provider_class(job.key)
        stopping = uploader.stopping if uploader is not None else None
        for attempt in range(self.retries):
            if uploader is not None and uploader.stopping.is_set():
                if attempt or uploader.hopeless():
                    return  # shutting down: a retry, or an attempt on a dead backend, waits
            try:
                if await anyio.to_thread.run_sync(self.spool.discarded, job.id):
                    await self._end(provider, job, uploaded=False)
                    return
                try:
                    source = Source(job.name, path=self.spool.data(job.id))
                    with provider._map_errors(job.key):
                        await provider._save(job.location, iter([job.name]), source)
                except NoFreeName:
                    if not await self._already_there(provider, job):
                        raise UploadError(
                            f"{job.key!r} was taken by another file before this upload could "
                            f"be delivered; it stays spooled as job {job.id}"
                        ) from None
                if uploader is not None:
                    uploader.down = False
                self._note_reachable()
                await self._end(provider, job, uploaded=True)
                return
            except UploadError as exc:
                log.error("background upload of %r failed for good: %s", job.key, exc)
                await self._report(job, "failed", exc)
                return
            except Exception as exc:
                if uploader is not None and _means_down(provider, exc):
                    uploader.down = True
                job.attempts += 1
                job.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "background upload of %r failed (attempt %d of %d): %s",
                    job.key,
                    attempt + 1,
                    self.retries,
                    job.last_error,
                )
                directory = os.path.join(self.spool.path, job.id)
                await anyio.to_thread.run_sync(self.spool.write_job, directory, job)
                if attempt + 1 < self.retries:
                    delay = min(self.max_backoff, self.backoff * 2**attempt)
                    if stopping is None:
                        await anyio.sleep(delay)
                    else:
                        with anyio.move_on_after(delay):
                            await stopping.wait()  # shutdown does not wait out a backoff
        error = UploadError(
            f"could not deliver {job.key!r} after {self.retries} attempts "
            f"({job.last_error}); it stays spooled and is retried every "
            f"{self.max_backoff:g} s (STORE_BACKGROUND_MAX_BACKOFF) and at the next start"
        )
        await self._report(job, "failed", error)

    async def _end(self, provider: Provider, job: Job, uploaded: bool) -> None:
        """Take a delivered (or discarded) job out of the spool and report how it ended."""
        with anyio.CancelScope(shield=True):  # the file landed: the bookkeeping must follow
            discarded = await anyio.to_thread.run_sync(self.spool.finish, job)
            if discarded and uploaded:
                # Deleted (a rolled-back transaction) while it was on its way.
                try:
                    with provider._map_errors(job.key):
                        await provider._delete(job.key)
                except NotFoundError:
                    pass
                except StoreError as exc:
                    log.error(
                        "%r was deleted while it was being delivered, and deleting the delivered "
                        "copy failed: %s; delete it by hand",
                        job.key,
                        exc,
                    )
            await self._report(job, "discarded" if discarded else "delivered")
            await anyio.to_thread.run_sync(self.spool.clear, job)

    async def discard(self, key: str, upload: BackgroundUpload | None = None) -> bool:
        """Cancel the upload of ``key`` (its file was deleted before delivery) if it is still
        spooled: True then, and the backend holds nothing to delete (or will not, once the
        delivery under way lands). False if nothing is spooled for it: delete the stored file.

        ``upload`` is the provider's handle when it spooled the file; without it (a provider made
        from a stored path) the name's reservation leads to the job.
        """
        if upload is not None:
            if upload.status in ("delivered", "discarded"):
                return False
            job_id: str | None = upload.job_id
        else:
            job_id = await anyio.to_thread.run_sync(self.spool.reserved_job, self.target, key)
        if job_id is None:
            return False
        spooled, removed = await anyio.to_thread.run_sync(self._cancel, job_id)
        if removed is not None:
            await self._report(removed, "discarded")
        return spooled

    def _cancel(self, job_id: str) -> tuple[bool, Job | None]:
        """Mark a job discarded; remove it at once unless a delivery holds it (that delivery
        then deletes what it delivers). (still spooled, the job if removed here)."""
        if not self.spool.mark_discarded(job_id):
            return False, None
        fd = self.spool.lock(job_id)
        if fd is None:
            return True, None  # being delivered: it sees the mark, before or after the upload
        try:
            job = self.spool.load(job_id)
            self.spool.finish(job)
            self.spool.clear(job)
            return True, job
        finally:
            os.close(fd)

    async def _already_there(self, provider: Provider, job: Job) -> bool:
        """Whether the stored file is this job's content (delivered before a crash).

        Hashed here, on this rare path, not while spooling: ``save()`` waits for the spooling.
        """
        spooled = await anyio.to_thread.run_sync(_sha256, self.spool.data(job.id))
        stored = hashlib.sha256()
        try:
            async with provider.open() as f:
                while chunk := await f.read(self.chunk_size):
                    stored.update(chunk)
        except Exception:
            return False
        return stored.hexdigest() == spooled


def _means_down(provider: Provider, exc: BaseException) -> bool:
    """Whether a delivery's error (ours, with the backend's as its cause) means "down"."""
    seen: BaseException | None = exc
    while seen is not None:  # ours (ProviderUnavailableError), or a provider's own kind
        if isinstance(seen, Exception) and provider._is_outage(seen):
            return True
        seen = seen.__cause__
    return False


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
