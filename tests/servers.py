"""Real servers on 127.0.0.1 for tests that need bytes on a socket: hypercorn for Quart,
werkzeug's threaded server for Flask."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import quart
from hypercorn.asyncio import serve
from hypercorn.config import Config
from werkzeug.serving import make_server


@contextmanager
def werkzeug_server(app: Any) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@asynccontextmanager
async def hypercorn_server(app: Any, port: int) -> AsyncIterator[int]:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(app, config, shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            while True:
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.02)
        try:
            yield port
        finally:
            stop.set()


@asynccontextmanager
async def real_server(app: Any, port: int) -> AsyncIterator[int]:
    if isinstance(app, quart.Quart):
        async with hypercorn_server(app, port) as bound:
            yield bound
    else:
        with werkzeug_server(app) as bound:
            yield bound
