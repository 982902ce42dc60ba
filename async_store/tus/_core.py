"""The tus server's one core, framework-free: a request in (method, headers, body as an async
iterator of bytes), a :class:`Reply` out.

Quart's view awaits it on the serving loop; Flask's runs it on the sync shim's loop (the Store's
blocking portal), its body read from ``request.stream`` in worker threads. Each step's blocking
work (``_state``: the lock, the append, the JSON) takes one worker-thread hop.

A PATCH holds the upload's ``flock`` from before it checks the offset until its bytes are
counted, so two PATCHes of one upload, on one worker or two, never interleave: the second
waits (up to ``lock_timeout``) and then finds the offset moved (409), or gives up (423).
Without ``Upload-Checksum``, what arrived is kept even when the client goes away mid-body (a
cancelled Quart task, a Werkzeug ``ClientDisconnected``): the cleanup that counts it and gives
up the lock runs to its end in a task of its own. With one, a chunk is all or nothing.

When the offset reaches the length the upload is published into its storage as a ``save()``
would store it (``_publish``: from the folder, or, on S3, from the parts sent as they filled).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .._sources import finish_anyway
from ._protocol import (
    CHECKSUMS,
    EXTENSIONS,
    OFFSET_TYPE,
    VERSION,
    TusError,
    base_headers,
    check_version,
    content_length,
    http_date,
    parse_checksum,
    parse_length,
    parse_metadata,
    parse_offset,
    require_offset_type,
    state_headers,
)
from ._publish import Completed, Publisher
from ._state import Held, Spool, UploadInfo, is_id, new_id, remove_expired

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from werkzeug.datastructures import Headers

    from ..extension import StoreState

__all__ = ["Body", "Reply", "TusCore"]

#: A long PATCH without a checksum makes what it wrote count this often (a worker killed
#: mid-request loses at most this much).
CHECKPOINT = 8 * 1024 * 1024
#: Expired uploads are looked for at most this often, by a creation request.
CLEANUP_EVERY = 600.0
_LOCK_POLL = 0.05


@dataclass
class Body:
    """A request's body as the core reads it."""

    chunks: AsyncIterator[bytes]
    #: What the server received that ``chunks`` had not yielded yet when the request ended
    #: early (Quart's buffered messages): kept with the rest, so a drop loses nothing.
    leftover: Callable[[], list[bytes]] | None = None


@dataclass
class Reply:
    """What to answer: the views turn it into their framework's response."""

    status: int
    headers: dict[str, str]
    message: str = ""
    completed: Completed | None = None


class TusCore:
    """One tus endpoint: uploads in ``root`` published into one storage."""

    def __init__(
        self,
        state: StoreState[Any],
        owner: str,
        *,
        root: str,
        max_size: int | None,
        expires: float,
        location: str | None,
        lock_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.owner = owner
        self.spool = Spool(root, fsync=bool(state.config["STORE_FSYNC"]))
        self.max_size = max_size
        self.expires = expires
        self.location = location
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.chunk_size = state.config.chunk_size
        self._last_cleanup = -CLEANUP_EVERY
        #: Stores finished uploads (on S3 in parts as they fill, ``_parts``).
        self.publisher = Publisher(state, location)

    # --- dispatch ---------------------------------------------------------------------------

    async def handle(
        self,
        method: str,
        upload_id: str | None,
        headers: Headers,
        body: Body | None,
        base_url: str,
    ) -> Reply:
        """Answer one tus request; ``base_url`` is the creation URL (``/files/``)."""
        try:
            if method == "OPTIONS":
                return self.options()
            check_version(headers)
            if upload_id is None:
                if method != "POST":
                    raise TusError(405, f"{method} needs an upload's URL")
                return await self.create(headers, body, base_url)
            if not is_id(upload_id):
                raise TusError(404, "no such upload")
            if method == "HEAD":
                return await self.head(upload_id)
            if method == "PATCH":
                return await self.patch(upload_id, headers, body)
            if method == "DELETE":
                return await self.delete(upload_id)
            raise TusError(405, f"an upload's URL takes HEAD, PATCH or DELETE, not {method}")
        except TusError as error:
            return Reply(error.status, {**base_headers(), **error.headers}, error.message)

    def options(self) -> Reply:
        headers = {
            **base_headers(),
            "Tus-Version": VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        }
        if self.max_size is not None:
            headers["Tus-Max-Size"] = str(self.max_size)
        return Reply(204, headers)

    # --- creation ---------------------------------------------------------------------------

    async def create(self, headers: Headers, body: Body | None, base_url: str) -> Reply:
        length = parse_length(headers, self.max_size)
        raw = headers.get("Upload-Metadata")
        metadata = parse_metadata(raw)
        with_upload = (headers.get("Content-Type") or "").split(";")[0].strip() == OFFSET_TYPE
        now = self.clock()
        info = UploadInfo(
            new_id(),
            length,
            0,
            self.owner,
            raw.strip() if raw else None,
            metadata,
            created=now,
            expires=now + self.expires,
        )
        self.publisher.check_new(metadata, length)
        await self._cleanup(now)
        await anyio.to_thread.run_sync(self.spool.create, info)
        location = f"{base_url.rstrip('/')}/{info.id}"
        created = {**base_headers(), "Location": location}
        if not with_upload and length > 0:
            return Reply(201, {**created, "Upload-Expires": http_date(info.expires)})
        # creation-with-upload (or an empty file, complete at once): the PATCH's rules.
        try:
            reply = await self._append(info.id, 0, headers, body if with_upload else None)
        except TusError:
            await anyio.to_thread.run_sync(self.spool.remove, info.id)
            raise
        return Reply(201, {**reply.headers, **created}, completed=reply.completed)

    # --- the core protocol ------------------------------------------------------------------

    async def head(self, upload_id: str) -> Reply:
        info = await self._read(upload_id)
        completed = None
        if info.complete and info.stored_path is None:
            # Every byte is here but it was never published (a worker killed or a request
            # cancelled in between): publish it now, if nobody else is at it.
            held = await self._take(upload_id)
            if held is not None:
                try:
                    if held.info.complete and held.info.stored_path is None:
                        # 423 while the storage fails: clients retry it (a 5xx to a HEAD makes
                        # tus-js-client and Uppy start the whole file again).
                        completed = await self.publisher.publish(held, failing=423)
                    info = held.info
                finally:
                    await self._release(held)
        return Reply(200, state_headers(info, head=True), completed=completed)

    async def patch(self, upload_id: str, headers: Headers, body: Body | None) -> Reply:
        require_offset_type(headers)
        return await self._append(upload_id, parse_offset(headers), headers, body)

    async def delete(self, upload_id: str) -> Reply:
        held = await self._lock(upload_id)
        try:
            await self.publisher.abort(held)
            await anyio.to_thread.run_sync(held.remove)
        finally:
            await self._release(held)
        return Reply(204, base_headers())

    # --- appending --------------------------------------------------------------------------

    async def _append(
        self,
        upload_id: str,
        offset: int,
        headers: Headers,
        body: Body | None,
    ) -> Reply:
        checksum = parse_checksum(headers)
        declared = content_length(headers)
        held = await self._lock(upload_id)
        keep = checksum is None  # what a request that ends early keeps
        try:
            info = held.info
            if offset != info.offset:
                raise TusError(
                    409,
                    f"Upload-Offset {offset} is not the upload's offset {info.offset}: "
                    f"HEAD the upload and resume from there",
                    {"Upload-Offset": str(info.offset)},
                )
            remaining = info.length - info.offset
            if declared is not None and declared > remaining:
                raise TusError(413, f"the body ({declared:,} bytes) is over the {remaining:,} left")
            if body is not None and remaining > 0:
                await anyio.to_thread.run_sync(held.open_data)
                if checksum is not None:
                    held.digest = checksum[0]
                await self._receive(held, body, remaining)
                if checksum is not None and held.digest.digest() != checksum[1]:
                    keep = False
                    raise TusError(
                        460,
                        "Upload-Checksum does not match the body: the chunk is discarded",
                        {"Upload-Offset": str(held.start)},
                    )
                keep = True
                finish = functools.partial(held.finish, keep=True, expires=self._expiry())
                await anyio.to_thread.run_sync(finish)
                if not held.info.complete:
                    await self.publisher.send_parts(held)
            completed = None
            if held.info.complete and held.info.stored_path is None:
                completed = await self.publisher.publish(held, failing=503)
            return Reply(204, state_headers(held.info), completed=completed)
        except TusError as error:
            if error.status == 413:
                keep = False
            raise
        except BaseException:
            if keep and body is not None and body.leftover is not None:
                held.pending.extend(body.leftover())
            raise
        finally:
            await self._release(held, keep=keep)

    async def _receive(self, held: Held, body: Body, remaining: int) -> None:
        """Stream the body into ``data`` in batches of ``chunk_size``: each batch is written in
        a worker thread while the next one arrives (one in flight: memory stays two batches),
        as ``save_request`` overlaps reading and writing.

        A batch is collected in ``held.pending``: if the body stops early, the release writes
        what arrived (unless a checksum or an overflow discards it), after the batch in flight:
        a request never ends while its thread still writes.
        """
        size = total = counted = 0
        writing: asyncio.Future[None] | None = None
        try:
            async for chunk in body.chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > remaining:
                    raise TusError(413, f"the body is longer than the {remaining:,} bytes left")
                held.pending.append(chunk)
                size += len(chunk)
                if size >= self.chunk_size:
                    if writing is not None:
                        await writing
                    batch, held.pending, size = held.pending, [], 0
                    writing = asyncio.ensure_future(
                        anyio.to_thread.run_sync(held.write_batch, batch)
                    )
                    if held.digest is None and held.written - counted >= CHECKPOINT:
                        # Counts what is written already; the batch in flight, next time.
                        await anyio.to_thread.run_sync(held.checkpoint, self._expiry())
                        counted = held.written
            if writing is not None:
                await writing
            await anyio.to_thread.run_sync(held.write_pending)
        finally:
            if writing is not None:
                if not writing.done():
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait([writing])
                if not writing.cancelled():
                    writing.exception()  # retrieved: a failure is raised by the await above

    # --- locks and state --------------------------------------------------------------------

    async def _lock(self, upload_id: str) -> Held:
        """The upload, locked: waits up to ``lock_timeout`` for a request holding it."""
        deadline = anyio.current_time() + self.lock_timeout
        while (held := await self._take(upload_id)) is None:
            if anyio.current_time() >= deadline:
                raise TusError(
                    423, "another request is writing to this upload: HEAD it and try again"
                )
            await anyio.sleep(_LOCK_POLL)
        return held

    async def _take(self, upload_id: str) -> Held | None:
        """One try at the lock (None: held elsewhere); 404 or 410 when it is not servable."""
        job = asyncio.ensure_future(anyio.to_thread.run_sync(self.spool.try_lock, upload_id))
        try:
            held = await asyncio.shield(job)
        except FileNotFoundError:
            raise TusError(404, "no such upload") from None
        except asyncio.CancelledError:
            # Cancelled while the thread took it: give the lock back once it has.
            job.add_done_callback(_release_when_done)
            raise
        if held is None:
            return None
        try:
            await self._check(held.info, held)
        except BaseException:
            await self._release(held)
            raise
        return held

    async def _read(self, upload_id: str) -> UploadInfo:
        info = await anyio.to_thread.run_sync(self.spool.read, upload_id)
        if info is None:
            raise TusError(404, "no such upload")
        await self._check(info, None)
        return info

    async def _check(self, info: UploadInfo, held: Held | None) -> None:
        if info.owner != self.owner:
            raise TusError(404, "no such upload")  # another endpoint's
        if info.expires <= self.clock():
            if held is not None:
                await self.publisher.abort(held)
                await anyio.to_thread.run_sync(held.remove)
            else:
                await self._take(info.id)  # removes it (410), unless a request holds it
            raise TusError(410, "this upload expired: start a new one")

    async def _release(self, held: Held, *, keep: bool = False) -> None:
        release = functools.partial(held.release, keep=keep, expires=self._expiry())
        await finish_anyway(lambda: anyio.to_thread.run_sync(release))

    async def _cleanup(self, now: float) -> None:
        if now - self._last_cleanup < CLEANUP_EVERY:
            return
        self._last_cleanup = now
        await anyio.to_thread.run_sync(functools.partial(remove_expired, self.spool.root, now=now))

    def _expiry(self) -> float:
        return self.clock() + self.expires


def _release_when_done(job: asyncio.Future[Held | None]) -> None:
    if job.cancelled() or job.exception() is not None:
        return
    held = job.result()
    if held is not None:
        # Nothing is open but the lock, which is ours: giving it back never waits.
        held.release()
