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
import hashlib
import logging
import os
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._outcomes import Outcomes
from ._sources import Source
from ._spool import Job, Spool
from ._uploads import BackgroundUpload, Uploader, means_down
from .backends.base import NoFreeName
from .exceptions import NotConfiguredError, NotFoundError, StoreError, UploadError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .backends.base import Backend
    from .config import StoreConfig

__all__ = ["Background", "BackgroundUpload"]

log = logging.getLogger("async_store.background")


def _kind(cls: type) -> str:
    """What stores the files: the backend's kind (``S3GeventProvider`` stores like
    ``S3Provider``: ``s3``), or the class that writes them."""
    backend: Any = getattr(cls, "backend_class", None)
    if backend is not None:
        return str(backend.kind)
    writer = next((c for c in cls.__mro__ if "_save" in vars(c)), cls)
    return f"{writer.__module__}.{writer.__qualname__}"


class Background:
    """Background uploads of one app: its spool, and one :class:`Uploader` per loop."""

    def __init__(
        self, config: StoreConfig, backend: Backend, fallback_loop: Callable[[], None]
    ) -> None:
        self.spool = Spool(str(config["STORE_SPOOL_PATH"]), bool(config["STORE_FSYNC"]))
        #: Where deliveries go: the storage's own backend.
        self.backend = backend
        self.chunk_size = config.chunk_size
        self.retries = int(config["STORE_BACKGROUND_RETRIES"])
        self.backoff = float(config["STORE_BACKGROUND_BACKOFF"])
        self.max_backoff = float(config["STORE_BACKGROUND_MAX_BACKOFF"])
        self.concurrency = int(config["STORE_BACKGROUND_CONCURRENCY"])
        self.drain_timeout = float(config["STORE_BACKGROUND_DRAIN_TIMEOUT"])
        # Jobs of another app that shares the spool folder are not ours to deliver.
        self.target = backend.identity
        self._kind = backend.kind
        self._old_target_tail = (
            ":".join(str(config.get(k) or "") for k in ("STORE_PATH", "STORE_S3_BUCKET")) + ":"
        )
        #: This worker's name in the spool: jobs it spools carry it, others post outcomes to it.
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        #: The handles of the jobs this worker spooled, and the outcomes told to them.
        self.outcomes = Outcomes(self.spool, self.token, self._note_reachable)
        #: Since when a name check found the backend unreachable (None: not known to be down).
        self._unreachable_since: float | None = None
        self._start_fallback_loop = fallback_loop
        self._uploaders: dict[asyncio.AbstractEventLoop, Uploader] = {}
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
            await anyio.to_thread.run_sync(self.outcomes.close_inbox, True)

    def _schedule(self, job_id: str, uploader: Uploader) -> None:
        with self._lock:
            if job_id in self._scheduled:
                return
            self._scheduled.add(job_id)
        uploader.submit(job_id)

    async def ready(self) -> None:
        """Make sure this loop's uploads have an uploader, before anything is spooled: on a
        loop that is not long-lived, the sync shim's loop thread, started in a worker thread
        (starting it waits for the thread: never on the event loop)."""
        if asyncio.get_running_loop() not in self._uploaders:
            await anyio.to_thread.run_sync(self._start_fallback_loop)

    def _uploader(self) -> Uploader:
        uploader = self._uploaders.get(asyncio.get_running_loop())
        if uploader is not None:
            return uploader
        # This loop is not long-lived (a Flask async view's, a script's): deliver on the sync
        # shim's loop thread, which outlives it and is drained at exit (started by ready()).
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

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, job_id: str, uploader: Uploader | None = None) -> None:
        """Deliver one spooled job, with retries; never raises."""
        # One hop for the lock, the job and its discard mark (each hop costs ~1 ms at c=1).
        claimed = await anyio.to_thread.run_sync(self.spool.claim, job_id)
        if claimed is None:
            with self._lock:
                self._scheduled.discard(job_id)
            return
        fd, job, discarded = claimed
        try:
            if not self.owns(job.target):
                return
            if job.target != self.target:
                await anyio.to_thread.run_sync(self._adopt, job)
            await self._attempts(job, uploader, discarded)
        finally:
            os.close(fd)
            with self._lock:
                self._scheduled.discard(job_id)

    async def _attempts(self, job: Job, uploader: Uploader | None, discarded: bool) -> None:
        backend = self.backend
        stopping = uploader.stopping if uploader is not None else None
        for attempt in range(self.retries):
            if uploader is not None and uploader.stopping.is_set():
                if attempt or uploader.hopeless():
                    return  # shutting down: a retry, or an attempt on a dead backend, waits
            try:
                if attempt:  # a delete may come while a retry waits
                    discarded = await anyio.to_thread.run_sync(self.spool.discarded, job.id)
                if discarded:
                    await self._end(job, uploaded=False)
                    return
                try:
                    source = Source(job.name, path=self.spool.data(job.id))
                    source.content_type = job.content_type  # what the save's check found
                    await backend.write(job.location, iter([job.name]), source)
                except NoFreeName:
                    if not await self._already_there(job):
                        raise UploadError(
                            f"{job.key!r} was taken by another file before this upload could "
                            f"be delivered; it stays spooled as job {job.id}"
                        ) from None
                if uploader is not None:
                    uploader.down = False
                self._note_reachable()
                await self._end(job, uploaded=True)
                return
            except UploadError as exc:
                log.error("background upload of %r failed for good: %s", job.key, exc)
                await self.outcomes.report(job, "failed", exc)
                return
            except Exception as exc:
                if uploader is not None and means_down(exc):
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
        await self.outcomes.report(job, "failed", error)

    async def _end(self, job: Job, uploaded: bool) -> None:
        """Take a delivered (or discarded) job out of the spool and report how it ended."""
        with anyio.CancelScope(shield=True):  # the file landed: the bookkeeping must follow
            # Out of the spool, its name released, in one hop; unless it was deleted (a
            # rolled-back transaction) while on its way: the name stays reserved until the
            # delivered copy is deleted too.
            discarded = await anyio.to_thread.run_sync(self.spool.take_out, job, uploaded)
            if discarded and uploaded:
                try:
                    await self.backend.delete(job.key)
                except NotFoundError:
                    pass
                except StoreError as exc:
                    log.error(
                        "%r was deleted while it was being delivered, and deleting the delivered "
                        "copy failed: %s; delete it by hand",
                        job.key,
                        exc,
                    )
                await anyio.to_thread.run_sync(self.spool.clear, job)
            await self.outcomes.report(job, "discarded" if discarded else "delivered")

    async def discard(self, key: str) -> bool:
        """Cancel the upload of ``key`` (its file was deleted before delivery) if it is still
        spooled: True then, and the backend holds nothing to delete (or will not, once the
        delivery under way lands). False if nothing is spooled for it: delete the stored file.
        The name's reservation leads to the job, whichever worker or provider spooled it.
        """
        job_id = await anyio.to_thread.run_sync(self.spool.reserved_job, self.target, key)
        if job_id is None:
            return False
        spooled, removed = await anyio.to_thread.run_sync(self._cancel, job_id)
        if removed is not None:
            await self.outcomes.report(removed, "discarded")
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

    async def _already_there(self, job: Job) -> bool:
        """Whether the stored file is this job's content (delivered before a crash).

        Hashed here, on this rare path, not while spooling: ``save()`` waits for the spooling.
        """
        spooled = await anyio.to_thread.run_sync(_sha256, self.spool.data(job.id))
        stored = hashlib.sha256()
        try:
            async with self.backend.open(job.key) as f:
                while chunk := await f.read(self.chunk_size):
                    stored.update(chunk)
        except Exception:
            return False
        return stored.hexdigest() == spooled


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
