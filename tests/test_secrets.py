"""Secrets: the S3 access key, secret key and session token never show in a repr, a log line (of
any logger, DEBUG included, tracebacks included), an error message, or a file the library writes
(the spool's job.json keeps the last error), whatever goes wrong: bad credentials (a 403 that
echoes the access key id, as AWS does), a 5xx, an endpoint that is down.

The library must not configure boto's loggers either (levels, handlers): only the scrubbing
filter is its own.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import quart

from async_store import ProviderError, Store
from tests.conftest import s3_app
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS, free_port

MIB = 1024 * 1024
SECRETS = {
    "STORE_S3_ACCESS_KEY": "AKIAQUITESECRETKEY42",
    "STORE_S3_SECRET_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY",
    "STORE_S3_SESSION_TOKEN": "FwoGZXIvYXdzEBSESSIONTOKENVALUE//////////wEaDH",
}


class Everything(logging.Handler):
    """Every record of every logger, formatted with its traceback, as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.names.add(record.name.split(".")[0])


@pytest.fixture
def logs() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def app_for(server: SeaweedFS, bucket: str, endpoint: str, **config: Any) -> quart.Quart:
    return s3_app(
        server,
        bucket,
        STORE_S3_ENDPOINT_URL=endpoint,
        STORE_S3_MAX_ATTEMPTS=1,
        STORE_S3_CONNECT_TIMEOUT=2,
        STORE_S3_MULTIPART_THRESHOLD=5 * MIB,
        STORE_S3_PART_SIZE=5 * MIB,
        **{**SECRETS, **config},
    )


def error_texts(exc: BaseException) -> list[str]:
    """What a user could print of an error: str, repr, and the whole traceback with causes."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def assert_clean(texts: list[str]) -> None:
    for text in texts:
        for key, secret in SECRETS.items():
            # As is, and percent-encoded as in a URL (a presigned URL's canonical request).
            for form in (secret, quote(secret, safe="")):
                assert form not in text, (
                    f"{key} leaked: ...{text[max(0, text.find(form) - 200) :][:400]}"
                )


async def test_nothing_leaks_from_work_and_failures(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, logs: Everything
) -> None:
    app = app_for(s3_server, bucket, proxy.endpoint)
    store = Store(app)
    texts: list[str] = []
    async with app.test_app(), app.app_context():
        small = store.Provider(b"small", filename="a.txt")
        await small.save()
        large = store.Provider(os.urandom(11 * MIB), filename="b.bin")
        await large.save()
        assert await small.exists()
        async with small.open() as f:
            assert await f.read() == b"small"
        await small.url(expires=60)
        await large.delete()
        state = store.state()
        texts += [repr(store), repr(state), repr(state.config), repr(small), repr(small.upload)]
        texts += [repr(store.Provider), repr(store.SyncProvider("a.txt")), str(vars(small))]
        # Bad credentials, as AWS answers them (the body echoes the access key id); a 5xx.
        for status, code in (
            (403, "InvalidAccessKeyId"),
            (403, "SignatureDoesNotMatch"),
            (500, None),
        ):
            proxy.fail_with, proxy.fail_code = (lambda r: True, status), code
            for data in (b"x", os.urandom(6 * MIB)):
                with pytest.raises(ProviderError) as info:
                    await store.Provider(data, filename="c.bin").save()
                assert ("access denied" if status == 403 else "500") in str(info.value)
                texts += error_texts(info.value)
            with pytest.raises(ProviderError) as info:
                await small.exists()
            texts += error_texts(info.value)
            proxy.clear()
    # The DEBUG logs were really there, and carried the signed headers (now scrubbed).
    assert {"botocore", "aiobotocore"} <= logs.names, logs.names
    assert any("Authorization" in line for line in logs.lines)
    assert any("***" in line for line in logs.lines), "no credential was scrubbed: none logged?"
    assert_clean(texts + logs.lines)


async def test_nothing_leaks_when_the_endpoint_is_down(
    s3_server: SeaweedFS, bucket: str, logs: Everything
) -> None:
    app = app_for(s3_server, bucket, f"http://127.0.0.1:{free_port()}")
    store = Store(app)
    texts: list[str] = []
    async with app.test_app(), app.app_context():
        with pytest.raises(ProviderError, match="STORE_S3_ENDPOINT_URL") as info:
            await store.Provider(b"x", filename="a.txt").save()
        texts += error_texts(info.value)
    assert logs.lines
    assert_clean(texts + logs.lines)


async def test_nothing_leaks_from_background_failures(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path, logs: Everything
) -> None:
    spool = tmp_path / "spool"
    app = app_for(
        s3_server,
        bucket,
        proxy.endpoint,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(spool),
        STORE_BACKGROUND_RETRIES=2,
        STORE_BACKGROUND_BACKOFF=0.05,
        STORE_BACKGROUND_MAX_BACKOFF=0.1,
        STORE_BACKGROUND_DRAIN_TIMEOUT=1,
    )
    store = Store(app)
    texts: list[str] = []
    async with app.test_app(), app.app_context():
        proxy.fail_with, proxy.fail_code = (lambda r: r.method == "PUT", 403), "InvalidAccessKeyId"
        provider = store.Provider(b"x" * 1000, filename="a.txt")
        await provider.save()
        with anyio.fail_after(20), pytest.raises(Exception) as info:
            await provider.wait()
        texts += error_texts(info.value)
    # The job's record of its last error is on disk: clean too.
    texts += [p.read_text(errors="replace") for p in spool.rglob("*") if p.is_file()]
    assert any("InvalidAccessKeyId" in t for t in texts)
    assert_clean(texts + logs.lines)


def test_the_library_leaves_boto_logging_alone(s3_server: SeaweedFS, bucket: str) -> None:
    names = ("botocore", "aiobotocore", "boto3", "aioboto3", "urllib3", "aiohttp")
    before = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    app = app_for(s3_server, bucket, s3_server.endpoint)
    store = Store(app)

    async def work() -> None:
        async with app.test_app(), app.app_context():
            await store.Provider(b"x", filename="a.txt").save()

    anyio.run(work)
    after = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    assert after == before
    assert all(logging.getLogger(n).propagate for n in names)


async def test_a_short_development_key_leaves_messages_readable(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, logs: Everything
) -> None:
    # SeaweedFS's README example: any key works there. Blanked everywhere, "any" turned every
    # "company" into "comp***" in logs and errors; it is still blanked where credentials go.
    app = app_for(
        s3_server,
        bucket,
        proxy.endpoint,
        STORE_S3_ACCESS_KEY="any",
        STORE_S3_SECRET_KEY="any",
        STORE_S3_SESSION_TOKEN=None,
        STORE_S3_READ_TIMEOUT=1,
    )
    store = Store(app)
    async with app.test_app(), app.app_context():
        provider = store.Provider(b"x", filename="company.txt")
        await provider.save()
        link = await provider.url(expires=60)
        proxy.delay = (lambda r: r.method == "GET", 3)
        with pytest.raises(ProviderError) as info:
            async with provider.open() as f:
                await f.read()
    assert "media/company.txt" in str(info.value), str(info.value)
    assert "X-Amz-Credential=any%2F" in link  # the link itself must carry it
    lines = logs.lines
    assert any("media/company.txt" in line for line in lines)
    assert not any("comp***" in line for line in lines)
    signed = [line for line in lines if "Credential=" in line]
    assert signed, "no signed request logged"
    for line in signed:
        assert "Credential=any" not in line and "Credential=***" in line, line
