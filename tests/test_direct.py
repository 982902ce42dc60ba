"""Direct-to-bucket uploads (issue 15): the endpoints Uppy's ``@uppy/aws-s3`` plugin calls, the
bytes sent straight to a real S3 server (SeaweedFS with an identity: it checks POST policies
and signatures), and the confirm step that makes a staged upload a stored file.

Every request to the bucket is the one a browser would make: a form POST of the presigned
fields, or a PUT of each part to its presigned URL (httpx).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import flask
import httpx
import pytest
import quart
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from async_store import (
    BadUploadError,
    ContentMismatchError,
    DisallowedTypeError,
    FileTooLargeError,
    NotConfiguredError,
    NotFoundError,
    Rules,
    Store,
    UploadTooLargeError,
)
from async_store.sqla import FileRecord, FileType, StoreType

from .conftest import new_bucket, s3_client, s3_config
from .seaweed import SeaweedFS
from .test_cli import invoke

SECRET = "a secret key for the direct upload tests"
MIB = 1024 * 1024


@pytest.fixture
def bucket(signed_s3_server: SeaweedFS) -> Iterator[str]:
    with new_bucket(signed_s3_server, "direct") as name:
        yield name


def make(kind: str, server: SeaweedFS, bucket: str, **config: Any) -> tuple[Any, Store]:
    app: Any = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    secret = config.pop("SECRET_KEY", SECRET)
    app.config.update(s3_config(server, bucket, STORE_PATH="media", **config))
    if secret is not None:
        app.config["SECRET_KEY"] = secret
    store = Store(app)
    return app, store


class Client:
    """The app's endpoints as the plugin calls them, in Quart or Flask."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.is_async = isinstance(app, quart.Quart)

    async def call(self, method: str, path: str, **options: Any) -> tuple[int, Any]:
        if self.is_async:
            response = await getattr(self.app.test_client(), method)(path, **options)
            return response.status_code, await response.get_json()

        def in_thread() -> tuple[int, Any]:  # a Flask view blocks: never on the test's loop
            response = getattr(self.app.test_client(), method)(path, **options)
            return response.status_code, response.get_json()

        return await anyio.to_thread.run_sync(in_thread)


def objects(server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = s3_client(server)
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


async def confirm(
    app: Any, store: Store, key: str, location: str = "", validate: Rules | None = None
) -> FileRecord:
    if isinstance(app, quart.Quart):
        async with app.app_context():
            record: FileRecord = await store["default"].confirm(key, location, validate)
            return record

    def in_flask() -> FileRecord:
        with app.app_context():
            found: FileRecord = store["default"].confirm(key, location, validate)
            return found

    return await anyio.to_thread.run_sync(in_flask)


async def post_single(client: Client, filename: str, data: bytes, type_: str) -> tuple[int, str]:
    """GET /s3/params, then the browser's form POST to the bucket: (S3's status, the key)."""
    status, params = await client.call(
        "get", "/direct-uploads/s3/params", query_string={"filename": filename, "type": type_}
    )
    assert status == 200, params
    assert params["method"] == "POST" and params["headers"] == {}
    reply = httpx.post(
        params["url"], data=params["fields"], files={"file": (filename, data, type_)}, timeout=60
    )
    return reply.status_code, params["fields"]["key"]


@pytest.mark.parametrize("kind", ["quart", "flask"])
async def test_a_single_upload_goes_to_the_bucket_and_is_confirmed(
    kind: str, signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make(kind, signed_s3_server, bucket)
    store.direct_uploads(app)
    client = Client(app)
    data = b"%PDF-1.7 straight to the bucket"
    status, key = await post_single(client, "Report (final).pdf", data, "application/pdf")
    assert status == 204
    assert key.startswith("media/.direct/") and key.endswith("/Report_(final).pdf")
    # Staged: not a stored file (hidden from listings) until confirmed.
    async with _context(app):
        assert [f async for f in store["default"].AsyncProvider.files("")] == []
    record = await confirm(app, store, key, "reports")
    assert record.path == "reports/Report_(final).pdf" and record.storage == "default"
    assert (record.size, record.content_type) == (len(data), "application/pdf")
    assert record.filename == "Report (final).pdf"
    assert objects(signed_s3_server, bucket) == {"media/reports/Report_(final).pdf": data}
    with pytest.raises(NotFoundError, match="confirmed already"):
        await confirm(app, store, key, "reports")
    store.close()


class _context:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.context = app.app_context()

    async def __aenter__(self) -> None:
        if isinstance(self.app, quart.Quart):
            await self.context.__aenter__()
        else:
            self.context.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        if isinstance(self.app, quart.Quart):
            await self.context.__aexit__(*exc)
        else:
            self.context.__exit__(*exc)


async def test_the_bucket_refuses_what_the_signature_does_not_allow(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket, STORE_DIRECT_MAX_SIZE=1000)
    store.direct_uploads(app)
    client = Client(app)
    _, params = await client.call(
        "get", "/direct-uploads/s3/params", query_string={"filename": "a.txt", "type": "text/plain"}
    )
    url, fields = params["url"], params["fields"]
    too_big = httpx.post(url, data=fields, files={"file": ("a.txt", b"x" * 1001, "text/plain")})
    assert too_big.status_code == 400 and "EntityTooLarge" in too_big.text
    other_type = httpx.post(
        url,
        data={**fields, "Content-Type": "text/html"},
        files={"file": ("a", b"<b>", "text/html")},
    )
    assert other_type.status_code == 403
    elsewhere = httpx.post(
        url, data={**fields, "key": "media/index.html"}, files={"file": ("a", b"x", "text/plain")}
    )
    assert elsewhere.status_code == 403
    assert objects(signed_s3_server, bucket) == {}
    store.close()


async def test_a_multipart_upload_resumes_and_is_confirmed(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    client = Client(app)
    data = os.urandom(11 * MIB)
    status, created = await client.call(
        "post", "/direct-uploads/s3/multipart", json={"filename": "data.bin", "type": ""}
    )
    assert status == 201, created
    upload_id, key = created["uploadId"], created["key"]
    base = f"/direct-uploads/s3/multipart/{upload_id}"
    chunks = [data[i : i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    # The first part alone, as the plugin signs one part at a time...
    _, signed = await client.call("get", f"{base}/1", query_string={"key": key})
    first = httpx.put(signed["url"], content=chunks[0], timeout=60)
    assert first.status_code == 200
    # ... then the connection drops: the plugin lists what arrived and goes on from there.
    status, listed = await client.call("get", base, query_string={"key": key})
    assert status == 200 and [p["PartNumber"] for p in listed] == [1]
    _, batch = await client.call(
        "get", f"{base}/batch", query_string={"key": key, "partNumbers": "2,3"}
    )
    etags = {1: first.headers["etag"]}
    for number in (2, 3):
        reply = httpx.put(
            batch["presignedUrls"][str(number)], content=chunks[number - 1], timeout=60
        )
        etags[number] = reply.headers["etag"]
    parts = [{"PartNumber": n, "ETag": e} for n, e in etags.items()]
    status, done = await client.call(
        "post", f"{base}/complete", query_string={"key": key}, json={"parts": parts}
    )
    assert status == 200, done
    record = await confirm(app, store, key)
    assert (record.path, record.size) == ("data.bin", len(data))
    assert record.content_type == "application/octet-stream"
    assert objects(signed_s3_server, bucket) == {"media/data.bin": data}
    store.close()


def docs_cors_rule() -> dict[str, Any]:
    """The CORS rule docs/direct.md tells users to put on their bucket."""
    text = (Path(__file__).parent.parent / "docs" / "direct.md").read_text()
    block = text.split("```json\n")
    found = [b.split("```")[0] for b in block[1:] if "CORSRules" in b]
    assert len(found) == 1, "docs/direct.md has one CORS rule"
    rule: dict[str, Any] = json.loads(found[0])
    return rule


async def test_the_documented_cors_rule_lets_the_page_send_parts(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    rule = docs_cors_rule()
    s3_client(signed_s3_server).put_bucket_cors(Bucket=bucket, CORSConfiguration=rule)
    page = rule["CORSRules"][0]["AllowedOrigins"][0]
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    client = Client(app)
    _, created = await client.call(
        "post", "/direct-uploads/s3/multipart", json={"filename": "data.bin", "type": ""}
    )
    base = f"/direct-uploads/s3/multipart/{created['uploadId']}"
    _, batch = await client.call(
        "get", f"{base}/batch", query_string={"key": created["key"], "partNumbers": "1,2"}
    )
    url = batch["presignedUrls"]["2"]  # signed by the app from botocore's first
    asks = {
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type",
    }
    preflight = httpx.options(url, headers={"Origin": page, **asks})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == page
    assert "PUT" in preflight.headers["access-control-allow-methods"]
    # The part itself: its ETag is readable by the page's script (Uppy completes with it).
    sent = httpx.put(url, content=b"p" * 1024, headers={"Origin": page}, timeout=60)
    assert sent.status_code == 200 and sent.headers["etag"]
    assert "etag" in sent.headers["access-control-expose-headers"].lower()
    other = httpx.options(url, headers={"Origin": "https://elsewhere.example", **asks})
    assert other.headers.get("access-control-allow-origin") is None
    store.close()


async def test_a_multipart_upload_over_the_limit_is_aborted(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket, STORE_DIRECT_MAX_SIZE=6 * MIB)
    store.direct_uploads(app)
    client = Client(app)
    _, created = await client.call(
        "post", "/direct-uploads/s3/multipart", json={"filename": "big.bin"}
    )
    upload_id, key = created["uploadId"], created["key"]
    base = f"/direct-uploads/s3/multipart/{upload_id}"
    parts = []
    for number in (1, 2):
        _, signed = await client.call("get", f"{base}/{number}", query_string={"key": key})
        reply = httpx.put(signed["url"], content=os.urandom(5 * MIB), timeout=60)
        parts.append({"PartNumber": number, "ETag": reply.headers["etag"]})
    status, refused = await client.call(
        "post", f"{base}/complete", query_string={"key": key}, json={"parts": parts}
    )
    assert status == 413 and "STORE_DIRECT_MAX_SIZE" in refused["error"]
    uploads = s3_client(signed_s3_server).list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads")  # no parts left to pay for
    assert objects(signed_s3_server, bucket) == {}  # the assembled object deleted at once
    with pytest.raises(NotFoundError):  # nothing to confirm: a stored file it never becomes
        await confirm(app, store, key)
    store.close()


async def test_confirm_never_overwrites_a_stored_file(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    async with app.app_context():
        await store.AsyncProvider(b"the first one", filename="a.txt").save()
    _, key = await post_single(Client(app), "a.txt", b"the second one", "text/plain")
    record = await confirm(app, store, key)
    assert record.path != "a.txt" and record.path.startswith("a_") and record.filename == "a.txt"
    stored = objects(signed_s3_server, bucket)
    assert stored["media/a.txt"] == b"the first one"
    assert stored[f"media/{record.path}"] == b"the second one"
    assert len(stored) == 2
    store.close()


async def test_types_the_storage_does_not_take_are_refused(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make(
        "quart", signed_s3_server, bucket, STORE_DIRECT_CONTENT_TYPES=["image/*", "application/pdf"]
    )
    store.direct_uploads(app)
    client = Client(app)
    status, refused = await client.call(
        "get", "/direct-uploads/s3/params", query_string={"filename": "x.html", "type": "text/html"}
    )
    assert status == 415 and "STORE_DIRECT_CONTENT_TYPES" in refused["error"]
    assert refused["message"] == refused["error"]  # the key Uppy shows the user
    status, _ = await client.call(
        "post", "/direct-uploads/s3/multipart", json={"filename": "x.svg", "type": "image/svg+xml"}
    )
    assert status == 201  # image/* it is
    status, _ = await client.call(
        "post", "/direct-uploads/s3/multipart", json={"filename": "x.exe"}
    )
    assert status == 415  # no type given: the name's (application/x-msdownload…) is checked
    status, ok = await client.call(
        "get", "/direct-uploads/s3/params", query_string={"filename": "p.png", "type": "image/png"}
    )
    assert status == 200, ok
    store.close()


async def test_keys_the_server_did_not_issue_are_refused(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    client = Client(app)
    _, created = await client.call("post", "/direct-uploads/s3/multipart", json={"filename": "a"})
    upload_id, key = created["uploadId"], created["key"]
    issued, _, name = key.rpartition("/")
    forged = [
        "media/contracts/secret.pdf",  # a stored file
        "media/.direct/../a",
        f"{issued}/other-name",  # the name is signed too
        f"{issued[:-1]}{'A' if issued[-1] != 'A' else 'B'}/{name}",  # a changed signature
        key.removeprefix("media/"),  # without the storage's prefix
    ]
    for bad in forged:
        status, refused = await client.call(
            "get", f"/direct-uploads/s3/multipart/{upload_id}/1", query_string={"key": bad}
        )
        assert status == 400, (bad, refused)
        with pytest.raises(BadUploadError):
            await confirm(app, store, bad)
    # Another app's key (another SECRET_KEY) is not this one's either.
    other, other_store = make("quart", signed_s3_server, bucket, SECRET_KEY="another secret")
    other_store.direct_uploads(other)
    with pytest.raises(BadUploadError, match="not a direct upload"):
        await confirm(other, other_store, key)
    store.close()
    other_store.close()


async def test_a_staged_upload_expires(signed_s3_server: SeaweedFS, bucket: str) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    uploads_blueprint = store.direct_uploads(app)
    assert uploads_blueprint.name == "store_direct"
    _, key = await post_single(Client(app), "late.txt", b"too late", "text/plain")
    uploads = store.state(app).direct_uploads
    assert uploads is not None
    uploads.keys.clock = lambda: (datetime.now(UTC) + timedelta(days=2)).timestamp()
    with pytest.raises(BadUploadError, match="STORE_DIRECT_MAX_AGE"):
        await confirm(app, store, key)
    assert await uploads.cleanup(older_than=0) == (1, 0)
    assert objects(signed_s3_server, bucket) == {}
    store.close()


async def test_cleanup_aborts_multipart_uploads_never_completed(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    await Client(app).call("post", "/direct-uploads/s3/multipart", json={"filename": "a"})
    uploads = store.state(app).direct_uploads
    assert uploads is not None
    assert await uploads.cleanup() == (0, 0)  # younger than STORE_DIRECT_MAX_AGE: kept
    assert await uploads.cleanup(older_than=0) == (0, 1)
    assert not s3_client(signed_s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads")
    store.close()


@pytest.mark.parametrize("kind", ["quart", "flask"])
async def test_the_app_decides_who_may_upload(
    kind: str, signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make(kind, signed_s3_server, bucket)

    def authorize(request: Any) -> bool:
        return bool(request.headers.get("X-User") == "alice")

    store.direct_uploads(app, authorize=authorize)
    client = Client(app)
    query = {"filename": "a.txt", "type": "text/plain"}
    status, _ = await client.call("get", "/direct-uploads/s3/params", query_string=query)
    assert status == 403
    status, _ = await client.call(
        "get", "/direct-uploads/s3/params", query_string=query, headers={"X-User": "alice"}
    )
    assert status == 200
    store.close()


def test_only_an_s3_storage_with_a_secret_key_takes_direct_uploads(
    signed_s3_server: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    local = quart.Quart(__name__)
    local.config.update(SECRET_KEY=SECRET, STORE_PATH=str(tmp_path))
    local_store = Store(local)
    with pytest.raises(NotConfiguredError, match="keeps its files in 'local'"):
        local_store.direct_uploads(local)
    local_store.close()
    app, store = make("quart", signed_s3_server, bucket, SECRET_KEY=None)
    store.direct_uploads(app)
    with pytest.raises(NotConfiguredError, match="SECRET_KEY"):
        store.state(app).direct_uploads.keys.issue("a.txt")  # type: ignore[union-attr]
    store.close()


def test_refusals_are_errors_a_view_answers_with_their_status() -> None:
    assert DisallowedTypeError("x").code == 415
    assert issubclass(DisallowedTypeError, BadUploadError)
    assert UploadTooLargeError("x").code == 413


class Base(DeclarativeBase):
    pass


class Upload(Base):
    __tablename__ = "direct_uploads"
    id: Mapped[int] = mapped_column(primary_key=True)
    record: Mapped[Any] = mapped_column(FileType(), nullable=True)
    path = mapped_column(StoreType(), nullable=True)


async def test_a_confirmed_upload_goes_in_a_record_or_a_path_column(
    signed_s3_server: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    _, key = await post_single(Client(app), "scan.png", b"\x89PNG scan", "image/png")
    record = await confirm(app, store, key)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)

    def scenario(session: Session) -> tuple[Any, Any]:
        row = Upload(record=record, path=record)
        session.add(row)
        session.commit()
        session.expire_all()
        loaded = session.get(Upload, row.id)
        assert loaded is not None
        return loaded.record, loaded.path

    async with app.app_context(), AsyncSession(engine) as session:
        loaded_record, loaded_path = await session.run_sync(scenario)
        assert loaded_record == record  # size, type, the client's name: all kept
        assert loaded_path.relative_path == record.path == "scan.png"
        async with loaded_record.open() as f:
            assert await f.read() == b"\x89PNG scan"
    await engine.dispose()
    store.close()


async def test_store_cleanup_removes_what_was_never_confirmed(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket)
    store.direct_uploads(app)
    client = Client(app)
    status, _ = await post_single(client, "left.txt", b"never confirmed", "text/plain")
    assert status == 204
    await client.call("post", "/direct-uploads/s3/multipart", json={"filename": "half.bin"})
    async with app.app_context():
        await store.AsyncProvider(b"a stored file", filename="kept.txt").save()
    store.close()
    config = s3_config(signed_s3_server, bucket, STORE_PATH="media")
    young = await anyio.to_thread.run_sync(invoke, ["cleanup"], config)
    assert young.exit_code == 0, young.output
    assert "removed 0 staged uploads, aborted 0 multipart uploads" in young.output
    done = await anyio.to_thread.run_sync(invoke, ["cleanup", "--older-than", "0"], config)
    assert done.exit_code == 0, done.output
    assert "default: removed 1 staged upload, aborted 1 multipart upload" in done.output
    assert objects(signed_s3_server, bucket) == {"media/kept.txt": b"a stored file"}
    assert not s3_client(signed_s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_confirm_checks_the_storages_rules_on_the_bytes(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    app, store = make("quart", signed_s3_server, bucket, STORE_CHECK_CONTENT=True)
    store.direct_uploads(app)
    client = Client(app)
    _, lying = await post_single(client, "avatar.png", b"<html><script>x</script>", "image/png")
    with pytest.raises(ContentMismatchError, match=r"'avatar.png'.*HTML"):
        await confirm(app, store, lying)
    assert objects(signed_s3_server, bucket) == {}  # the staged object went too
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
    _, honest = await post_single(client, "photo.png", png, "image/png")
    record = await confirm(app, store, honest)
    assert record.content_type == "image/png"
    assert objects(signed_s3_server, bucket) == {"media/photo.png": png}
    with pytest.raises(FileTooLargeError, match="max_size"):
        _, key = await post_single(client, "big.png", png, "image/png")
        await confirm(app, store, key, validate=Rules(max_size=10))
    store.close()


async def staged_image(server: SeaweedFS, bucket: str, jpeg: bytes) -> tuple[Any, Store, str]:
    """A storage with a 64 px WebP thumbnail variant, and ``jpeg`` uploaded to its staging as
    cat.jpg: (app, store, staged key)."""
    thumb = {"thumb": {"size": [64, 64], "format": "webp"}}
    app, store = make("quart", server, bucket, STORE_IMAGE_VARIANTS=thumb)
    store.direct_uploads(app)
    _, key = await post_single(Client(app), "cat.jpg", jpeg, "image/jpeg")
    return app, store, key


async def test_confirm_makes_the_storages_image_variants(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (640, 480), "teal").save(picture, "JPEG")
    app, store, key = await staged_image(signed_s3_server, bucket, picture.getvalue())
    record = await confirm(app, store, key, "photos")
    assert record.variants == {"thumb": "photos/_variants/cat.jpg/thumb.webp"}
    stored = objects(signed_s3_server, bucket)
    assert set(stored) == {"media/photos/cat.jpg", "media/photos/_variants/cat.jpg/thumb.webp"}
    thumb = Image.open(io.BytesIO(stored["media/photos/_variants/cat.jpg/thumb.webp"]))
    assert thumb.format == "WEBP" and max(thumb.size) == 64
    store.close()


async def test_confirm_of_an_image_no_variant_can_be_made_of_keeps_nothing(
    signed_s3_server: SeaweedFS, bucket: str
) -> None:
    """A JPEG cut short: its header passes, its pixels do not decode. The confirm is a 422, as a
    save of it would be, and neither the staged nor a stored copy stays."""
    from PIL import Image

    picture = io.BytesIO()
    Image.effect_noise((640, 480), 64).convert("RGB").save(picture, "JPEG")
    cut = picture.getvalue()[: len(picture.getvalue()) // 3]
    app, store, key = await staged_image(signed_s3_server, bucket, cut)
    with pytest.raises(BadUploadError) as refused:
        await confirm(app, store, key, "photos")
    assert refused.value.code == 422
    assert objects(signed_s3_server, bucket) == {}
    store.close()
