"""The spool of background uploads on disk: jobs, name reservations, locks and inboxes.

One folder, ``STORE_SPOOL_PATH``, that several worker processes may share:

* ``ID/`` is a job: ``data`` (the upload) and ``job.json`` (a :class:`Job`). It is written as
  ``.tmp-ID/`` and renamed, so it is either whole or not there, and taken out of the spool by one
  rename to ``.done-ID/``;
* ``names/HASH`` reserves a name in the destination for one job: a symlink to the job's id,
  made in one exclusive step, so a key leads to its job;
* a delivery holds an ``flock`` on the job's ``data``, which is never replaced (``job.json`` is,
  after each attempt);
* ``.inbox-TOKEN/`` receives the outcomes of a worker's jobs delivered by other workers.

Every method blocks: call them in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, fields
from typing import IO

__all__ = ["Job", "Spool"]

#: Crash leftovers (spooling never finished, reservations no job holds) older than this go.
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
    #: The token of the worker that spooled it (its inbox); '' from earlier versions.
    owner: str = ""
    #: The type a validation check found in its bytes (stored as the object's type).
    content_type: str | None = None

    @property
    def key(self) -> str:
        return f"{self.location}/{self.name}" if self.location else self.name


_JOB_FIELDS = frozenset(field.name for field in fields(Job))


class Spool:
    """The spool folder of one app: jobs, name reservations, locks, inboxes. Every method
    blocks."""

    def __init__(self, path: str, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.names = os.path.join(path, "names")

    def prepare(self) -> None:
        os.makedirs(self.names, exist_ok=True)

    # --- names -------------------------------------------------------------------------------

    def _reservation(self, target: str, key: str) -> str:
        return os.path.join(self.names, hashlib.sha256(f"{target}\0{key}".encode()).hexdigest())

    def reserve(self, target: str, key: str, job_id: str) -> bool:
        """Claim a name for a job: a symlink to the job's id, made in one exclusive step, so a
        ``delete()`` by path finds the job (earlier versions made empty files)."""
        try:
            os.symlink(job_id, self._reservation(target, key))
        except FileExistsError:
            return False
        return True

    def reserved_job(self, target: str, key: str) -> str | None:
        try:
            return os.readlink(self._reservation(target, key))
        except OSError:  # none, or an earlier version's empty file
            return None

    def release(self, target: str, key: str, job_id: str) -> None:
        path = self._reservation(target, key)
        with contextlib.suppress(FileNotFoundError):
            if self.reserved_job(target, key) in (None, job_id):  # None: an earlier version's
                os.unlink(path)

    # --- jobs --------------------------------------------------------------------------------

    def job_ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if not n.startswith(".") and n != "names")

    def _sync(self, f: IO[bytes]) -> None:
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())

    def write_job(self, directory: str, job: Job, replace: bool = True) -> None:
        """Write ``job.json``: whole or not at all (a new job's folder is not visible yet)."""
        final = os.path.join(directory, "job.json")
        path = os.path.join(directory, ".job.json") if replace else final
        with open(path, "wb") as f:
            f.write(json.dumps(vars(job)).encode())
            self._sync(f)
        if replace:
            os.replace(path, final)

    def load(self, job_id: str) -> Job:
        with open(os.path.join(self.path, job_id, "job.json"), "rb") as f:
            data = json.loads(f.read())
        # Keys that other versions write (``sha256``, once computed while spooling) are skipped.
        return Job(**{k: v for k, v in data.items() if k in _JOB_FIELDS})

    def data(self, job_id: str) -> str:
        return os.path.join(self.path, job_id, "data")

    def lock(self, job_id: str) -> int | None:
        """An exclusive lock on a job, or None if it is gone or another process delivers it.

        The lock is on ``data``, which stays the same file for the job's life: ``job.json`` is
        replaced after each failed attempt, and a lock on the old one would not exclude a worker
        that opens the new one.
        """
        try:
            fd = os.open(self.data(job_id), os.O_RDONLY)
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

    def claim(self, job_id: str) -> tuple[int, Job, bool] | None:
        """What a delivery starts with, in one call: the job's :meth:`lock`, the job, and
        whether it was discarded meanwhile; None if it is gone or another process delivers it."""
        fd = self.lock(job_id)
        if fd is None:
            return None
        try:
            return fd, self.load(job_id), self.discarded(job_id)
        except BaseException:
            os.close(fd)
            raise

    def mark_discarded(self, job_id: str) -> bool:
        """Mark a job as not wanted any more; False if it is gone (delivered already)."""
        try:
            os.close(os.open(os.path.join(self.path, job_id, "discard"), os.O_CREAT, 0o644))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def discarded(self, job_id: str) -> bool:
        return os.path.exists(os.path.join(self.path, job_id, "discard"))

    def finish(self, job: Job) -> bool:
        """Take a job out of the spool (one rename: gone for every reader); True if it was
        discarded. Checked *after* the rename, so a discard that found the job is always seen."""
        finished = os.path.join(self.path, f".done-{job.id}")
        os.rename(os.path.join(self.path, job.id), finished)
        return os.path.exists(os.path.join(finished, "discard"))

    def take_out(self, job: Job, delivered: bool) -> bool:
        """:meth:`finish` a job, and :meth:`clear` it unless it was discarded and ``delivered``
        (its name stays reserved until the delivered copy is deleted); True if discarded."""
        discarded = self.finish(job)
        if not (discarded and delivered):
            self.clear(job)
        return discarded

    def clear(self, job: Job) -> None:
        self.release(job.target, job.key, job.id)
        shutil.rmtree(os.path.join(self.path, f".done-{job.id}"), ignore_errors=True)

    # --- inboxes: outcomes for the worker that spooled a job ---------------------------------

    def _inbox(self, token: str) -> str:
        return os.path.join(self.path, f".inbox-{token}")

    def open_inbox(self, token: str) -> int:
        """Create this worker's inbox; the returned descriptor holds its lock (alive)."""
        inbox = self._inbox(token)
        shutil.rmtree(inbox, ignore_errors=True)  # left by an earlier close that raced a post
        temp = os.path.join(self.path, f".tmp-inbox-{token}")
        os.mkdir(temp)
        fd = os.open(temp, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # before the rename: a sweep never sees it unlocked
            os.rename(temp, inbox)
        except BaseException:
            os.close(fd)
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return fd

    def close_inbox(self, token: str, fd: int) -> None:
        shutil.rmtree(self._inbox(token), ignore_errors=True)
        os.close(fd)

    def post(self, owner: str, job_id: str, status: str, error: str | None) -> None:
        """Tell the worker that spooled a job how it ended, if that worker is listening."""
        inbox = self._inbox(owner)
        temp = os.path.join(inbox, f".{job_id}")
        try:
            with open(temp, "wb") as f:
                f.write(json.dumps({"status": status, "error": error}).encode())
            os.replace(temp, os.path.join(inbox, job_id))
        except (FileNotFoundError, NotADirectoryError):
            pass  # no inbox: that worker stopped, or has nothing in flight

    def collect(self, token: str) -> list[tuple[str, str, str | None]]:
        """The outcomes posted to this worker's inbox, removed as they are read."""
        inbox = self._inbox(token)
        found = []
        for name in os.listdir(inbox):
            if name.startswith("."):
                continue
            path = os.path.join(inbox, name)
            try:
                with open(path, "rb") as f:
                    outcome = json.loads(f.read())
                os.unlink(path)
            except (OSError, ValueError):
                continue  # read by another of our loops meanwhile, or torn: the next poll
            found.append((name, str(outcome.get("status")), outcome.get("error")))
        return found

    @staticmethod
    def _held(path: str) -> bool:
        """Whether a live worker holds the lock on ``path`` (a job's data, an inbox)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def sweep_inboxes(self) -> None:
        """Remove the inboxes of workers that are gone (nobody holds their lock)."""
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith(".inbox-") and not self._held(path):
                shutil.rmtree(path, ignore_errors=True)

    def sweep(self) -> None:
        """Remove what crashes leave: finished jobs, spooling that never completed, the inboxes
        of dead workers, and the names such spooling reserved (stale, and held by no job)."""
        now = time.time()
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith(".done-") and not self._held(os.path.join(path, "data")):
                shutil.rmtree(path, ignore_errors=True)  # a worker died finishing it
            elif name.startswith(".tmp-") and now - os.path.getmtime(path) > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        self.sweep_inboxes()
        held = set()
        for job_id in self.job_ids():
            with contextlib.suppress(OSError, ValueError, TypeError):
                job = self.load(job_id)
                held.add(os.path.basename(self._reservation(job.target, job.key)))
        for name in os.listdir(self.names):
            path = os.path.join(self.names, name)
            with contextlib.suppress(FileNotFoundError):
                if name not in held and now - os.lstat(path).st_mtime > _STALE_SECONDS:
                    os.unlink(path)
