"""Flow control for request bodies that ``save_request`` streams, in Quart.

Quart reads the ASGI body in a task of its own and appends every message to ``request.body``
without waiting for anyone to consume it: while a file goes to a slower disk or to S3, the rest
of a multi-GiB upload piles up in memory. ``Store(app)`` installs two subclasses on a Quart app
that change nothing until ``save_request`` marks a body as streamed; from then on the reading
task waits while more than :data:`HIGH_WATER` bytes are buffered, so the server (hypercorn's
bounded app queue) stops reading the socket and TCP slows the client down.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from quart.asgi import ASGIHTTPConnection
from quart.wrappers.request import Body

if TYPE_CHECKING:
    from collections.abc import Iterator

    import quart
    from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent
    from quart.wrappers.request import Request

__all__ = ["HIGH_WATER", "FlowControlledBody", "install"]

#: Bytes buffered in a streamed body before Quart stops reading more from the server.
HIGH_WATER = 1024 * 1024


class FlowControlledBody(Body):
    """Quart's request body; once :attr:`streamed`, its reader waits for the consumer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set by ``save_request``: someone consumes the body chunk by chunk.
        self.streamed = False
        self._drained = asyncio.Event()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._drained.set()
        return data

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Mark the body as streamed for the ``with`` block (``save_request`` does)."""
        self.streamed = True
        try:
            yield
        finally:
            self.streamed = False
            self._drained.set()  # whatever reads on is not held back any more

    async def room(self) -> None:
        """Wait while a streamed body holds more than :data:`HIGH_WATER` unread bytes."""
        while self.streamed and len(self._data) > HIGH_WATER and not self._complete.is_set():
            self._drained.clear()
            await self._drained.wait()


class FlowControlledConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP handler, reading the next body message only when there is room."""

    async def handle_messages(self, request: Request, receive: ASGIReceiveCallable) -> None:
        body = request.body

        async def paced() -> ASGIReceiveEvent:
            if isinstance(body, FlowControlledBody):
                await body.room()
            return await receive()

        await super().handle_messages(request, paced)


def install(app: quart.Quart) -> None:
    """Put the flow-controlled classes on ``app``, unless it has its own classes already."""
    if app.asgi_http_class is ASGIHTTPConnection:
        app.asgi_http_class = FlowControlledConnection
    request_class = app.request_class
    if request_class.body_class is Body:
        app.request_class = type(  # type: ignore[assignment]
            request_class.__name__, (request_class,), {"body_class": FlowControlledBody}
        )
