"""The app ``bench/direct.py`` uploads to, one hypercorn process:
``python -m bench.direct_server PORT ENDPOINT BUCKET``.

An S3 storage with direct uploads mounted (``/direct-uploads/s3/...``), a ``/confirm`` view
that confirms a finished direct upload, and ``/up``, ``save_request`` into the same bucket:
the two ways a browser's file reaches the storage.
"""

from __future__ import annotations

import asyncio
import sys

import quart
from hypercorn.asyncio import serve
from hypercorn.config import Config

from async_store import Store


def make_app(endpoint: str, bucket: str) -> quart.Quart:
    app = quart.Quart(__name__)
    app.config.update(
        SECRET_KEY="bench",
        MAX_CONTENT_LENGTH=None,
        STORE_PROVIDER="s3",
        STORE_S3_BUCKET=bucket,
        STORE_S3_ENDPOINT_URL=endpoint,
        STORE_S3_REGION="us-east-1",
        STORE_S3_ACCESS_KEY="test-access-key",
        STORE_S3_SECRET_KEY="test-secret",
        STORE_PATH="media",
        STORE_DIRECT_MAX_SIZE=8 * 1024**3,
    )
    store = Store(app)
    store.direct_uploads(app)

    @app.post("/confirm")
    async def confirm() -> dict[str, object]:
        record = await store["default"].confirm((await quart.request.get_json())["key"])
        return {"path": record.path, "size": record.size}

    @app.post("/up")
    async def up() -> str:
        stored = await store.save_request(fields=["f"])
        return str(stored.files["f"].relative_path)

    return app


def run(app: quart.Quart, port: int) -> None:
    """Serve ``app`` with hypercorn on 127.0.0.1:``port`` until the process is stopped."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


def main() -> None:
    port, endpoint, bucket = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    run(make_app(endpoint, bucket), port)


if __name__ == "__main__":
    main()
