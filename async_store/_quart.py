"""Flow control for request bodies that ``save_request`` streams, in Quart.

Quart reads the ASGI body in a task of its own and appends every message to ``request.body``
without waiting for anyone to consume it: while a file goes to a slower disk or to S3, the rest
of a multi-GiB upload piles up in memory (and each byte is copied twice on the way). ``Store(app)``
installs two subclasses on a Quart app that change nothing until ``save_request`` takes a body
with :meth:`FlowControlledBody.streaming`. From then on the reading task hands each message
straight to the consumer through a queue of :data:`QUEUE_MESSAGES` entries and waits while it is
full, so the server (hypercorn's bounded app queue) stops reading the socket and TCP slows the
client down.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from quart.asgi import ASGIHTTPConnection
from quart.wrappers.request import Body
from werkzeug.exceptions import RequestEntityTooLarge

from ._limits import body_too_large

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import quart
    from hypercorn.typing import ASGIReceiveCallable
    from quart.wrappers.request import Request

__all__ = ["QUEUE_MESSAGES", "FlowControlledBody", "install"]

#: Body messages (64 KiB each from hypercorn) waiting for a streaming consumer, at most.
QUEUE_MESSAGES = 16


class FlowControlledBody(Body):
    """Quart's request body, which can also be taken as a stream with backpressure."""

    _queue: asyncio.Queue[bytes | None] | None = None
    _received = 0

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        if self._must_raise is not None and max_content_length is not None:
            # Quart's bare 413 for a Content-Length over the limit: say which limit.
            self._must_raise = RequestEntityTooLarge(
                body_too_large(max_content_length, expected_content_length)
            )

    @contextlib.contextmanager
    def streaming(self) -> Iterator[AsyncIterator[bytes]]:
        """Take the body as it arrives: ``with body.streaming() as chunks: async for …``.

        What arrived before is yielded first; the rest comes message by message, without
        being buffered here.
        """
        self._queue = asyncio.Queue(QUEUE_MESSAGES)
        # Complete now: all of it is in ``_data``. Otherwise the rest, and its end (None), come
        # through the queue: completion seen later must not stop the stream before the queue
        # is drained (that lost the tail of bodies that ended while the head was consumed).
        complete = self._complete.is_set()
        try:
            yield self._stream(self._queue, complete)
        finally:
            queue, self._queue = self._queue, None
            while not queue.empty():  # free a reader blocked on a full queue
                queue.get_nowait()

    def take_unread(self) -> list[bytes]:
        """What arrived of the body and no reader took yet: what came before streaming began,
        then the messages waiting in the stream's queue (a dropped upload keeps them)."""
        unread = []
        if self._data:
            unread.append(bytes(self._data))
            self._data.clear()
        queue = self._queue
        while queue is not None and not queue.empty():
            message = queue.get_nowait()
            if message is None:
                break
            unread.append(message)
        return unread

    async def _stream(
        self, queue: asyncio.Queue[bytes | None], complete: bool
    ) -> AsyncIterator[bytes]:
        if self._must_raise is not None:
            raise self._must_raise
        # No chunk stays referenced by this frame once it is handed on: with hundreds of
        # uploads at once, the early part of each (often hundreds of KiB) held until its end
        # was a sixth of the server's memory.
        if self._data:
            early = bytes(self._data)
            self._data.clear()
            yield early
            del early
        if complete:
            return
        while True:
            chunk = await queue.get()
            if chunk is None:
                return
            yield chunk
            del chunk

    async def feed(self, data: bytes, more: bool) -> None:
        """Take one ASGI body message: into the stream's queue, or Quart's buffer."""
        # Quart checks MAX_CONTENT_LENGTH against what is buffered, and its form parser empties
        # the buffer as it goes: a body without Content-Length (chunked) passed any size. Count
        # all of it. (save_request counts for itself, against its own max_size.)
        self._received += len(data)
        limit = self._max_content_length
        if self._queue is None and limit is not None and self._received > limit:
            if self._must_raise is None:
                self._must_raise = RequestEntityTooLarge(body_too_large(limit))
                self.set_complete()
            return
        if self._queue is None:
            self.append(data)
        elif data:
            await self._queue.put(data)
        if not more:
            if self._queue is not None:
                await self._queue.put(None)
            self.set_complete()


class FlowControlledConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP handler, with a reader that waits for a streaming consumer."""

    async def handle_messages(self, request: Request, receive: ASGIReceiveCallable) -> None:
        body = request.body
        if not isinstance(body, FlowControlledBody):
            await super().handle_messages(request, receive)
            return
        # Quart's loop, but awaiting the body: a streaming consumer's queue can be full.
        while True:
            message = await receive()
            if message["type"] == "http.request":
                await body.feed(message.get("body", b""), message.get("more_body", False))
            elif message["type"] == "http.disconnect":
                return


def install(app: quart.Quart) -> None:
    """Put the flow-controlled classes on ``app``, unless it has its own classes already."""
    if app.asgi_http_class is ASGIHTTPConnection:
        app.asgi_http_class = FlowControlledConnection
    request_class = app.request_class
    if request_class.body_class is Body:
        app.request_class = type(  # type: ignore[assignment]
            request_class.__name__, (request_class,), {"body_class": FlowControlledBody}
        )
