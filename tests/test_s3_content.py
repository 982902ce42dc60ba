"""What a browser does with stored objects: active types are downloaded, never run.

The local route sends HTML, SVG, XML and scripts as attachments (tests/test_serve.py); an S3
object reached through a public bucket or a presigned link follows the same table. Against the
suite's SeaweedFS, which lets anyone read (a public bucket).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest
import quart

from async_store import AsyncStore, Store
from tests.conftest import s3_app, s3_client
from tests.seaweed import SeaweedFS

MIB = 1024 * 1024
SMALL_PARTS = {"STORE_S3_PART_SIZE": 5 * MIB, "STORE_S3_MULTIPART_THRESHOLD": 5 * MIB}
SCRIPT = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(document.cookie)</script></svg>"


def get(url: str) -> tuple[int, Any, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


async def fetch(url: str) -> tuple[int, Any, bytes]:
    return await anyio.to_thread.run_sync(get, url)


def quart_store(server: SeaweedFS, bucket: str, **config: Any) -> tuple[quart.Quart, AsyncStore]:
    app = s3_app(server, bucket, **config)
    return app, Store(app)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.html", SCRIPT),
        ("a.svg", SCRIPT),
        ("a.xml", SCRIPT),
        ("a.js", b"alert(1)"),
        ("noext", SCRIPT),
        ("big.html", os.urandom(6 * MIB)),  # a multipart upload
    ],
)
async def test_active_objects_are_stored_as_attachments(
    s3_server: SeaweedFS, bucket: str, name: str, data: bytes
) -> None:
    app, store = quart_store(s3_server, bucket, STORE_S3_ACL="public-read", **SMALL_PARTS)
    async with app.app_context():
        provider = store.Provider(data, filename=name)
        url = await provider.save()
    status, headers, body = await fetch(url)  # what a browser opening the public link gets
    assert (status, body) == (200, data)
    assert headers["Content-Disposition"] == f"attachment; filename={name}"


async def test_unicode_name_of_an_active_object_is_rfc_6266_encoded(
    s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = quart_store(s3_server, bucket)
    async with app.app_context():
        url = await store.Provider(SCRIPT, filename="отчёт.html").save()
    status, headers, _ = await fetch(url)
    assert status == 200
    disposition = headers["Content-Disposition"]
    assert disposition.isascii() and disposition.startswith("attachment;")
    assert "filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.html" in disposition


@pytest.mark.parametrize("name", ["a.png", "a.txt", "a.pdf", "a.mp4"])
async def test_passive_objects_stay_inline(s3_server: SeaweedFS, bucket: str, name: str) -> None:
    app, store = quart_store(s3_server, bucket)
    async with app.app_context():
        url = await store.Provider(b"data", filename=name).save()
    status, headers, _ = await fetch(url)
    assert status == 200
    assert "attachment" not in headers.get("Content-Disposition", "")


async def test_object_params_decide_when_they_set_a_disposition_or_a_type(
    s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = quart_store(
        s3_server, bucket, STORE_S3_OBJECT_PARAMS={"ContentDisposition": "inline"}
    )
    async with app.app_context():
        await store.Provider(SCRIPT, filename="a.html").save()
    app, store = quart_store(
        s3_server, bucket, STORE_PATH="typed", STORE_S3_OBJECT_PARAMS={"ContentType": "text/html"}
    )
    async with app.app_context():
        await store.Provider(SCRIPT, filename="b.txt").save()
    client = s3_client(s3_server)
    assert client.head_object(Bucket=bucket, Key="media/a.html")["ContentDisposition"] == "inline"
    typed = client.head_object(Bucket=bucket, Key="typed/b.txt")
    assert typed["ContentType"] == "text/html"
    assert typed["ContentDisposition"] == "attachment; filename=b.txt"


async def test_presigned_get_downloads_active_objects_stored_without_the_header(
    s3_server: SeaweedFS, bucket: str
) -> None:
    # Stored by another tool, or before this rule: the link itself asks for an attachment.
    client = s3_client(s3_server)
    client.put_object(Bucket=bucket, Key="media/old.html", Body=SCRIPT, ContentType="text/html")
    client.put_object(Bucket=bucket, Key="media/a.png", Body=b"png", ContentType="image/png")
    app, store = quart_store(s3_server, bucket)
    async with app.app_context():
        old = await store.Provider("old.html").url(expires=60)
        image = await store.Provider("a.png").url(expires=60)
        download = await store.Provider("a.png").url(expires=60, download_name="фото 1.png")
        as_text = await store.Provider("old.html").url(
            expires=60, content_type="text/plain; charset=utf-8"
        )
    status, headers, _ = await fetch(old)
    assert status == 200 and headers["Content-Disposition"] == "attachment; filename=old.html"
    status, headers, _ = await fetch(image)
    assert status == 200 and "Content-Disposition" not in headers
    status, headers, _ = await fetch(download)
    assert status == 200
    assert headers["Content-Disposition"] == (
        "attachment; filename=\" 1.png\"; filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE%201.png"
    )
    status, headers, _ = await fetch(as_text)  # passive now: shown, as text, not run
    assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Content-Disposition" not in headers
