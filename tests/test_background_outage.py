"""Background uploads through an outage: saves that do not wait for S3, deletes that stick,
and a shutdown that does not wait out retries which cannot succeed.

S3 "down" is the fault proxy refusing connections (:meth:`FaultProxy.down`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import flask
import pytest
import quart

from async_store import NotFoundError, Store, UploadError
from tests.conftest import s3_config
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS
from tests.test_background import objects, spooled

FAST = {"STORE_BACKGROUND_BACKOFF": 0.05, "STORE_BACKGROUND_MAX_BACKOFF": 0.1}


def make_app(kind: str, spool: Path, **config: Any) -> Any:
    app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    app.config.update(STORE_BACKGROUND=True, STORE_SPOOL_PATH=str(spool), **config)
    return app


def proxied(server: SeaweedFS, bucket: str, proxy: FaultProxy, **config: Any) -> dict[str, Any]:
    return s3_config(
        server, bucket, STORE_PATH="media", STORE_S3_ENDPOINT_URL=proxy.endpoint, **config
    )


@asynccontextmanager
async def serving(kind: str, app: Any, store: Store) -> AsyncIterator[None]:
    """Quart's serving loop runs the deliveries; Flask's are on the shim's loop thread."""
    try:
        if kind == "quart":
            async with app.test_app():
                yield
        else:
            yield
    finally:
        await anyio.to_thread.run_sync(store.close)


class Files:
    """Provider calls for either framework: the async API in Quart, the sync shim in Flask
    (in a worker thread, as a view would make them)."""

    def __init__(self, kind: str, store: Store, app: Any) -> None:
        self.kind = kind
        state = store.state(app)
        self.cls = state.provider_class if kind == "quart" else state.sync_provider_class

    async def call(self, method: Any, *args: Any, **kw: Any) -> Any:
        if self.kind == "quart":
            return await method(*args, **kw)
        return await anyio.to_thread.run_sync(lambda: method(*args, **kw))

    async def save(self, data: bytes, name: str) -> Any:
        provider = self.cls(data, filename=name)
        await self.call(provider.save)
        return provider

    async def wait(self, provider: Any) -> None:
        if self.kind == "quart":
            with anyio.fail_after(20):
                await provider.wait()
        else:
            await anyio.to_thread.run_sync(lambda: provider.wait(timeout=20))


def puts_of(proxy: FaultProxy, name: str) -> int:
    return len([r for r in proxy.requests if r.method == "PUT" and r.path.endswith(f"/{name}")])


# --- 9: a delete after failed attempts sticks -----------------------------------------------


@pytest.mark.parametrize("kind", ["quart", "flask"])
@pytest.mark.parametrize("backend", ["s3", "local"])
async def test_a_failed_upload_deleted_after_the_outage_never_arrives(
    s3_server: SeaweedFS,
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
    kind: str,
    backend: str,
) -> None:
    spool, store_path = tmp_path / "spool", tmp_path / "store"
    settings = {"STORE_BACKGROUND_RETRIES": 2, **FAST}
    quick = {"STORE_S3_MAX_ATTEMPTS": 1}  # botocore retries nothing: the test counts PUTs
    if backend == "s3":
        app = make_app(kind, spool, **proxied(s3_server, bucket, proxy, **settings, **quick))
        proxy.fail_with = (lambda r: r.method == "PUT", 500)
    else:
        store_path.mkdir()
        (store_path / "docs").write_bytes(b"")  # a file where the folder goes: writes fail
        app = make_app(kind, spool, STORE_PATH=str(store_path), **settings)
    store = Store(app)
    files = Files(kind, store, app)
    async with serving(kind, app, store):
        provider = files.cls(b"secret", "docs", filename="a.txt")
        await files.call(provider.save)
        with pytest.raises(UploadError, match="stays spooled"):
            await files.wait(provider)
        assert provider.status == "failed" and len(spooled(spool)) == 1
        # The outage ends; before the next scan, the user deletes the file.
        proxy.clear()
        if backend == "local":
            (store_path / "docs").unlink()
        await files.call(provider.delete)
        assert provider.status == "discarded"
        assert spooled(spool) == []
        await anyio.sleep(0.5)  # several scans: none of them may upload it
    if backend == "s3":
        assert objects(s3_server, bucket) == {}
        assert puts_of(proxy, "a.txt") == 2  # the two failed attempts, nothing after
    else:
        assert list(store_path.rglob("*")) == []
    assert list((spool / "names").iterdir()) == []


async def test_the_name_of_a_spooled_upload_leads_a_delete_to_its_job(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A provider made from a stored path (another request, a row loaded after a restart) has
    no handle: deleting it cancels the spooled job of that name, and the handle of the save
    that spooled it says so."""
    spool = tmp_path / "spool"
    settings = {"STORE_BACKGROUND_RETRIES": 1, "STORE_S3_MAX_ATTEMPTS": 1, **FAST}
    app = make_app("quart", spool, **proxied(s3_server, bucket, proxy, **settings))
    store = Store(app)
    proxy.fail_with = (lambda r: r.method == "PUT", 500)
    async with app.test_app(), app.app_context():
        provider = store.Provider(b"secret", "docs", filename="a.txt")
        await provider.save()
        with pytest.raises(UploadError):
            await provider.wait()
        proxy.clear()
        with pytest.raises(NotFoundError):  # nothing spooled there, nothing stored either
            await store.Provider("docs/other.txt").delete()
        await store.Provider("docs/a.txt").delete()
        # A scan may be delivering it right now: then that delivery deletes what it sent.
        with anyio.fail_after(10):
            while provider.status != "discarded":
                await anyio.sleep(0.02)
        assert spooled(spool) == []
        with pytest.raises(NotFoundError):  # gone: the backend's to say
            await store.Provider("docs/a.txt").delete()
        await anyio.sleep(0.5)  # several scans
    assert objects(s3_server, bucket) == {}
    assert list((spool / "names").iterdir()) == []


# --- 12: saves during an outage do not wait for S3 ------------------------------------------


@pytest.mark.parametrize("kind", ["quart", "flask"])
async def test_saves_during_an_outage_skip_the_name_check_until_a_delivery_succeeds(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path, kind: str
) -> None:
    spool = tmp_path / "spool"
    app = make_app(kind, spool, **proxied(s3_server, bucket, proxy, STORE_S3_MAX_ATTEMPTS=1))
    app.config.update(FAST)
    store = Store(app)
    files = Files(kind, store, app)
    async with serving(kind, app, store):
        proxy.down()  # S3 refuses connections: the first save's name check finds out
        first = await files.save(b"0", "0.txt")
        # S3 answers again, but every write fails: no delivery succeeds, the outage holds.
        proxy.up()
        proxy.fail_with = (lambda r: r.method == "PUT", 503)
        proxy.requests.clear()
        later = [await files.save(str(i).encode(), f"{i}.txt") for i in range(1, 5)]
        assert [r for r in proxy.requests if r.method == "HEAD"] == []  # no name check
        assert len(spooled(spool)) == 5
        # Unchecked names could be taken in the bucket: each got a unique one.
        for i, provider in enumerate([first, *later]):
            assert provider.filename.startswith(f"{i}_") and provider.filename != f"{i}.txt"
        proxy.clear()  # S3 is back: the next delivery that succeeds ends the outage
        for provider in [first, *later]:
            await files.wait(provider)
        proxy.requests.clear()
        checked = await files.save(b"5", "5.txt")
        assert checked.filename == "5.txt"  # checked again: the client's name is kept
        assert len([r for r in proxy.requests if r.method == "HEAD"]) == 1
        await files.wait(checked)
    assert len(objects(s3_server, bucket)) == 6


async def test_a_save_cancelled_during_an_outage_leaves_nothing(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Unchecked, a save claims, spools and publishes in one step: a cancel undoes all of it."""

    async def slow() -> AsyncIterator[bytes]:
        yield b"some"
        await anyio.sleep(30)
        yield b"never"

    spool = tmp_path / "spool"
    app = make_app("quart", spool, **proxied(s3_server, bucket, proxy, STORE_S3_MAX_ATTEMPTS=1))
    store = Store(app)
    async with app.test_app(), app.app_context():
        proxy.down()
        await store.Provider(b"x", filename="first.txt").save()  # finds the outage
        with anyio.move_on_after(0.5):
            await store.Provider(slow(), filename="a.txt").save()
        assert len(spooled(spool)) == 1  # first.txt's only
        assert len(list((spool / "names").iterdir())) == 1


# --- 14: shutdown does not wait for retries that cannot succeed -----------------------------


@pytest.mark.parametrize(
    ("kind", "outage"),
    [("quart", "before the saves"), ("flask", "before the saves"), ("quart", "mid-delivery")],
)
async def test_shutdown_with_s3_down_leaves_pending_uploads_spooled_at_once(
    s3_server: SeaweedFS,
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
    kind: str,
    outage: str,
) -> None:
    # The defaults: 5 attempts with backoff up to 30 s, a 30 s drain, botocore's retries.
    spool = tmp_path / "spool"
    app = make_app(kind, spool, **proxied(s3_server, bucket, proxy))
    store = Store(app)
    files = Files(kind, store, app)
    data = {f"{i}.bin": bytes([i]) * 1024 * 1024 for i in range(5)}
    if outage == "before the saves":
        proxy.down()
    else:
        proxy.delay = (lambda r: r.method == "PUT", 6.0)  # on their way when S3 goes
    if kind == "quart":
        await app.startup()  # as test_app() does, so that the shutdown below can be timed
    try:
        for name, body in data.items():
            await files.save(body, name)
        if outage == "mid-delivery":
            with anyio.fail_after(20):
                while len([r for r in proxy.requests if r.method == "PUT"]) < 4:
                    await anyio.sleep(0.05)
            proxy.down()
        assert len(spooled(spool)) == 5
    finally:
        start = time.monotonic()
        if kind == "quart":
            await app.shutdown()
        await anyio.to_thread.run_sync(store.close)
        took = time.monotonic() - start
    # A loose bound: the drain timeout alone is 30 s (the fix takes about a second here).
    assert took < 10, f"shutdown took {took:.1f} s"
    assert len(spooled(spool)) == 5  # nothing lost: all left for the next start
    proxy.clear()
    proxy.up()
    again = make_app("quart", spool, **proxied(s3_server, bucket, proxy))
    Store(again)
    async with again.test_app():
        with anyio.fail_after(30):
            while spooled(spool):
                await anyio.sleep(0.05)
    assert sorted(objects(s3_server, bucket).values()) == sorted(data.values())
