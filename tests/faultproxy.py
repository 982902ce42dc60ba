"""A loopback HTTP proxy in front of the test S3 server: records requests, injects faults.

It runs its own event loop in a thread, so it serves sync and async code alike. Faults are set
per test: answer some requests with a status (5xx, 403), reset the connection after some bytes
of a request body, hold requests for a while before passing them on, flip a byte of a request
body on its way (what a checksum is for), stop listening altogether (:meth:`FaultProxy.down`:
S3 is down, connections are refused) and come back, or pass everything through. Loopback
only, and it stops with the test.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, web

__all__ = ["FaultProxy", "Recorded", "fault_proxy"]

_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
}


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class FaultProxy:
    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    #: (predicate, status): answer matching requests with an S3-style error.
    fail_with: tuple[Callable[[Recorded], bool], int] | None = None
    #: The S3 error code of those answers (default: from the status); for InvalidAccessKeyId and
    #: SignatureDoesNotMatch the body echoes the request's access key id, as AWS does.
    fail_code: str | None = None
    #: How many times to fail before passing again (None: always).
    fail_times: int | None = None
    #: Reset the connection after this many bytes of a matching request body.
    reset_after: tuple[Callable[[Recorded], bool], int] | None = None
    #: (predicate, seconds): hold matching requests that long before passing them on.
    delay: tuple[Callable[[Recorded], bool], float] | None = None
    #: Flip the last byte of matching request bodies before passing them on.
    corrupt: Callable[[Recorded], bool] | None = None
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        self.fail_with = self.reset_after = self.delay = self.fail_code = self.corrupt = None
        self.fail_times = None

    def _call(self, coroutine: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def down(self) -> None:
        """Stop listening: S3 is down (connections are refused) until :meth:`up`."""
        assert self._site is not None and self._runner is not None
        site, server = self._site, self._runner.server

        async def stop() -> None:
            await site.stop()
            # Kept-alive connections too: a server that is down answers nobody.
            for handler in list(server.connections if server else ()):
                handler.force_close()

        self._call(stop())

    def up(self) -> None:
        """Listen again, on the same port."""

        async def start() -> None:
            assert self._runner is not None
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

        self._call(start())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Recorded(
            request.method,
            request.path,
            request.query_string,
            {k.lower(): v for k, v in request.headers.items()},
        )
        self.requests.append(seen)
        if self.delay and self.delay[0](seen):
            await asyncio.sleep(self.delay[1])
        if self.reset_after and self.reset_after[0](seen):
            received = 0
            async for chunk in request.content.iter_any():
                received += len(chunk)
                if received >= self.reset_after[1]:
                    break
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("fault proxy: reset")
        if self.fail_with and self.fail_with[0](seen) and self.fail_times != 0:
            if self.fail_times is not None:
                self.fail_times -= 1
            await request.read()
            status = self.fail_with[1]
            code = self.fail_code or {
                403: "AccessDenied",
                500: "InternalError",
                503: "SlowDown",
            }.get(status, "InternalError")
            echo = ""
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                auth = seen.headers.get("authorization", "")
                key = auth.partition("Credential=")[2].partition("/")[0]
                echo = f"<AWSAccessKeyId>{key}</AWSAccessKeyId>"
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>injected by the fault proxy</Message>{echo}</Error>"
            )
            return web.Response(status=status, text=body, content_type="application/xml")
        payload = await request.read()
        if self.corrupt and payload and self.corrupt(seen):
            payload = payload[:-1] + bytes([payload[-1] ^ 1])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers.get("Host", "")
        async with (
            ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                f"{self.upstream}{request.path_qs}",
                data=io.BytesIO(payload),
                headers=headers,
                allow_redirects=False,
            ) as upstream,
        ):
            data = await upstream.read()
            out = web.Response(status=upstream.status, body=data)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    out.headers[key] = value
            return out


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """Run a :class:`FaultProxy` on 127.0.0.1 for the duration of the block."""
    proxy = FaultProxy(upstream)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", proxy._handle)
        app_runner = web.AppRunner(app, access_log=None)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)  # typed as AbstractServer, which has no sockets
        proxy.port = server.sockets[0].getsockname()[1]
        runner["runner"] = app_runner
        proxy._loop, proxy._runner, proxy._site = loop, app_runner, site

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
