"""Spooling, in a background ``save()``: reserve a final name and write the upload to the spool.

Both at once: the name check is a round trip to the backend (a ``HEAD`` for S3), the spooling
a local copy, and ``save()`` waits for the slower of the two, not for their sum. The name is
reserved in the spool (``Spool.reserve``: a symlink, so one name across processes), the data
written to ``.tmp-ID/`` and published by renaming it to ``ID/``: a job is whole or not there.
While the backend is known to be down, the name is not checked: the upload gets a
collision-proof name and is claimed, spooled and published in one thread hop, as a local save.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
import uuid
from typing import IO, TYPE_CHECKING

import anyio
import anyio.to_thread

from ._sources import Guard, Source, finish_anyway, write_source
from ._spool import Job
from ._uploads import BackgroundUpload, means_down
from .backends.base import no_free_name
from .backends.local import os_error
from .exceptions import StoreError, first_error

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ._background import Background

__all__ = ["spool_upload"]


def _key(location: str, name: str) -> str:
    return f"{location}/{name}" if location else name


async def spool_upload(
    background: Background, location: str, candidates: Iterator[str], source: Source
) -> tuple[Job, BackgroundUpload]:
    """Reserve a name and spool ``source``, then queue the delivery: the job and its handle.

    :raises NoFreeName: when every candidate is taken (there or in the spool).
    :raises ProviderError: when the name check is refused for good (access denied).
    :raises StoreError: naming ``STORE_SPOOL_PATH`` when the spool's own disk fails.
    """
    await background.ready()  # before the job exists: a cancel here loses nothing
    spool = background.spool
    first = next(candidates, "")
    names = itertools.chain([first], candidates)  # made as needed: a collision name costs ~7 µs
    job_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"
    temp = os.path.join(spool.path, f".tmp-{job_id}")
    job = Job(job_id, background.target, location, "", 0, time.time(), owner=background.token)
    handle = BackgroundUpload(job_id, "")
    reserved: list[str] = []

    def open_data() -> IO[bytes]:
        os.mkdir(temp)
        return open(os.path.join(temp, "data"), "wb")

    def finish(data: IO[bytes]) -> None:
        spool._sync(data)
        job.size = data.tell()
        job.content_type = source.content_type  # known once its first bytes were checked

    published = os.path.join(spool.path, job_id)

    def publish() -> None:
        handle.key = job.key
        background.outcomes.register(
            handle
        )  # before the job exists: its outcome has somewhere to go
        spool.write_job(temp, job, False)  # not visible yet: no temp file needed
        os.rename(temp, published)  # now a job

    def discard() -> None:
        # A job only when the caller was cancelled natively (Quart, hypercorn) while it was
        # published: it got no answer, so the upload must not happen behind its back.
        shutil.rmtree(published, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
        if reserved:
            spool.release(background.target, job.key, job_id)
        background.outcomes.forget(job_id)

    async def reserve() -> None:
        job.name = await _reserve(background, location, names, job_id)
        reserved.append(job.name)

    def open_unchecked() -> IO[bytes]:
        job.name = _claim(background, location, itertools.islice(names, 1, None), job_id)
        reserved.append(job.name)
        return open_data()

    def finish_and_publish(data: IO[bytes]) -> None:
        finish(data)
        publish()

    guard = Guard(discard)
    chunk_size = background.chunk_size
    try:
        if background.unreachable:
            # No name check to wait for: claim, spool and publish in one hop, as a local save
            # does (the write's guard takes a published job back if cancelled).
            await write_source(source, open_unchecked, finish_and_publish, discard, chunk_size)
        else:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reserve)
                    await write_source(source, open_data, finish, discard, chunk_size)
            except BaseExceptionGroup as group:
                # One of the two failed (a taken name, an unreadable upload): raise it as itself.
                error = first_error(group)
                raise error from error.__cause__
            # Runs to its end whatever cancels this task; a cancel that interrupts the wait for
            # it still fails save(), and the guard makes the discard below take the job back.
            await finish_anyway(lambda: anyio.to_thread.run_sync(guard.run, publish))
    except BaseException as exc:
        await finish_anyway(lambda: anyio.to_thread.run_sync(guard.clean))
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            # The spool's own disk (full, read-only, …): the backend's and the upload's errors
            # arrive mapped, or as the upload's own.
            where = job.key if job.name else _key(location, first)
            raise os_error(exc, where, spool.path, "STORE_SPOOL_PATH") from exc
        raise
    if not background.unreachable:  # else the next scan tries: no herd of doomed attempts
        background._schedule(job_id, background._uploader())
    return job, handle


def _claim(background: Background, location: str, names: Iterable[str], job_id: str) -> str:
    """Reserve the first of ``names`` that is free in the spool (blocks)."""
    for name in names:
        if background.spool.reserve(background.target, _key(location, name), job_id):
            return name
    raise no_free_name(location)


async def _reserve(
    background: Background, location: str, candidates: Iterable[str], job_id: str
) -> str:
    """The first of ``candidates`` free in the backend (asked once each) and in the spool."""
    # While the backend is known to be down, no check: it would only wait, then fail.
    check = not background.unreachable
    for index, name in enumerate(candidates):
        key = _key(location, name)
        if check:
            try:
                if await background.backend.exists_now(key):
                    continue
            except Exception as exc:
                if not means_down(exc):
                    raise  # refused for good (access denied): tell the caller now
                # The backend is down: the upload is spooled all the same, which is what
                # background mode is for.
                background._note_unreachable(key, exc)
                check = False
        if not check and index == 0:
            # Unchecked, the client's name may be taken there: take a collision-proof
            # ``{root}_{shortuuid}`` one.
            continue
        # Shielded (the thread runs to its end anyway): a reservation made is reported, so a
        # cancelled save releases it.
        with anyio.CancelScope(shield=True):
            claimed = await anyio.to_thread.run_sync(
                background.spool.reserve, background.target, key, job_id
            )
        if claimed:
            return name
    raise no_free_name(location)
