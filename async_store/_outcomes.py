"""How background uploads end, told to whoever waits for them.

A worker keeps the :class:`~async_store._uploads.BackgroundUpload` handles of the jobs it
spooled until they end. Whichever worker delivers (or gives up on, or discards) a job tells
the handle: its own at once, another worker's through that worker's inbox in the spool
(``.inbox-TOKEN``, there while it has uploads in flight), which that worker polls.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .exceptions import UploadError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._spool import Job, Spool
    from ._uploads import BackgroundUpload, Status

__all__ = ["Outcomes"]

_ENDED: dict[str, Status] = {"delivered": "delivered", "failed": "failed", "discarded": "discarded"}


class Outcomes:
    """One worker's handles, inbox and reports.

    :param spool: the storage's spool.
    :param token: this worker's name in the spool (jobs it spools carry it).
    :param on_delivered: called when a job is known to be delivered (the backend answers).
    """

    def __init__(self, spool: Spool, token: str, on_delivered: Callable[[], None]) -> None:
        self.spool = spool
        self.token = token
        self._on_delivered = on_delivered
        self._inbox: int | None = None
        self._handles: dict[str, BackgroundUpload] = {}
        self._lock = threading.Lock()

    @property
    def watching(self) -> bool:
        """Whether this worker has an inbox open (uploads in flight): poll it."""
        return self._inbox is not None

    def register(self, handle: BackgroundUpload) -> None:
        """Keep a handle until its job ends; open the inbox others post its outcome to."""
        with self._lock:
            self._handles[handle.job_id] = handle
            if self._inbox is None:
                self._inbox = self.spool.open_inbox(self.token)

    def pending(self, key: str) -> BackgroundUpload | None:
        """The handle of this worker's upload of ``key`` still under way, if any."""
        with self._lock:
            handles = list(self._handles.values())
        return next((h for h in handles if h.key == key and not h.done), None)

    def forget(self, job_id: str) -> None:
        """Drop the handle of a job that was taken back before it was spooled (blocks)."""
        if self._handles.pop(job_id, None) is not None:
            self.close_inbox()

    def close_inbox(self, always: bool = False) -> None:
        """Close the inbox once no handle is left (``always``: at shutdown); blocks."""
        with self._lock:
            if self._inbox is not None and (always or not self._handles):
                self.spool.close_inbox(self.token, self._inbox)
                self._inbox = None

    async def _settle(self, job_id: str, status: str, error: UploadError | None) -> None:
        """Finish this process's handle of a job; close the inbox once none is left."""
        handle = self._handles.get(job_id)
        if status == "delivered":
            self._on_delivered()  # wherever it landed, the backend answers
        ended = _ENDED.get(status)
        if handle is None or ended is None:
            return
        handle._finish(ended, error)
        if status != "failed":  # a failed job stays spooled and may still be delivered
            self._handles.pop(job_id, None)
            if not self._handles:
                await anyio.to_thread.run_sync(self.close_inbox)

    async def report(self, job: Job, status: Status, error: UploadError | None = None) -> None:
        """Tell whoever waits for a job how it ended: our own handle, or its worker's inbox."""
        if job.id in self._handles or not job.owner or job.owner == self.token:
            await self._settle(job.id, status, error)
            return
        message = str(error) if error is not None else None
        await anyio.to_thread.run_sync(self.spool.post, job.owner, job.id, status, message)
        if status == "delivered":
            self._on_delivered()

    async def collect(self) -> None:
        """Settle the outcomes other workers posted to this worker's inbox."""
        try:
            outcomes = await anyio.to_thread.run_sync(self.spool.collect, self.token)
        except OSError:
            return  # the inbox is being closed
        for job_id, status, message in outcomes:
            error = UploadError(message) if status == "failed" and message else None
            await self._settle(job_id, status, error)
