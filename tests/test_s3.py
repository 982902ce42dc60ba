"""What the S3 provider does beyond the shared contract, against a real SeaweedFS.

Faults come from a loopback proxy in front of it (tests/faultproxy.py): 5xx and 403 answers,
connections reset mid-upload; "endpoint down" is a port nobody listens on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import tracemalloc
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
import quart

from async_store import AsyncStore, NotConfiguredError, ProviderError, Store
from tests.conftest import S3_CREDENTIALS, s3_app, s3_client, s3_config
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS, free_port

MIB = 1024 * 1024
# S3's smallest parts, so multipart uploads happen with little data.
SMALL_PARTS = {"STORE_S3_PART_SIZE": 5 * MIB, "STORE_S3_MULTIPART_THRESHOLD": 5 * MIB}


def quart_store(server: SeaweedFS, bucket: str, **config: Any) -> tuple[quart.Quart, AsyncStore]:
    app = s3_app(server, bucket, **config)
    return app, Store(app)


async def agen(data: bytes, size: int = 1 * MIB) -> Any:
    for i in range(0, len(data), size):
        await anyio.lowlevel.checkpoint()
        yield data[i : i + size]


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"STORE_S3_BUCKET": None}, "STORE_S3_BUCKET"),
        ({"STORE_S3_ACL": "everyone"}, "STORE_S3_ACL"),
        ({"STORE_S3_PART_SIZE": MIB}, "STORE_S3_PART_SIZE"),
        ({"STORE_S3_MULTIPART_THRESHOLD": 1}, "STORE_S3_MULTIPART_THRESHOLD"),
        ({"STORE_S3_MAX_CONCURRENCY": 0}, "STORE_S3_MAX_CONCURRENCY"),
        ({"STORE_S3_MAX_POOL_CONNECTIONS": 0}, "STORE_S3_MAX_POOL_CONNECTIONS"),
        ({"STORE_S3_MAX_POOL_CONNECTIONS": "fifty"}, "STORE_S3_MAX_POOL_CONNECTIONS"),
        ({"STORE_S3_OBJECT_PARAMS": {"Bogus": 1}}, "STORE_S3_OBJECT_PARAMS"),
        ({"STORE_S3_ENDPOINT_URL": "127.0.0.1:8333"}, "STORE_S3_ENDPOINT_URL"),
        ({"STORE_S3_SECRET_KEY": None}, "STORE_S3_ACCESS_KEY"),
    ],
)
def test_wrong_config_names_the_key(config: dict[str, Any], key: str) -> None:
    app = flask.Flask(__name__)
    app.config.update({"STORE_PROVIDER": "s3", "STORE_S3_BUCKET": "b", **S3_CREDENTIALS})
    app.config.update(config)
    with pytest.raises(NotConfiguredError, match=key):
        Store(app)


@pytest.mark.parametrize(
    "name", ["s3", "flask_store.providers.s3.S3Provider", "async_store.providers.s3.S3Provider"]
)
def test_provider_names(name: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(STORE_PROVIDER=name, STORE_S3_BUCKET="b")
    store = Store(app)
    assert store.AsyncProvider.__name__ == "S3Provider"
    assert app.config["STORE_S3_ACL"] == "private"


@pytest.mark.parametrize(
    ("config", "url"),
    [
        (
            {"STORE_S3_REGION": "eu-west-1"},
            "https://pics.s3.eu-west-1.amazonaws.com/media/cats/a.jpg",
        ),
        ({"STORE_DOMAIN": "https://cdn.example.org"}, "https://cdn.example.org/media/cats/a.jpg"),
        ({"STORE_S3_ENDPOINT_URL": "http://minio:9000"}, "http://minio:9000/pics/media/cats/a.jpg"),
    ],
)
def test_absolute_urls(config: dict[str, str], url: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(STORE_PROVIDER="s3", STORE_S3_BUCKET="pics", STORE_PATH="/media/", **config)
    provider = Store(app).AsyncProvider("cats/a.jpg")
    assert provider.absolute_path == "media/cats/a.jpg"
    assert provider.absolute_url == url


# --- objects ----------------------------------------------------------------------------------


async def test_public_url_and_presigned_url_fetch_the_file(
    s3_server: SeaweedFS, bucket: str
) -> None:
    public = f"http://localhost:{s3_server.s3_port}"
    app, store = quart_store(s3_server, bucket, STORE_S3_PUBLIC_ENDPOINT_URL=public)
    async with app.app_context():
        provider = store.Provider(b"picture", filename="a.png")
        url = await provider.save()
        assert url == f"{public}/{bucket}/media/a.png"
        signed = await provider.url(expires=60)
        assert signed.startswith(f"{public}/{bucket}/media/a.png?")
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in signed and "AWSAccessKeyId" not in signed

    def fetch(link: str) -> bytes:
        with urllib.request.urlopen(link) as response:
            return bytes(response.read())

    for link in (url, signed):
        assert await anyio.to_thread.run_sync(fetch, link) == b"picture"


async def test_content_type_and_object_params(s3_server: SeaweedFS, bucket: str) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_OBJECT_PARAMS={"CacheControl": "max-age=60", "ContentDisposition": "inline"},
    )
    async with app.app_context():
        for name in ("a.png", "notes.txt", "blob.weirdext", "noext"):
            await store.Provider(b"x", filename=name).save()
    client = s3_client(s3_server)
    head = {
        n: client.head_object(Bucket=bucket, Key=f"media/{n}")
        for n in ("a.png", "notes.txt", "blob.weirdext", "noext")
    }
    assert head["a.png"]["ContentType"] == "image/png"
    assert head["notes.txt"]["ContentType"] == "text/plain"
    assert head["blob.weirdext"]["ContentType"] == "application/octet-stream"
    assert head["noext"]["ContentType"] == "application/octet-stream"
    assert head["a.png"]["CacheControl"] == "max-age=60"
    assert head["a.png"]["ContentDisposition"] == "inline"


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("hashed", [True, False])
@pytest.mark.parametrize("checksum", ["auto", "sha256", "crc32", "off"])
async def test_the_checksum_the_server_verifies(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, checksum: str, hashed: bool
) -> None:
    app, store = quart_store(
        s3_server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint, STORE_S3_CHECKSUM=checksum
    )
    data = b"verified on arrival"
    async with app.app_context():
        provider = store.Provider(data, filename="a.txt", checksum=hashed)
        await provider.save()
    direct, direct_store = quart_store(s3_server, bucket)  # the proxy drops HEAD's length
    async with direct.app_context():
        info = await direct_store.Provider(provider.relative_path).info()
    [put] = [r for r in proxy.requests if r.method == "PUT"]
    sent = {k: v for k, v in put.headers.items() if k.startswith("x-amz-checksum-")}
    # 'auto': the upload's own SHA-256 when it is hashed anyway, else the cheaper CRC32.
    kind = {"auto": "sha256" if hashed else "crc32"}.get(checksum, checksum)
    if kind == "sha256":
        assert sent == {"x-amz-checksum-sha256": sha256(data)}
        assert info.sha256 == hashlib.sha256(data).hexdigest()  # kept there
    elif kind == "crc32":
        assert sent == {"x-amz-checksum-crc32": crc32(data)}
        assert info.sha256 is None
    else:
        assert sent == {} and info.sha256 is None
    if hashed:
        assert provider.sha256 == hashlib.sha256(data).hexdigest()
    if kind != "off":
        # The body is hashed once: the checksum above, not SigV4's payload hash too.
        assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    else:  # SigV4's hash of the body is then what covers it (on plain HTTP)
        assert put.headers["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("multipart", [False, True])
@pytest.mark.parametrize("checksum", ["auto", "sha256", "crc32"])
async def test_bytes_changed_on_the_way_are_refused_and_nothing_is_stored(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, checksum: str, multipart: bool
) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_CHECKSUM=checksum,
        STORE_S3_MAX_ATTEMPTS=1,
        **SMALL_PARTS,
    )
    data = os.urandom(11 * MIB if multipart else 4096)
    # The last byte of each upload body flips between the app and the server.
    proxy.corrupt = lambda r: r.method == "PUT"
    async with app.app_context():
        provider = store.Provider(data, filename="flipped.bin")
        with pytest.raises(ProviderError, match="flipped.bin") as refused:
            await provider.save()
        assert "BadDigest" in str(refused.value)
        assert not await store.Provider("flipped.bin").exists()
    listed = s3_client(s3_server).list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert listed == 0
    assert s3_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("checksum", ["auto", "sha256", "crc32", "off"])
async def test_the_checksums_of_a_multipart_upload(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, checksum: str
) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_CHECKSUM=checksum,
        **SMALL_PARTS,
    )
    data = os.urandom(11 * MIB)  # parts of 5, 5 and 1 MiB
    async with app.app_context():
        provider = store.Provider(agen(data), filename="big.bin", checksum=True)
        await provider.save()
        async with provider.open() as f:
            assert await f.read() == data
    parts = [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.query]
    # In flight together: recorded in the order they arrived, put back in part order.
    parts.sort(key=lambda r: int(r.query.split("partNumber=")[1].split("&")[0]))
    [create] = [r for r in proxy.requests if r.method == "POST" and r.query == "uploads"]
    assert len(parts) == 3
    sent = [{k: v for k, v in p.headers.items() if k.startswith("x-amz-checksum-")} for p in parts]
    pieces = [data[i : i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    # Each part's own checksum, for the server to verify part by part: S3 keeps no whole-object
    # SHA-256 of a multipart object, so 'auto' takes CRC32 (a fifth of the CPU).
    if checksum == "sha256":
        assert create.headers.get("x-amz-checksum-algorithm") == "SHA256"
        assert sent == [{"x-amz-checksum-sha256": sha256(p)} for p in pieces]
    elif checksum in ("auto", "crc32"):
        assert create.headers.get("x-amz-checksum-algorithm") == "CRC32"
        assert sent == [{"x-amz-checksum-crc32": crc32(p)} for p in pieces]
    else:
        assert sent == [{}, {}, {}]
    # The whole file's SHA-256 is the upload's own, computed once while it streamed.
    assert provider.sha256 == hashlib.sha256(data).hexdigest()


def test_the_checksum_setting_is_checked(tmp_path: Path) -> None:
    app = quart.Quart(__name__)
    app.config.update(STORE_PROVIDER="s3", STORE_S3_BUCKET="b", STORE_S3_CHECKSUM="md5")
    with pytest.raises(NotConfiguredError, match="STORE_S3_CHECKSUM"):
        Store(app)


@pytest.mark.parametrize("acl", ["private", "public-read", None])
async def test_acl_is_sent_in_the_same_put(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, acl: str | None
) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_ACL=acl,
        **SMALL_PARTS,
    )
    async with app.app_context():
        await store.Provider(b"small", filename="s.txt").save()
        await store.Provider(agen(os.urandom(11 * MIB)), filename="big.bin").save()
    writes = [r for r in proxy.requests if r.method in ("PUT", "POST")]
    assert not [r for r in proxy.requests if "acl" in r.query.split("&")], "a separate ACL call"
    small = [r for r in writes if r.path.endswith("/s.txt")]
    create = [r for r in writes if r.path.endswith("/big.bin") and r.query == "uploads"]
    assert len(small) == 1 and len(create) == 1
    for request in (small[0], create[0]):
        assert request.headers.get("x-amz-acl") == acl


async def test_multipart_upload_in_parts_with_conditional_complete(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        **SMALL_PARTS,
    )
    data = os.urandom(23 * MIB + 5)
    async with app.app_context():
        provider = store.Provider(agen(data, 3 * MIB), filename="big.bin")
        await provider.save()
        async with provider.open() as f:
            assert await f.read() == data
    parts = sorted(
        int(dict(q.split("=") for q in r.query.split("&"))["partNumber"])
        for r in proxy.requests
        if "partNumber" in r.query
    )
    assert parts == [1, 2, 3, 4, 5]
    complete = [r for r in proxy.requests if r.method == "POST" and "uploadId" in r.query]
    assert len(complete) == 1 and complete[0].headers.get("if-none-match") == "*"
    single = [r for r in proxy.requests if r.method == "PUT" and "partNumber" not in r.query]
    assert single == []


@pytest.mark.parametrize("size", [0, 8 * MIB, 12 * MIB, 12 * MIB + 1, 23 * MIB])
async def test_threshold_above_part_size_keeps_every_byte(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, size: int
) -> None:
    # A threshold above the part size once stored only the first part of larger files.
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_PART_SIZE=5 * MIB,
        STORE_S3_MULTIPART_THRESHOLD=12 * MIB,
    )
    data = os.urandom(size)
    async with app.app_context():
        await store.Provider(agen(data, 3 * MIB), filename="f.bin").save()
    body = s3_client(s3_server).get_object(Bucket=bucket, Key="media/f.bin")["Body"].read()
    assert body == data
    multipart = any("uploads" in r.query.split("&") for r in proxy.requests)
    assert multipart == (size > 12 * MIB)


@pytest.mark.parametrize("size", [12 * MIB, 12 * MIB + 1, 23 * MIB + 5])
@pytest.mark.parametrize("kind", ["bytes", "path", "iterator"])
async def test_blocking_sources_are_cut_into_parts(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path, kind: str, size: int
) -> None:
    # In-memory bytes up to the threshold are read on the loop; other blocking sources read
    # their head in one worker-thread hop and the rest a part per hop.
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_PART_SIZE=5 * MIB,
        STORE_S3_MULTIPART_THRESHOLD=12 * MIB,
    )
    data = os.urandom(size)
    source: Any = data
    if kind == "path":
        source = tmp_path / "f.bin"
        source.write_bytes(data)
    elif kind == "iterator":  # chunks that never line up with the parts
        source = iter([data[i : i + MIB + 7] for i in range(0, size, MIB + 7)])
    async with app.app_context():
        await store.Provider(source, filename="f.bin").save()
    body = s3_client(s3_server).get_object(Bucket=bucket, Key="media/f.bin")["Body"].read()
    assert body == data
    parts = [r for r in proxy.requests if "partNumber" in r.query]
    assert len(parts) == (0 if size <= 12 * MIB else -(-size // (5 * MIB)))


async def test_large_upload_memory_is_bounded(s3_server: SeaweedFS, bucket: str) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        **SMALL_PARTS,
        STORE_S3_MAX_CONCURRENCY=2,
    )
    chunk = os.urandom(MIB)

    async def sixty_four_mib() -> Any:
        for _ in range(64):
            yield chunk

    async with app.app_context():
        # Warm up: botocore loads its models (~10 MiB, once per process) on the first client.
        await store.Provider(b"warm", filename="warm.txt").save()
        provider = store.Provider(sixty_four_mib(), filename="big.bin")
        tracemalloc.start()
        try:
            await provider.save()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    head = s3_client(s3_server).head_object(Bucket=bucket, Key="media/big.bin")
    assert head["ContentLength"] == 64 * MIB
    # Two parts in flight, one being cut, plus copies on the way into aiohttp.
    assert peak < 32 * MIB, f"save held {peak / MIB:.1f} MiB for a 64 MiB upload"


@pytest.mark.parametrize(("count", "size"), [(100, 0), (3, 6 * MIB)], ids=["put", "multipart"])
async def test_concurrent_uploads_of_one_name(
    s3_server: SeaweedFS, bucket: str, count: int, size: int
) -> None:
    # All pass the HEAD check; the conditional write (PUT, or multipart complete) lets one win,
    # and the others re-send their (rewindable) content under collision names.
    app, store = quart_store(
        s3_server,
        bucket,
        **SMALL_PARTS,
    )
    sent = [os.urandom(size or 100 + 37 * i) for i in range(count)]
    names: list[str] = []

    async def one(data: bytes) -> None:
        provider = store.AsyncProvider(data, filename="same.bin", checksum=True)
        await provider.save()
        names.append(provider.filename)
        # The losers read their content again for the next name: counted and hashed once.
        assert (provider.size, provider.sha256) == (len(data), hashlib.sha256(data).hexdigest())

    async with app.app_context(), anyio.create_task_group() as tg:
        for data in sent:
            tg.start_soon(one, data)
    assert len(set(names)) == count and "same.bin" in names
    client = s3_client(s3_server)
    assert client.list_objects_v2(Bucket=bucket, MaxKeys=1000)["KeyCount"] == count
    stored = sorted(
        hashlib.sha256(
            client.get_object(Bucket=bucket, Key=f"media/{n}")["Body"].read()
        ).hexdigest()
        for n in names
    )
    assert stored == sorted(hashlib.sha256(d).hexdigest() for d in sent)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_without_conditional_writes_head_picks_the_name(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = quart_store(
        s3_server, bucket, STORE_S3_CONDITIONAL_WRITES=False, STORE_S3_ENDPOINT_URL=proxy.endpoint
    )
    async with app.app_context():
        first, second = (store.Provider(d, filename="a.txt") for d in (b"1", b"2"))
        await first.save()
        await second.save()
    assert first.filename == "a.txt" and second.filename.startswith("a_")
    puts = [r for r in proxy.requests if r.method == "PUT"]
    assert all("if-none-match" not in r.headers for r in puts)


async def test_files_come_in_the_servers_order(s3_server: SeaweedFS, bucket: str) -> None:
    # Streamed as the server lists them, never gathered to be sorted. SeaweedFS lists a folder's
    # contents where the folder's name sorts ("avatars/me.jpg" before "avatars.txt"); AWS in
    # UTF-8 byte order (the reverse, as the local provider does).
    client = s3_client(s3_server)
    paths = ["avatars.txt", "avatars/me.jpg", "avatars-old/x.png", "a+b/c", "a/b", "фото.txt"]
    for path in paths:
        client.put_object(Bucket=bucket, Key=f"media/{path}", Body=b"x")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="media/")
    listed = [obj["Key"].removeprefix("media/") for page in pages for obj in page["Contents"]]
    app, store = quart_store(s3_server, bucket)
    async with app.app_context():
        files = [f.path async for f in store.Provider.files()]
    assert sorted(files) == sorted(paths)
    assert files == listed


# --- errors and faults ------------------------------------------------------------------------


async def test_exists_tells_absent_from_forbidden(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = quart_store(s3_server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint)
    async with app.app_context():
        provider = store.Provider("missing.txt")
        assert await provider.exists() is False
        proxy.fail_with = (lambda r: r.method == "HEAD", 403)
        with pytest.raises(ProviderError, match="access denied"):
            await provider.exists()


async def test_endpoint_down(bucket: str, s3_server: SeaweedFS) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=down,
        STORE_S3_MAX_ATTEMPTS=2,
        STORE_S3_CONNECT_TIMEOUT=2,
    )
    async with app.app_context():
        with pytest.raises(ProviderError, match="STORE_S3_ENDPOINT_URL") as info:
            await store.Provider(b"x", filename="a.txt").save()
    assert info.value.__cause__ is not None


async def test_transient_5xx_is_retried(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = quart_store(s3_server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint)
    proxy.fail_with, proxy.fail_times = (lambda r: r.method == "PUT", 503), 2
    async with app.app_context():
        provider = store.Provider(b"x", filename="a.txt")
        await provider.save()
    assert len([r for r in proxy.requests if r.method == "PUT"]) == 3
    assert s3_client(s3_server).get_object(Bucket=bucket, Key="media/a.txt")["Body"].read() == b"x"


@pytest.mark.parametrize("size", [100, 7 * MIB])
async def test_persistent_5xx_fails_cleanly(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, size: int
) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_MAX_ATTEMPTS=2,
        **SMALL_PARTS,
    )
    proxy.fail_with = (lambda r: r.method == "PUT", 500)
    async with app.app_context():
        with pytest.raises(ProviderError, match="InternalError") as info:
            await store.Provider(os.urandom(size), filename="a.bin").save()
    assert info.value.__cause__ is not None
    client = s3_client(s3_server)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_connection_reset_mid_upload_leaves_nothing(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = quart_store(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_MAX_ATTEMPTS=2,
        **SMALL_PARTS,
    )
    proxy.reset_after = (lambda r: "partNumber=2" in r.query, MIB)
    async with app.app_context():
        with pytest.raises(ProviderError):
            await store.Provider(agen(os.urandom(12 * MIB)), filename="a.bin").save()
    client = s3_client(s3_server)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_credentials_never_show(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    app, store = quart_store(
        s3_server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint, STORE_S3_MAX_ATTEMPTS=1
    )
    secrets = list(S3_CREDENTIALS.values())
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with app.app_context():
            provider = store.Provider(b"x", filename="a.txt")
            await provider.save()
            await provider.exists()
            async with provider.open() as f:
                await f.read()
            texts += [repr(provider), repr(store.state()), repr(store.state().config)]
            for status in (403, 500):
                proxy.fail_with = (lambda r: True, status)
                with pytest.raises(ProviderError) as info:
                    await store.Provider(b"y", filename="b.txt").save()
                texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
    texts += [record.getMessage() for record in caplog.records]
    assert any("Authorization" in t or "authorization" in t for t in texts), "no DEBUG logs seen"
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- clients and event loops ------------------------------------------------------------------


async def test_quart_keeps_one_client_for_its_serving_loop(
    s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = quart_store(s3_server, bucket)
    clients = store.state().provider_class.backend._clients  # type: ignore[attr-defined]
    async with app.test_app(), app.app_context():
        await store.Provider(b"1", filename="a.txt").save()
        kept = dict(clients._kept)
        assert len(kept) == 1
        await store.Provider(b"2", filename="b.txt").save()
        assert dict(clients._kept) == kept
    assert clients._kept == {}  # closed by after_serving


@pytest.mark.parametrize(("config", "pool"), [({}, 50), ({"STORE_S3_MAX_POOL_CONNECTIONS": 3}, 3)])
async def test_connection_pool_size(
    s3_server: SeaweedFS, bucket: str, config: dict[str, int], pool: int
) -> None:
    app, store = quart_store(s3_server, bucket, **config)
    assert app.config["STORE_S3_MAX_POOL_CONNECTIONS"] == pool
    clients = store.state().provider_class.backend._clients  # type: ignore[attr-defined]
    async with app.test_app(), app.app_context():
        # More saves at once than the pool has connections: they queue for one, and all land.
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(store.Provider(b"x", filename=f"{i}.txt").save)
        ((_, client),) = clients._kept.values()
        assert client.meta.config.max_pool_connections == pool
    assert s3_client(s3_server).list_objects_v2(Bucket=bucket)["KeyCount"] == 8


def test_flask_shim_keeps_one_client_and_closes_it(s3_server: SeaweedFS, bucket: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(s3_config(s3_server, bucket))
    store = Store(app)
    clients = store.state().provider_class.backend._clients  # type: ignore[attr-defined]
    for i in range(3):
        provider = store.Provider(b"x", filename=f"{i}.txt")
        provider.save()
        with provider.open() as f:
            assert f.read() == b"x"
    assert len(clients._kept) == 1
    store.close()
    assert clients._kept == {}


def test_flask_async_view_with_s3(s3_server: SeaweedFS, bucket: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(s3_config(s3_server, bucket))
    store = Store(app)

    @app.post("/upload")
    async def upload() -> str:
        return str(await store.AsyncProvider(flask.request.files["f"]).save())

    import io

    for _ in range(2):  # a new event loop per request: a client per call, closed with it
        response = app.test_client().post("/upload", data={"f": (io.BytesIO(b"q"), "q.txt")})
        assert response.status_code == 200, response.text
    keys = [o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2


@pytest.mark.parametrize("checksum", ["auto", "sha256", "off"])
async def test_an_empty_file_is_stored_empty(
    s3_server: SeaweedFS, bucket: str, checksum: str
) -> None:
    app, store = quart_store(s3_server, bucket, STORE_S3_CHECKSUM=checksum)
    async with app.app_context():
        for i, upload in enumerate((b"", agen(b""), io.BytesIO())):
            provider = store.Provider(upload, filename=f"empty{i}.txt")
            await provider.save()
            assert (await provider.info()).size == 0
            async with provider.open() as f:
                assert await f.read() == b""
    head = s3_client(s3_server).head_object(Bucket=bucket, Key="media/empty0.txt")
    assert head["ContentLength"] == 0
