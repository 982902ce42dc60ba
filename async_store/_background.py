"""Background uploads: ``save()`` returns once the file is spooled; an anyio task delivers it.

The seed's gevent greenlets, rebuilt so that no upload is ever lost:

* **Spool.** ``save()`` picks the final name (the backend says it is free, and a reservation
  file under ``STORE_SPOOL_PATH/names`` claims it across processes), so the URL is known at
  once. Meanwhile the upload is written to ``.tmp-ID/``, which is then published by renaming it
  to ``ID/`` (``data`` and ``job.json``): a job is either whole or not there. Nothing is hashed
  on the way: only a redelivery after a crash compares content, and it reads the spooled copy.
* **Delivery.** Each long-lived event loop (Quart's serving loop, the sync shim's loop) runs an
  :class:`Uploader`: a task group fed by a queue. A delivery holds an ``flock`` on its job, so
  several workers sharing one spool never deliver a job twice, and claims only the name
  reserved for it. If that name is already taken by the same content (a crash after the upload,
  before the spool was cleared) the job counts as delivered: exactly once. Failures are retried
  with exponential backoff; a job that still fails stays spooled, and the uploader looks at the
  spool again every ``STORE_BACKGROUND_MAX_BACKOFF`` seconds, so an S3 outage longer than every
  retry is delivered once it ends, without a restart.
* **Shutdown.** Draining waits ``STORE_BACKGROUND_DRAIN_TIMEOUT`` for running deliveries, then
  cancels them; whatever was not delivered stays spooled and the next start delivers it.

Quart's ``add_background_task`` is not used: it cancels work 5 seconds into shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import IO, TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

from ._sources import Guard, Source, finish_anyway, write_source
from .exceptions import NotConfiguredError, UploadError, first_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import StoreConfig
    from .providers.base import Provider

__all__ = ["Background", "BackgroundUpload", "Job"]

log = logging.getLogger("async_store.background")
Status = Literal["pending", "delivered", "failed", "discarded"]
_STALE_SECONDS = 3600


@dataclass
class Job:
    """What ``job.json`` holds: where the spooled file goes, and how delivery went so far."""

    id: str
    target: str
    location: str
    name: str
    size: int
    created: float
    attempts: int = 0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.location}/{self.name}" if self.location else self.name


_JOB_FIELDS = frozenset(field.name for field in fields(Job))


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


class _Spool:
    """The spool folder of one app: jobs, name reservations, locks. Every method blocks."""

    def __init__(self, path: str, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.names = os.path.join(path, "names")

    def prepare(self) -> None:
        os.makedirs(self.names, exist_ok=True)

    def _reservation(self, target: str, key: str) -> str:
        return os.path.join(self.names, hashlib.sha256(f"{target}\0{key}".encode()).hexdigest())

    def reserve(self, target: str, key: str) -> bool:
        try:
            os.close(os.open(self._reservation(target, key), os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        return True

    def release(self, target: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._reservation(target, key))

    def job_ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if not n.startswith(".") and n != "names")

    def _sync(self, f: IO[bytes]) -> None:
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())

    def write_job(self, directory: str, job: Job) -> None:
        temp = os.path.join(directory, ".job.json")
        with open(temp, "wb") as f:
            f.write(json.dumps(asdict(job)).encode())
            self._sync(f)
        os.replace(temp, os.path.join(directory, "job.json"))

    def load(self, job_id: str) -> Job:
        with open(os.path.join(self.path, job_id, "job.json"), "rb") as f:
            data = json.loads(f.read())
        # Keys that other versions write (``sha256``, once computed while spooling) are skipped.
        return Job(**{k: v for k, v in data.items() if k in _JOB_FIELDS})

    def data(self, job_id: str) -> str:
        return os.path.join(self.path, job_id, "data")

    def lock(self, job_id: str) -> int | None:
        """An exclusive lock on a job, or None if it is gone or another process delivers it."""
        try:
            fd = os.open(os.path.join(self.path, job_id, "job.json"), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not os.path.exists(os.path.join(self.path, job_id)):  # delivered while we waited
            os.close(fd)
            return None
        return fd

    def discard(self, job_id: str) -> bool:
        """Mark a job as not wanted any more; False if it is gone (delivered already)."""
        try:
            os.close(os.open(os.path.join(self.path, job_id, "discard"), os.O_CREAT, 0o644))
        except FileNotFoundError:
            return False
        return True

    def discarded(self, job_id: str) -> bool:
        return os.path.exists(os.path.join(self.path, job_id, "discard"))

    def done(self, job: Job) -> None:
        """Forget a delivered job: one rename makes it gone for every reader, then clean up."""
        finished = os.path.join(self.path, f".done-{job.id}")
        os.rename(os.path.join(self.path, job.id), finished)
        self.release(job.target, job.key)
        shutil.rmtree(finished, ignore_errors=True)

    def sweep(self) -> None:
        """Remove what crashes leave: finished jobs, spooling that never completed, and the
        names such spooling reserved (stale, and held by no job)."""
        now = time.time()
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith(".done-") or (
                name.startswith(".tmp-") and now - os.path.getmtime(path) > _STALE_SECONDS
            ):
                shutil.rmtree(path, ignore_errors=True)
        held = set()
        for job_id in self.job_ids():
            with contextlib.suppress(OSError, ValueError, TypeError):
                job = self.load(job_id)
                held.add(os.path.basename(self._reservation(job.target, job.key)))
        for name in os.listdir(self.names):
            path = os.path.join(self.names, name)
            with contextlib.suppress(FileNotFoundError):
                if name not in held and now - os.path.getmtime(path) > _STALE_SECONDS:
                    os.unlink(path)


class Uploader:
    """Delivers jobs on one event loop, in a task group of its own."""

    def __init__(self, background: Background) -> None:
        self._background = background
        self._loop = asyncio.get_running_loop()
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._limiter = anyio.CapacityLimiter(background.concurrency)
        self._task: asyncio.Task[None] | None = None
        self._rescanner: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Its own task, not a task group entered in a startup hook: the host task of such a
        # group (Quart's lifespan task) would be cancelled by any failure inside it.
        self._task = self._loop.create_task(self._run(), name="async_store uploads")
        self._rescanner = self._loop.create_task(self._rescan(), name="async_store spool scan")

    async def _rescan(self) -> None:
        """Queue again what is still spooled (failed for now, or left by a dead worker)."""
        background = self._background
        while True:
            await anyio.sleep(max(background.max_backoff, 0.05))
            try:
                job_ids = await anyio.to_thread.run_sync(background.spool.job_ids)
            except OSError as exc:  # pragma: no cover - the spool folder went away
                log.warning("cannot list the spool %r: %s", background.spool.path, exc)
                continue
            for job_id in job_ids:
                background._schedule(job_id, self)

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
                await self._background.deliver(job_id)
            except Exception:
                # One job's surprise (its folder removed under us, a full disk) must not take
                # the task group, and every other delivery on this loop, down with it.
                log.exception("background delivery of job %s failed; it stays spooled", job_id)

    async def drain(self, seconds: float) -> None:
        """Deliver what is queued within ``seconds``, then cancel the rest (it stays spooled)."""
        self._send.close()
        if self._rescanner is not None:
            self._rescanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rescanner
        task = self._task
        if task is None:
            return
        with anyio.move_on_after(seconds):
            await asyncio.shield(task)
        if not task.done():
            log.warning("background uploads still running after %ss: left spooled", seconds)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Background:
    """Background uploads of one app: its spool, and one :class:`Uploader` per loop."""

    def __init__(
        self,
        config: StoreConfig,
        provider_class: type[Provider],
        fallback_loop: Callable[[], None],
    ) -> None:
        self.spool = _Spool(str(config["STORE_SPOOL_PATH"]), bool(config["STORE_FSYNC"]))
        self.provider_class = provider_class
        self.chunk_size = config.chunk_size
        self.retries = int(config["STORE_BACKGROUND_RETRIES"])
        self.backoff = float(config["STORE_BACKGROUND_BACKOFF"])
        self.max_backoff = float(config["STORE_BACKGROUND_MAX_BACKOFF"])
        self.concurrency = int(config["STORE_BACKGROUND_CONCURRENCY"])
        self.drain_timeout = float(config["STORE_BACKGROUND_DRAIN_TIMEOUT"])
        # Jobs of another app that shares the spool folder are not ours to deliver.
        self.target = f"{provider_class.__module__}.{provider_class.__name__}:" + ":".join(
            str(config.get(k) or "")
            for k in ("STORE_PATH", "STORE_S3_BUCKET", "STORE_S3_ENDPOINT_URL")
        )
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

    # --- lifecycle, on a long-lived loop -----------------------------------------------------

    async def startup(self) -> None:
        """Start an uploader on this loop and deliver what earlier runs left spooled."""
        uploader = Uploader(self)
        uploader.start()
        self._uploaders[asyncio.get_running_loop()] = uploader
        await anyio.to_thread.run_sync(self.spool.sweep)
        for job_id in await anyio.to_thread.run_sync(self.spool.job_ids):
            self._schedule(job_id, uploader)

    async def shutdown(self) -> None:
        uploader = self._uploaders.pop(asyncio.get_running_loop(), None)
        if uploader is not None:
            await uploader.drain(self.drain_timeout)

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

    # --- spooling, in save() -----------------------------------------------------------------

    async def submit(self, provider: Provider, source: Source, candidates: list[str]) -> Job:
        """Reserve a name and spool ``source``, then queue the delivery; return the job.

        Both at once: the name check is a round trip to the backend (a HEAD for S3), the spooling
        a local copy, and ``save()`` waits for the slower of the two, not for their sum.
        """
        location = provider.location
        job_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"
        temp = os.path.join(self.spool.path, f".tmp-{job_id}")
        job = Job(job_id, self.target, location, "", 0, time.time())
        reserved: list[str] = []

        def open_data() -> IO[bytes]:
            os.mkdir(temp)
            return open(os.path.join(temp, "data"), "wb")

        def finish(data: IO[bytes]) -> None:
            self.spool._sync(data)
            job.size = data.tell()

        published = os.path.join(self.spool.path, job_id)

        def publish() -> None:
            self.spool.write_job(temp, job)
            os.rename(temp, published)  # now a job

        def discard() -> None:
            # A job only when the caller was cancelled natively (Quart, hypercorn) while it was
            # published: it got no answer, so the upload must not happen behind its back.
            shutil.rmtree(published, ignore_errors=True)
            shutil.rmtree(temp, ignore_errors=True)
            if reserved:
                self.spool.release(self.target, job.key)

        async def reserve() -> None:
            job.name = await self._reserve(provider, location, candidates)
            reserved.append(job.name)

        guard = Guard(discard)
        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reserve)
                    await write_source(source, open_data, finish, discard, self.chunk_size)
            except BaseExceptionGroup as group:
                # One of the two failed (a taken name, an unreadable upload): raise it as itself.
                error = first_error(group)
                raise error from error.__cause__
            # Runs to its end whatever cancels this task; a cancel that interrupts the wait for
            # it still fails save(), and the guard makes the discard below take the job back.
            await finish_anyway(lambda: anyio.to_thread.run_sync(guard.run, publish))
        except BaseException:
            await finish_anyway(lambda: anyio.to_thread.run_sync(guard.clean))
            raise
        handle = self._handles[job_id] = BackgroundUpload(job_id, job.key)
        provider._background_upload = handle
        self._schedule(job_id, self._uploader())
        return job

    async def _reserve(self, provider: Provider, location: str, candidates: list[str]) -> str:
        reachable = True
        for index, name in enumerate(candidates):
            key = f"{location}/{name}" if location else name
            if reachable:
                try:
                    if await provider._exists(key):
                        continue
                except Exception as exc:
                    if not provider._is_outage(exc):
                        raise  # refused for good (access denied): tell the caller now
                    # The backend is down: the upload is spooled all the same, which is what
                    # background mode is for. Unchecked, the client's name may be taken
                    # there: take a collision-proof ``{root}_{shortuuid}`` one.
                    log.warning(
                        "name check for %r failed, spooling under a unique name: %s", key, exc
                    )
                    reachable = False
            if not reachable and index == 0:
                continue
            # Shielded (the thread runs to its end anyway): a reservation made is reported, so
            # a cancelled save releases it.
            with anyio.CancelScope(shield=True):
                claimed = await anyio.to_thread.run_sync(self.spool.reserve, self.target, key)
            if claimed:
                return name
        from .providers.base import no_free_name

        raise no_free_name(location)

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, job_id: str) -> None:
        """Deliver one spooled job, with retries; never raises."""
        fd = await anyio.to_thread.run_sync(self.spool.lock, job_id)
        if fd is None:
            with self._lock:
                self._scheduled.discard(job_id)
            return
        handle = self._handles.setdefault(job_id, BackgroundUpload(job_id, "?"))
        try:
            job = await anyio.to_thread.run_sync(self.spool.load, job_id)
            handle.key = job.key
            if job.target != self.target:
                return
            await self._attempts(job, handle)
        finally:
            os.close(fd)
            with self._lock:
                self._scheduled.discard(job_id)
            if handle.done:
                self._handles.pop(job_id, None)

    async def _attempts(self, job: Job, handle: BackgroundUpload) -> None:
        from .providers.base import NoFreeName

        provider = self.provider_class(job.key)
        for attempt in range(self.retries):
            try:
                if await anyio.to_thread.run_sync(self.spool.discarded, job.id):
                    await anyio.to_thread.run_sync(self.spool.done, job)
                    handle._finish("discarded")
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
                if await anyio.to_thread.run_sync(self.spool.discarded, job.id):
                    # Deleted (a rolled-back transaction) while it was on its way.
                    await provider.delete(missing_ok=True)
                    await anyio.to_thread.run_sync(self.spool.done, job)
                    handle._finish("discarded")
                    return
                await anyio.to_thread.run_sync(self.spool.done, job)
                handle._finish("delivered")
                return
            except UploadError as exc:
                handle._finish("failed", exc)
                log.error("background upload of %r failed for good: %s", job.key, exc)
                return
            except Exception as exc:
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
                    await anyio.sleep(min(self.max_backoff, self.backoff * 2**attempt))
        error = UploadError(
            f"could not deliver {job.key!r} after {self.retries} attempts "
            f"({job.last_error}); it stays spooled and is retried every "
            f"{self.max_backoff:g} s (STORE_BACKGROUND_MAX_BACKOFF) and at the next start"
        )
        handle._finish("failed", error)

    async def discard(self, upload: BackgroundUpload) -> bool:
        """Cancel a pending upload (its file was deleted before delivery). False if it was
        delivered already, and the stored file is the caller's to delete."""
        if upload.done:
            return False
        return await anyio.to_thread.run_sync(self.spool.discard, upload.job_id)

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


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
