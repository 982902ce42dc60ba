"""The server the load and crash runs upload to: hypercorn serving a Quart app with async_store.

``python -m bench.load_server PORT CONFIG_JSON``: the ``STORE_*`` keys come as a JSON object
(the store folder or bucket, ``STORE_BACKGROUND``, …). One route, ``POST /up``, streams the
file field ``f`` with ``save_request`` and answers ``{"path": relative_path}`` once the store
took it (for a background upload: once it is spooled). SIGTERM stops it gracefully (background
uploads drain). Used by ``bench/load.py`` and by ``tests/test_load.py`` and ``tests/test_crash.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import quart
from hypercorn.asyncio import serve
from hypercorn.config import Config

from async_store import Store


def make_app(config: dict[str, Any]) -> quart.Quart:
    app = quart.Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    app.config.update(config)
    store = Store(app)

    @app.post("/up")
    async def up() -> dict[str, str]:
        stored = await store.save_request(fields=["f"])
        return {"path": stored.files["f"].relative_path}

    return app


def main() -> None:
    port, config = int(sys.argv[1]), json.loads(sys.argv[2])
    app = make_app(config)
    hyper = Config()
    hyper.bind = [f"127.0.0.1:{port}"]
    hyper.accesslog = hyper.errorlog = None
    hyper.backlog = 1024
    hyper.graceful_timeout = 30

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await serve(app, hyper, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


if __name__ == "__main__":
    main()
