"""Shared fixtures: apps for both frameworks, and the provider contract's drivers.

``app`` is a fresh Quart or Flask app (parametrised) with its own STORE_PATH; ``store`` is the
Store registered on it. ``driver`` runs provider calls through the async API or through the sync
shim (in a worker thread, as a Flask view would), so one suite covers both.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import flask
import pytest
import quart

from async_store import Store
from async_store.sync import SyncProvider


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def make_app(kind: str, store_path: Path, **config: Any) -> Any:
    app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    app.config.update(STORE_PATH=str(store_path), **config)
    return app


@pytest.fixture(params=["quart", "flask"])
def app_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def app(app_kind: str, store_path: Path) -> Any:
    return make_app(app_kind, store_path, STORE_DOMAIN="http://files.test")


@pytest.fixture
def store(app: Any) -> Iterator[Store]:
    store = Store(app)
    yield store
    store.close()


class Driver:
    """Runs provider calls the async way or the sync way, awaitable either way."""

    def __init__(self, kind: str, store: Store, app: Any) -> None:
        self.kind = kind
        self.store = store
        self.app = app

    def make(self, fp: Any = None, location: str | None = None, **kw: Any) -> Any:
        state = self.store.state(self.app)
        cls = state.provider_class if self.kind == "async" else state.sync_provider_class
        return cls(fp, location, **kw)

    async def call(self, method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if self.kind == "async":
            return await method(*args, **kw)
        return await anyio.to_thread.run_sync(lambda: method(*args, **kw))

    async def save(self, provider: Any) -> str:
        return str(await self.call(provider.save))

    async def exists(self, provider: Any, filename: str | None = None) -> bool:
        return bool(await self.call(provider.exists, filename))

    async def delete(self, provider: Any, **kw: Any) -> None:
        await self.call(provider.delete, **kw)

    @asynccontextmanager
    async def open(self, provider: Any) -> AsyncIterator[Any]:
        """Yields an object with ``async read(n)`` whichever API is underneath."""
        if self.kind == "async":
            async with provider.open() as f:
                yield f
            return
        assert isinstance(provider, SyncProvider)
        cm = provider.open()
        f = await anyio.to_thread.run_sync(cm.__enter__)
        try:
            yield _AsyncOverSync(f)
        finally:
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)

    async def read_all(self, provider: Any, chunk: int = 65536) -> bytes:
        out = io.BytesIO()
        async with self.open(provider) as f:
            while data := await f.read(chunk):
                out.write(data)
        return out.getvalue()


class _AsyncOverSync:
    def __init__(self, f: Any) -> None:
        self._f = f

    async def read(self, n: int = -1) -> bytes:
        return bytes(await anyio.to_thread.run_sync(self._f.read, n))


@pytest.fixture(params=["async", "sync"])
def driver(request: pytest.FixtureRequest, store: Store, app: Any) -> Driver:
    return Driver(str(request.param), store, app)
