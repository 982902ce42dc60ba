"""Background uploads: spooled at save(), delivered by a task, never lost, delivered once."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
import quart

from async_store import NotConfiguredError, ProviderError, Store, UploadError
from tests.conftest import s3_client, s3_config
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS

FAST = {"STORE_BACKGROUND_BACKOFF": 0.05, "STORE_BACKGROUND_MAX_BACKOFF": 0.1}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def s3_app(
    kind: str,
    server: SeaweedFS,
    bucket: str,
    spool: Path,
    endpoint: str | None = None,
    **config: Any,
) -> Any:
    app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    app.config.update(
        s3_config(
            server,
            bucket,
            STORE_PATH="media",
            STORE_BACKGROUND=True,
            STORE_SPOOL_PATH=str(spool),
            STORE_S3_MAX_ATTEMPTS=1,
            **FAST,
            **config,
        )
    )
    if endpoint:
        app.config["STORE_S3_ENDPOINT_URL"] = endpoint
    return app


def spooled(spool: Path) -> list[str]:
    """Jobs waiting in the spool (reservations and hidden work folders aside)."""
    return sorted(
        p.name for p in spool.iterdir() if p.name != "names" and not p.name.startswith(".")
    )


def objects(server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = s3_client(server)
    found = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


async def spool_undelivered(
    server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy, files: dict[str, bytes]
) -> None:
    """Run an app while S3 refuses every write: the files stay spooled at shutdown."""
    app = s3_app("quart", server, bucket, spool, proxy.endpoint, STORE_BACKGROUND_DRAIN_TIMEOUT=0.5)
    store = Store(app)
    proxy.fail_with = (lambda r: r.method == "PUT", 500)
    async with app.test_app(), app.app_context():
        for name, data in files.items():
            await store.Provider(data, filename=name).save()
    proxy.clear()
    proxy.requests.clear()


async def test_quart_save_returns_when_spooled_then_delivers(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    app = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    store = Store(app)
    async with app.test_app(), app.app_context():
        proxy.fail_with = (lambda r: r.method == "PUT", 503)  # hold delivery back
        provider = store.Provider(b"hello", filename="a.txt")
        url = await provider.save()
        # Name and URL are final before the transfer happens.
        assert url == f"{proxy.endpoint}/{bucket}/media/a.txt"
        assert provider.status == "pending" and provider.filename == "a.txt"
        assert len(spooled(spool)) == 1
        second = store.Provider(b"other", filename="a.txt")
        await second.save()  # the pending name is reserved: no collision at delivery
        assert second.filename != "a.txt"
        proxy.clear()
        with anyio.fail_after(20):
            await provider.wait()
            await second.wait()
        assert provider.status == "delivered"
    assert objects(s3_server, bucket) == {
        "media/a.txt": b"hello",
        f"media/{second.filename}": b"other",
    }
    assert spooled(spool) == [] and list((spool / "names").iterdir()) == []


async def test_failures_are_retried_with_backoff(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    app = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    store = Store(app)
    proxy.fail_with, proxy.fail_times = (lambda r: r.method == "PUT", 500), 3
    async with app.test_app(), app.app_context():
        provider = store.Provider(b"x", filename="a.txt")
        await provider.save()
        with anyio.fail_after(20):
            await provider.wait()
    assert len([r for r in proxy.requests if r.method == "PUT"]) == 4
    assert objects(s3_server, bucket) == {"media/a.txt": b"x"}


async def test_undeliverable_upload_stays_spooled_and_the_next_start_delivers_it_once(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    # First run: S3 answers 500 to every write; retries run out, then shutdown.
    app = s3_app(
        "quart",
        s3_server,
        bucket,
        spool,
        proxy.endpoint,
        STORE_BACKGROUND_RETRIES=2,
        STORE_BACKGROUND_DRAIN_TIMEOUT=1,
    )
    store = Store(app)
    proxy.fail_with = (lambda r: r.method == "PUT", 500)
    async with app.test_app(), app.app_context():
        provider = store.Provider(os.urandom(1000), filename="a.bin")
        await provider.save()
        with pytest.raises(UploadError, match="stays spooled"), anyio.fail_after(20):
            await provider.wait()
        assert provider.status == "failed"
        slow = store.Provider(b"late", filename="late.txt")
        await slow.save()  # still being retried when the app stops
    assert len(spooled(spool)) == 2
    job = json.loads((spool / spooled(spool)[0] / "job.json").read_text())
    assert job["attempts"] >= 1 and "InternalError" in job["last_error"]
    assert objects(s3_server, bucket) == {}

    # Next start, S3 healthy again: both are delivered, and only once.
    proxy.clear()
    proxy.requests.clear()
    app2 = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    Store(app2)
    async with app2.test_app():
        with anyio.fail_after(20):
            while spooled(spool):
                await anyio.sleep(0.05)
    stored = objects(s3_server, bucket)
    assert sorted(stored) == ["media/a.bin", "media/late.txt"]
    assert stored["media/late.txt"] == b"late"
    puts = [r for r in proxy.requests if r.method == "PUT"]
    assert len(puts) == 2


async def test_delivered_before_a_crash_counts_as_delivered(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    await spool_undelivered(s3_server, bucket, spool, proxy, {"a.txt": b"same", "b.txt": b"mine"})
    # As if the upload had landed and the process died before clearing the spool: a.txt
    # holds the job's own bytes; b.txt was taken by a different file meanwhile.
    client = s3_client(s3_server)
    client.put_object(Bucket=bucket, Key="media/a.txt", Body=b"same")
    client.put_object(Bucket=bucket, Key="media/b.txt", Body=b"someone else's")
    app2 = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    Store(app2)
    async with app2.test_app():
        with anyio.fail_after(20):
            while len(spooled(spool)) > 1:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
    assert objects(s3_server, bucket) == {"media/a.txt": b"same", "media/b.txt": b"someone else's"}
    # Never overwritten; kept for a person to look at.
    left = spooled(spool)
    assert len(left) == 1 and (spool / left[0] / "data").read_bytes() == b"mine"


async def test_two_workers_sharing_a_spool_deliver_each_job_once(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    files = {f"{i}.txt": f"file {i}".encode() for i in range(8)}
    await spool_undelivered(s3_server, bucket, spool, proxy, files)
    workers = [s3_app("quart", s3_server, bucket, spool, proxy.endpoint) for _ in range(3)]
    for worker in workers:
        Store(worker)
    async with workers[0].test_app(), workers[1].test_app(), workers[2].test_app():
        with anyio.fail_after(30):
            while spooled(spool):
                await anyio.sleep(0.05)
    assert len(objects(s3_server, bucket)) == 8
    assert len([r for r in proxy.requests if r.method == "PUT"]) == 8


def test_flask_shim_saves_in_background_and_drains_at_close(
    s3_server: SeaweedFS, bucket: str, spool: Path
) -> None:
    app = s3_app("flask", s3_server, bucket, spool)
    assert isinstance(app, flask.Flask)
    store = Store(app)

    @app.post("/upload")
    def upload() -> str:
        provider = store.Provider(flask.request.files["f"])
        return str(provider.save())

    @app.post("/async-upload")
    async def async_upload() -> str:
        provider = store.AsyncProvider(flask.request.files["f"])
        return str(await provider.save())

    client = app.test_client()
    urls = [
        client.post(path, data={"f": (io.BytesIO(body), name)}).text
        for path, body, name in [
            ("/upload", b"sync", "s.txt"),
            ("/async-upload", b"async", "a.txt"),
        ]
    ]
    assert [u.rsplit("/", 1)[1] for u in urls] == ["s.txt", "a.txt"]
    waiter = store.Provider(b"wait", filename="w.txt")
    waiter.save()
    waiter.wait(timeout=20)
    assert waiter.status == "delivered"
    store.close()  # what atexit does: drains the shim's loop
    assert objects(s3_server, bucket) == {
        "media/s.txt": b"sync",
        "media/a.txt": b"async",
        "media/w.txt": b"wait",
    }
    assert spooled(spool) == []


async def test_flask_app_delivers_what_was_spooled_at_start(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    await spool_undelivered(s3_server, bucket, spool, proxy, {"a.txt": b"left over"})
    assert len(spooled(spool)) == 1
    store = Store(s3_app("flask", s3_server, bucket, spool, proxy.endpoint))
    try:
        with anyio.fail_after(20):
            while spooled(spool):
                await anyio.sleep(0.05)
    finally:
        await anyio.to_thread.run_sync(store.close)
    assert objects(s3_server, bucket) == {"media/a.txt": b"left over"}


async def test_local_provider_in_background(tmp_path: Path, spool: Path) -> None:
    app = quart.Quart(__name__)
    app.config.update(
        STORE_PATH=str(tmp_path / "files"), STORE_BACKGROUND=True, STORE_SPOOL_PATH=str(spool)
    )
    store = Store(app)
    async with app.test_app(), app.app_context():
        provider = store.Provider(b"x" * 3_000_000, filename="a.bin")
        assert await provider.save() == "/uploads/a.bin"
        with anyio.fail_after(20):
            await provider.wait()
        assert (tmp_path / "files" / "a.bin").stat().st_size == 3_000_000
        response = await app.test_client().get("/uploads/a.bin")
        assert response.status_code == 200
    assert spooled(spool) == []


@pytest.mark.parametrize("late", [False, True], ids=["before-the-name", "after-the-name"])
async def test_a_failing_upload_stream_spools_nothing(
    s3_server: SeaweedFS, bucket: str, spool: Path, late: bool
) -> None:
    # The name is reserved while the upload is spooled: the stream may fail before or after.
    async def broken() -> Any:
        yield b"some"
        if late:
            await anyio.sleep(0.5)
        raise ConnectionResetError("client went away")

    app = s3_app("quart", s3_server, bucket, spool)
    store = Store(app)
    async with app.test_app(), app.app_context():
        with pytest.raises(ConnectionResetError):
            await store.Provider(broken(), filename="a.txt").save()
        again = store.Provider(b"ok", filename="a.txt")
        await again.save()
        assert again.filename == "a.txt"  # the failed save's reservation was released
        with anyio.fail_after(20):
            await again.wait()
    assert [p for p in spool.iterdir() if p.name != "names"] == []


async def test_a_refused_name_check_spools_nothing(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    app = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    store = Store(app)
    async with app.test_app(), app.app_context():
        proxy.fail_with = (lambda r: r.method == "HEAD", 403)
        with pytest.raises(ProviderError, match="access denied"):
            await store.Provider(b"x" * 3_000_000, filename="a.bin").save()
    assert [p.name for p in spool.iterdir()] == ["names"]
    assert list((spool / "names").iterdir()) == []


async def test_a_cancelled_save_releases_its_name(
    s3_server: SeaweedFS, bucket: str, spool: Path
) -> None:
    async def slow() -> Any:
        yield b"some"
        await anyio.sleep(30)
        yield b"never"

    app = s3_app("quart", s3_server, bucket, spool)
    store = Store(app)
    async with app.test_app(), app.app_context():
        with anyio.move_on_after(1):
            await store.Provider(slow(), filename="a.txt").save()
        assert [p.name for p in spool.iterdir()] == ["names"]
        assert list((spool / "names").iterdir()) == []


async def test_a_job_spooled_by_an_earlier_version_is_delivered(
    s3_server: SeaweedFS, bucket: str, spool: Path, proxy: FaultProxy
) -> None:
    # Earlier versions hashed the upload while spooling and wrote the digest into job.json.
    await spool_undelivered(s3_server, bucket, spool, proxy, {"a.txt": b"old"})
    (job,) = spooled(spool)
    path = spool / job / "job.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "sha256": "0" * 64}))
    app = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    Store(app)
    async with app.test_app():
        with anyio.fail_after(20):
            while spooled(spool):
                await anyio.sleep(0.05)
    assert objects(s3_server, bucket) == {"media/a.txt": b"old"}


def test_seed_gevent_path_turns_background_on(spool: Path) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        STORE_PROVIDER="flask_store.providers.s3.S3GeventProvider",
        STORE_S3_BUCKET="b",
        STORE_SPOOL_PATH=str(spool),
    )
    store = Store(app)
    assert app.config["STORE_BACKGROUND"] is True
    assert store.state(app).background is not None
    store.close()


def test_unusable_spool_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    app = flask.Flask(__name__)
    app.config.update(
        STORE_PATH=str(tmp_path / "files"),
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(tmp_path / "file" / "spool"),
    )
    with pytest.raises(NotConfiguredError, match="STORE_SPOOL_PATH"):
        Store(app)
