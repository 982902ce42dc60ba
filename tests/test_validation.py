"""Validation rules (issue 16): declared per storage and per call, checked as the bytes stream
in, refusals as 413/415/422 with nothing left behind, the detected type stored.

Real apps (Quart and Flask), real backends (local disk, SeaweedFS), the background spool; the
streaming tests count what the client sent, never time.
"""

from __future__ import annotations

import html
import io
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import flask
import pytest
import quart
from PIL import Image
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from werkzeug.datastructures import FileStorage

from async_store import (
    BadUploadError,
    ContentMismatchError,
    DisallowedTypeError,
    FileTooLargeError,
    InvalidFileError,
    NotConfiguredError,
    Rules,
    Store,
    StoreError,
    UploadInfo,
    UploadTooLargeError,
)
from async_store._record import FileRecord
from async_store.sqla import FileType, StoreType
from tests.conftest import Driver, Inventory, make_app, s3_client, s3_config
from tests.helpers import BOUNDARY, CONTENT_TYPE, multipart, post_form, upload_scope

MIB = 1024 * 1024
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG")
    return out.getvalue()


def a_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("word/document.xml", "<w/>")
    return out.getvalue()


# --- the rules, on save() ---------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(app_kind: str, store_path: Path, backend: str, request: pytest.FixtureRequest) -> Any:
    """Quart or Flask, local or S3, every file checked against its extension."""
    config: dict[str, Any] = {"STORE_CHECK_CONTENT": True}
    if backend == "s3":
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("bucket")
        return make_app(app_kind, None, **s3_config(server, bucket, STORE_PATH="media", **config))
    return make_app(app_kind, store_path, **config)


LIES = [
    pytest.param(HTML, "avatar.png", "(text/html), not image/png", id="html-as-png"),
    pytest.param(a_zip(), "contract.pdf", "(application/zip), not application/pdf", id="zip-pdf"),
    pytest.param(png(), "notes.txt", "(image/png), not text/plain", id="png-as-txt"),
    pytest.param(b"just text", "photo.jpg", "not JPG: they do not start", id="text-as-jpg"),
    pytest.param(b"\x00\x01\x02binary", "notes.csv", "binary, not text/csv", id="bin-as-csv"),
]


@pytest.mark.parametrize(("data", "name", "found"), LIES)
async def test_a_file_whose_bytes_lie_about_its_extension_is_refused_and_nothing_is_stored(
    driver: Driver, inventory: Inventory, data: bytes, name: str, found: str
) -> None:
    provider = driver.make(data, filename=name)
    with pytest.raises(ContentMismatchError) as info:
        await driver.save(provider)
    error = info.value
    assert error.code == 422 and isinstance(error, BadUploadError)
    assert error.rule == "check_content" and error.filename == name
    assert f"the file {name!r} is refused by the rule check_content" in str(error.description)
    assert found in str(error.description)
    assert inventory.files() == {} and inventory.leftovers() == []


HONEST = [
    pytest.param(png(), "a.png", "image/png", id="png"),
    pytest.param(a_zip(), "report.docx", "application/vnd.openxml", id="docx-is-a-zip"),
    pytest.param(a_zip(), "bundle.zip", "application/zip", id="zip"),
    pytest.param(b"a,b\n1,2\n", "table.csv", "text/csv", id="csv-has-no-signature"),
    pytest.param(png(), "photo.bin", "image/png", id="no-type-by-name-the-bytes-tell"),
    pytest.param(HTML, "page.txt", "text/html", id="html-in-a-txt-is-text-and-stored-as-html"),
]


@pytest.mark.parametrize(("data", "name", "stored_type"), HONEST)
async def test_a_file_that_is_what_it_says_is_stored_with_the_detected_type(
    driver: Driver, inventory: Inventory, backend: str, data: bytes, name: str, stored_type: str
) -> None:
    provider = driver.make(data, filename=name)
    await driver.save(provider)
    assert inventory.files() == {name: data}
    assert provider.content_type.startswith(stored_type)
    record = FileRecord.of(provider.provider if driver.kind == "sync" else provider, "default")
    assert record.content_type == provider.content_type
    if backend == "s3":  # the object's own Content-Type, what the bucket serves
        head = inventory.head(name)
        assert head["ContentType"] == provider.content_type
        if stored_type == "text/html":  # an active type found in the bytes: an attachment
            assert head["ContentDisposition"].startswith("attachment")


async def test_without_rules_nothing_is_sniffed_and_the_name_gives_the_type(
    store_path: Path,
) -> None:
    app = make_app("quart", store_path)
    store = Store(app)
    async with app.app_context():
        provider = store.Provider(HTML, filename="avatar.png")
        await provider.save()  # no rule: stored as before
    assert provider.content_type == "image/png"
    assert (store_path / "avatar.png").read_bytes() == HTML


async def test_the_extension_allow_list(store_path: Path) -> None:
    app = make_app("quart", store_path, STORE_ALLOWED_EXTENSIONS=["JPG", ".png", "tar.gz"])
    store = Store(app)
    async with app.app_context():
        for name in ("a.jpg", "b.PNG", "c.tar.gz"):
            await store.Provider(b"x", filename=name).save()
        for name, ext in (("d.gif", "gif"), ("e.gz", "gz"), ("noext", "")):
            with pytest.raises(DisallowedTypeError) as info:
                await store.Provider(b"x", filename=name).save()
            assert info.value.code == 415 and info.value.found == ext
            assert info.value.rule == "extensions" and repr(name) in str(info.value.description)
    assert sorted(p.name for p in store_path.iterdir()) == ["a.jpg", "b.PNG", "c.tar.gz"]


async def test_the_type_allow_list_takes_families_and_reads_the_bytes(store_path: Path) -> None:
    app = make_app("quart", store_path, STORE_ALLOWED_TYPES=["image/*", "application/pdf"])
    store = Store(app)
    async with app.app_context():
        ok = store.Provider(png(), filename="photo.bin")  # no image name: the bytes are one
        await ok.save()
        assert ok.content_type == "image/png"
        await store.Provider(b"%PDF-1.7\n%...", filename="doc.pdf").save()
        refused = [(HTML, "a.png", "text/html"), (b"?", "b.png", "application/octet-stream")]
        for data, name, found in refused:
            with pytest.raises(DisallowedTypeError) as info:
                await store.Provider(data, filename=name).save()
            assert info.value.found == found and info.value.rule == "types"
            assert "image/*" in str(info.value.description)
    assert sorted(p.name for p in store_path.iterdir()) == ["doc.pdf", "photo.bin"]


async def test_text_that_no_signature_identifies_is_taken_by_its_name(store_path: Path) -> None:
    app = make_app("quart", store_path, STORE_ALLOWED_TYPES=["text/csv"])
    store = Store(app)
    async with app.app_context():
        await store.Provider(b"a,b\n1,2\n", filename="t.csv").save()
        with pytest.raises(DisallowedTypeError):  # text, but not CSV by its name
            await store.Provider(b"a,b\n", filename="t.txt").save()
        with pytest.raises(DisallowedTypeError):  # binary bytes are not text, whatever the name
            await store.Provider(b"\x00\x00\x01", filename="u.csv").save()


# --- custom validators, and per-call rules over the storage's --------------------------------


async def test_custom_validators_sync_and_async_see_the_first_bytes(store_path: Path) -> None:
    app = make_app("quart", store_path)
    store = Store(app)
    seen: list[UploadInfo] = []

    def no_tiny_files(info: UploadInfo) -> None:
        seen.append(info)
        if info.size is not None and info.size < 10:
            raise ValueError(f"{info.size} bytes is too small")

    async def not_named_secret(info: UploadInfo) -> None:
        await anyio.sleep(0)
        if "secret" in info.name:
            raise DisallowedTypeError("no secrets here", rule="secrets", filename=info.filename)

    rules = Rules(validators=[no_tiny_files, not_named_secret])
    async with app.app_context():
        await store.Provider(png(), filename="a.png", validate=rules).save()
        info = seen[-1]
        assert (info.filename, info.extension, info.detected_type) == ("a.png", "png", "image/png")
        assert info.head == png() and info.size == len(png())
        with pytest.raises(InvalidFileError) as invalid:
            await store.Provider(b"tiny", filename="b.txt", validate=rules).save()
        assert invalid.value.code == 422 and invalid.value.rule == "no_tiny_files"
        assert "validator no_tiny_files: 4 bytes is too small" in str(invalid.value.description)
        with pytest.raises(DisallowedTypeError, match="no secrets here"):
            await store.Provider(png(), filename="secret.png", validate=rules).save()

        async def chunks() -> AsyncIterator[bytes]:
            yield png()[:10]
            yield png()[10:] + bytes(HEAD_PAD)

        await store.Provider(chunks(), filename="c.png", validate=rules).save()
        assert seen[-1].size is None and seen[-1].head.startswith(png())  # not ended yet
    assert sorted(p.name for p in store_path.iterdir()) == ["a.png", "c.png"]


HEAD_PAD = 20_000  # more than the 8 KiB head: the size is not known when validators run


async def test_per_call_rules_override_the_storages_and_false_turns_them_off(
    store_path: Path,
) -> None:
    app = make_app("quart", store_path, STORE_MAX_FILE_SIZE=1000, STORE_ALLOWED_EXTENSIONS=["txt"])
    store = Store(app)
    async with app.app_context():
        with pytest.raises(FileTooLargeError) as info:
            await store.Provider(bytes(5000), filename="a.txt").save()
        assert info.value.code == 413 and isinstance(info.value, UploadTooLargeError)
        assert "max_size=1,000 bytes" in str(info.value.description)
        bigger = Rules(max_size=10_000)
        await store.Provider(bytes(5000), filename="b.txt", validate=bigger).save()
        with pytest.raises(DisallowedTypeError):  # the storage's extensions still apply
            await store.Provider(b"x", filename="c.bin", validate=bigger).save()
        narrower = Rules(extensions=["md"])
        with pytest.raises(DisallowedTypeError):
            await store.Provider(b"x", filename="d.txt", validate=narrower).save()
        await store.Provider(bytes(5000), filename="e.bin", validate=False).save()
    assert sorted(p.name for p in store_path.iterdir()) == ["b.txt", "e.bin"]


async def test_storages_declare_their_own_rules(store_path: Path, tmp_path: Path) -> None:
    docs = {"PATH": str(tmp_path / "docs"), "ALLOWED_TYPES": ["application/pdf"]}
    app = make_app("quart", store_path, STORE_STORAGES={"docs": docs})
    store = Store(app)
    async with app.app_context():
        await store.Provider(png(), filename="a.png").save()  # the default storage: no rules
        with pytest.raises(DisallowedTypeError):
            await store["docs"].Provider(png(), filename="a.png").save()


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("STORE_MAX_FILE_SIZE", "big", "whole number"),
        ("STORE_ALLOWED_EXTENSIONS", 5, "file extensions"),
        ("STORE_ALLOWED_EXTENSIONS", ["a/b"], "file extensions"),
        ("STORE_ALLOWED_TYPES", ["image"], "MIME types"),
        ("STORE_CHECK_CONTENT", "maybe", "True or False"),
    ],
)
def test_wrong_rules_are_refused_at_init(
    store_path: Path, key: str, value: Any, allowed: str
) -> None:
    with pytest.raises(NotConfiguredError, match=allowed) as info:
        Store(make_app("flask", store_path, **{key: value}))
    assert str(info.value).startswith(key)


def test_a_malformed_rule_in_code_says_so() -> None:
    with pytest.raises(ValueError, match="image/\\*"):
        Rules(types=["image"])
    with pytest.raises(ValueError, match="number of bytes"):
        Rules(max_size="1 MB")  # type: ignore[arg-type]


# --- through HTTP: save_request in Quart and Flask --------------------------------------------


@pytest.fixture
def http_app(app_kind: str, store_path: Path) -> Iterator[tuple[Any, Store]]:
    """An app whose /up view stores the form's files with save_request under these rules."""
    app = make_app(
        app_kind,
        store_path,
        STORE_MAX_FILE_SIZE=64 * 1024,
        STORE_CHECK_CONTENT=True,
        STORE_ALLOWED_TYPES=["image/*", "application/pdf", "text/plain"],
    )
    store = Store(app)
    pdf_only = {"doc": Rules(types=["application/pdf"])}
    if isinstance(app, quart.Quart):

        @app.post("/up")
        async def up_quart() -> Any:
            stored = await store.save_request(validate=pdf_only)
            return {name: p.content_type for name, p in stored.files.items()}

    else:
        assert isinstance(app, flask.Flask)

        @app.post("/up")
        def up_flask() -> Any:
            stored = store.save_request(validate=pdf_only)
            return {name: p.content_type for name, p in stored.files.items()}

    yield app, store
    store.close()


@pytest.mark.parametrize(
    ("parts", "status", "message"),
    [
        ([("a", "big.png", png() + bytes(100_000))], 413, "max_size=65,536 bytes"),
        ([("a", "page.png", HTML)], 422, "(text/html), not image/png"),
        ([("a", "run.exe", b"MZ\x90\x00" + bytes(64))], 415, "types=['image/*'"),
        ([("a", "ok.png", png()), ("doc", "scan.png", png())], 415, "types=['application/pdf']"),
    ],
    ids=["413-too-large", "422-lying", "415-type", "415-per-field-rule"],
)
async def test_refusals_answer_413_415_422_naming_rule_and_file_and_nothing_is_kept(
    http_app: tuple[Any, Store],
    store_path: Path,
    parts: list[tuple[str, str, bytes]],
    status: int,
    message: str,
) -> None:
    app, _ = http_app
    code, text = await post_form(app, multipart(*parts))
    assert code == status, text
    assert message in text and repr(parts[-1][1]) in text
    assert list(store_path.rglob("*")) == []  # the first file of the form is deleted too


async def test_files_that_pass_are_stored_with_their_detected_types(
    http_app: tuple[Any, Store], store_path: Path
) -> None:
    app, _ = http_app
    body = multipart(("a", "photo.png", png()), ("doc", "c.pdf", b"%PDF-1.4\n"))
    code, text = await post_form(app, body)
    assert code == 200, text
    assert '"a":"image/png"' in text.replace(" ", "") and "application/pdf" in text
    assert sorted(p.name for p in store_path.iterdir()) == ["c.pdf", "photo.png"]


# --- the streaming property: refused after the first bytes, nothing left ----------------------

GIB = 1024 * MIB
#: What a refusal may read: the parser's and the framework's read-ahead, a chunk or two.
FEW_MIB = 4 * MIB


class Endless:
    """A 1 GiB multipart body, made as it is read: one file, ``head`` then zeros."""

    def __init__(self, name: str, head: bytes, size: int = GIB) -> None:
        start = multipart(("f", name, b""))
        cut = start.index(b"\r\n--" + BOUNDARY.encode())
        self.prefix, self.suffix = start[:cut] + head, start[cut:]
        self.length = len(self.prefix) + size + len(self.suffix)
        self.sent = 0

    def tell(self) -> int:
        return self.sent

    def seek(self, offset: int, whence: int = 0) -> int:
        """Werkzeug's test client measures the body so (then goes back to its start)."""
        self.sent = offset if whence == 0 else self.length + offset
        return self.sent

    def read(self, size: int = -1) -> bytes:
        """A file-like body (Flask's wsgi.input)."""
        size = 65536 if size < 0 else min(size, 65536)
        if self.sent >= self.length:
            return b""
        if self.sent < len(self.prefix):
            piece = self.prefix[self.sent : self.sent + size]
        elif self.sent >= self.length - len(self.suffix):
            piece = self.suffix[self.sent - (self.length - len(self.suffix)) :][:size]
        else:
            piece = bytes(min(size, self.length - len(self.suffix) - self.sent))
        self.sent += len(piece)
        return piece


async def send_endless(app: Any, body: Endless) -> tuple[int, str]:
    """Post ``body`` through the app's real server interface (ASGI for Quart, WSGI for
    Flask); the status and the text of the answer."""
    if isinstance(app, flask.Flask):

        def flask_post() -> tuple[int, str]:
            response = app.test_client().post(
                "/up",
                input_stream=body,  # read(), as wsgi.input
                headers={"Content-Type": CONTENT_TYPE},
            )
            return response.status_code, html.unescape(response.get_data(as_text=True))

        return await anyio.to_thread.run_sync(flask_post)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await anyio.sleep(0)
        piece = body.read(65536)
        return {"type": "http.request", "body": piece, "more_body": body.sent < body.length}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(60):
        await app(upload_scope(body.length), receive, send)
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(sent[0]["status"]), html.unescape(text.decode())


@pytest.fixture
def streaming_app(app_kind: str, store_path: Path, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    spool = tmp_path / "spool"
    app = make_app(
        app_kind,
        store_path,
        MAX_CONTENT_LENGTH=None,
        STORE_MAX_CONTENT_LENGTH=None,
        STORE_CHECK_CONTENT=True,
        STORE_MAX_FILE_SIZE=2 * MIB,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(spool),
    )
    store = Store(app)
    if isinstance(app, quart.Quart):

        @app.post("/up")
        async def up_quart() -> str:
            await store.save_request()
            return "stored"

    else:
        assert isinstance(app, flask.Flask)

        @app.post("/up")
        def up_flask() -> str:
            store.save_request()
            return "stored"

    yield app, spool
    store.close()


def jobs_and_temp(spool: Path, store_path: Path) -> list[str]:
    """Spool jobs and their work folders, and any file in the store."""
    found = [p.name for p in spool.iterdir() if p.name != "names"] if spool.exists() else []
    return found + [p.name for p in store_path.rglob("*")]


@pytest.mark.parametrize(
    ("name", "head", "status"),
    [("clip.png", HTML, 422), ("big.png", png(), 413)],
    ids=["lying-type", "too-large"],
)
async def test_a_disallowed_gigabyte_is_refused_after_its_first_mebibytes_and_leaves_nothing(
    streaming_app: tuple[Any, Path], store_path: Path, name: str, head: bytes, status: int
) -> None:
    """Background mode: the file is spooled through the same checked source."""
    app, spool = streaming_app
    body = Endless(name, head)
    code, text = await send_endless(app, body)
    assert code == status and repr(name) in text, text
    limit = FEW_MIB if status == 422 else 2 * MIB + FEW_MIB
    assert body.sent <= limit, f"{body.sent:,} bytes of 1 GiB read before the refusal"
    assert jobs_and_temp(spool, store_path) == []


@pytest.mark.parametrize("backend", ["s3"])  # the inventory looks in the bucket
async def test_s3_multipart_over_max_size_is_aborted_after_at_most_its_limit_and_a_part(
    s3_server: Any, bucket: str, inventory: Inventory
) -> None:
    config = s3_config(s3_server, bucket, STORE_PATH="media", STORE_S3_PART_SIZE=5 * MIB)
    app = make_app("quart", None, STORE_MAX_FILE_SIZE=12 * MIB, **config)
    store = Store(app)
    yielded = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal yielded
        while True:
            yielded += MIB
            yield bytes(MIB)

    try:
        async with app.app_context():
            provider = store.Provider(endless(), filename="huge.bin")
            with pytest.raises(FileTooLargeError):
                await provider.save()
    finally:
        store.close()
    assert yielded <= 13 * MIB  # the chunk over the limit is the last one read
    assert inventory.files() == {} and inventory.leftovers() == []  # the upload was aborted


async def test_background_save_refused_leaves_no_spool_job(
    store_path: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    app = make_app(
        "quart",
        store_path,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(spool),
        STORE_ALLOWED_TYPES=["image/*"],
        STORE_MAX_FILE_SIZE=MIB,
    )
    store = Store(app)
    try:
        async with app.app_context():
            with pytest.raises(DisallowedTypeError):
                await store.Provider(HTML, filename="a.png").save()
            with pytest.raises(FileTooLargeError):
                await store.Provider(png() + bytes(2 * MIB), filename="b.png").save()
            ok = store.Provider(png(), filename="c.png")
            await ok.save()
            await ok.wait()
            assert ok.content_type == "image/png"
    finally:
        store.close()
    assert jobs_and_temp(spool, store_path) == ["c.png"]


def test_the_sync_shim_checks_the_same_rules_in_the_callers_thread_and_on_its_loop(
    store_path: Path,
) -> None:
    app = make_app("flask", store_path, STORE_CHECK_CONTENT=True)
    store = Store(app)
    calls: list[str] = []

    async def noted(info: UploadInfo) -> None:
        calls.append(info.name)

    try:
        with app.app_context():
            with pytest.raises(ContentMismatchError):  # no validator: save_blocking
                store.Provider(HTML, filename="a.png").save()
            provider = store.Provider(png(), filename="b.png", validate=Rules(validators=[noted]))
            provider.save()  # an async validator: on the shim's loop
            assert provider.content_type == "image/png" and calls == ["b.png"]
    finally:
        store.close()
    assert [p.name for p in store_path.iterdir()] == ["b.png"]


@pytest.mark.parametrize("backend", ["s3"])  # the inventory looks in the bucket
async def test_s3_adopt_stores_the_type_a_check_found(
    s3_server: Any, bucket: str, inventory: Inventory
) -> None:
    """What direct-upload confirm hands on: the staged object's sniffed type, not its name's."""
    from async_store.backends.s3 import S3Backend

    app = make_app("quart", None, **s3_config(s3_server, bucket, STORE_PATH="media"))
    store = Store(app)
    inventory.client.put_object(Bucket=bucket, Key="media/staged/x", Body=png())
    try:
        async with app.app_context():
            backend = store.state(app).provider_class.backend
            assert isinstance(backend, S3Backend)
            names = iter(["photo.bin"])
            name = await backend.adopt("staged/x", "", names, content_type="image/png")
    finally:
        store.close()
    assert name == "photo.bin" and inventory.head("photo.bin")["ContentType"] == "image/png"


async def test_a_background_delivery_stores_the_type_the_save_found(
    s3_server: Any, bucket: str, tmp_path: Path
) -> None:
    """HTML in a .txt passes the content check (both text) and is stored as HTML: in
    background mode too, where the object is written later from the spool."""
    config = s3_config(
        s3_server,
        bucket,
        STORE_PATH="media",
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(tmp_path / "spool"),
        STORE_CHECK_CONTENT=True,
    )
    app = make_app("quart", None, **config)
    store = Store(app)
    try:
        async with app.test_app(), app.app_context():
            provider = store.Provider(HTML, filename="notes.txt")
            await provider.save()
            await provider.wait()
            assert provider.content_type == "text/html"
    finally:
        store.close()
    head = s3_client(s3_server).head_object(Bucket=bucket, Key="media/notes.txt")
    assert head["ContentType"] == "text/html"
    assert head["ContentDisposition"].startswith("attachment")  # an active type: downloaded


class ColumnBase(DeclarativeBase):
    pass


class Avatar(ColumnBase):
    __tablename__ = "validated_avatars"
    id: Mapped[int] = mapped_column(primary_key=True)
    path = mapped_column(StoreType(validate=Rules(types=["image/*"])), nullable=True)
    record: Mapped[Any] = mapped_column(
        FileType(location="r", validate=Rules(max_size=100)), nullable=True
    )


@pytest.mark.parametrize("app_kind", ["quart", "flask"])
async def test_a_columns_rules_refuse_an_upload_at_the_flush_and_keep_nothing(
    app_kind: str, store_path: Path, tmp_path: Path
) -> None:
    app = make_app(app_kind, store_path)
    store = Store(app)
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ColumnBase.metadata.create_all(engine)

    def commit(session: Session, values: dict[str, Any]) -> str:
        session.add(Avatar(**values))
        try:
            session.commit()
        except StoreError as exc:
            return type(exc).__name__
        return "stored"

    async def flush(**values: Any) -> str:
        if app_kind == "quart":  # an AsyncSession, the Quart way
            async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
            try:
                async with app.app_context(), AsyncSession(async_engine) as session:
                    return str(await session.run_sync(commit, values))
            finally:
                await async_engine.dispose()

        def in_flask() -> str:
            with app.app_context(), Session(engine) as session:
                return commit(session, values)

        return await anyio.to_thread.run_sync(in_flask)

    def stored() -> list[str]:
        return sorted(p.relative_to(store_path).as_posix() for p in store_path.rglob("*.*"))

    try:
        lying = FileStorage(io.BytesIO(HTML), "me.png")
        assert await flush(path=lying) == "DisallowedTypeError"
        too_big = FileStorage(io.BytesIO(b"x" * 101), "a.txt")
        assert await flush(record=too_big) == "FileTooLargeError"
        assert stored() == []  # refused at the flush: nothing stored
        good = FileStorage(io.BytesIO(png()), "me.png")
        assert await flush(path=good, record=FileStorage(io.BytesIO(b"x" * 100), "a.txt")) == (
            "stored"
        )
        assert stored() == ["me.png", "r/a.txt"]
        with pytest.raises(TypeError, match="Rules"):
            FileType(validate={"max_size": 1})  # type: ignore[arg-type]
    finally:
        engine.dispose()
        store.close()


@pytest.mark.parametrize("app_kind", ["quart", "flask"])
async def test_the_local_route_serves_the_type_the_bytes_showed(
    app_kind: str, store_path: Path
) -> None:
    """A local file keeps its checked type (an extended attribute): the route serves HTML in a
    .txt as HTML, so as an attachment in a sandbox, not as the text its name says."""
    from tests.test_serve import fetch

    app = make_app(app_kind, store_path, STORE_CHECK_CONTENT=True)
    store = Store(app)

    cases: list[tuple[str, Literal[False] | None]] = [("notes.txt", None), ("plain.txt", False)]

    def types_in_flask() -> list[str | None]:
        with app.app_context():
            found = []
            for name, validate in cases:
                provider = store.SyncProvider(HTML, filename=name, validate=validate)
                provider.save()
                found.append(provider.info().content_type)
            return found

    async def types_in_quart() -> list[str | None]:
        async with app.app_context():
            found = []
            for name, validate in cases:
                provider = store.AsyncProvider(HTML, filename=name, validate=validate)
                await provider.save()
                found.append((await provider.info()).content_type)
            return found

    try:
        # The check's type is kept; without a check (validate=False) the name says.
        types = (
            await types_in_quart()
            if app_kind == "quart"
            else await anyio.to_thread.run_sync(types_in_flask)
        )
        assert types == ["text/html", "text/plain"]
        served = await fetch(app, "/uploads/notes.txt")
        assert served.status == 200 and served.body == HTML
        assert served.headers["Content-Type"].startswith("text/html")
        assert served.headers["Content-Disposition"].startswith("attachment")
        assert "sandbox" in served.headers["Content-Security-Policy"]
        plain = await fetch(app, "/uploads/plain.txt")
        assert plain.headers["Content-Type"].startswith("text/plain")
    finally:
        store.close()
