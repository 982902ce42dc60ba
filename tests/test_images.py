"""Images (issue 16): rules read from an image's header (format, width, height, pixels: the
decompression bomb), and variants made after the original is stored, listed in its record and
deleted with it.

Every image is made here with Pillow (a JPEG with EXIF orientation and GPS tags, PNG, WebP,
GIF), and the bomb is a PNG whose IHDR chunk, written by hand, claims 100000×100000. Real apps
(Quart and Flask, their test clients), real storages (local disk, SeaweedFS), real databases
(SQLite, PostgreSQL). The autouse blockbuster fixture fails any blocking call async_store makes
on the event loop: the decoding runs in worker threads.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import flask
import pytest
import quart
import werkzeug.datastructures
from PIL import Image, ImageOps
from sqlalchemy import create_engine, delete, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from async_store import (
    DisallowedTypeError,
    ImageRules,
    InvalidFileError,
    NotConfiguredError,
    Rules,
    Store,
    Variant,
    make_variants,
)
from async_store._image_check import IMAGE_HEAD_SIZE
from async_store.sqla import FileRecord, FileType
from tests.conftest import make_app, s3_config
from tests.helpers import multipart, post_form
from tests.test_sqla import new_database, postgres

__all__ = ["postgres"]  # test_sqla's fixture: one PostgreSQL server for the session

RED, BLUE = (255, 0, 0), (0, 0, 255)
GPS_IFD, ORIENTATION, USER_COMMENT = 0x8825, 0x0112, 0x9286
VARIANTS = {
    "thumb": {"size": [64, 64], "format": "webp", "fit": "cover"},
    "preview": {"width": 200},
}


def photo(size: tuple[int, int] = (600, 400), orientation: int = 6, comment: int = 0) -> bytes:
    """A JPEG as a phone writes it: stored sideways with an EXIF orientation (6: turn it a
    quarter clockwise to show it), GPS tags, a camera make; its stored top-left quarter red,
    the rest blue. ``comment``: bytes of EXIF user comment (a header that comes late)."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "TestCam"
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (52.0, 22.0, 5.0), 3: "E", 4: (4.0, 53.0, 0.0)})
    if comment:
        exif[USER_COMMENT] = b"ASCII\x00\x00\x00" + b"x" * comment
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=90)
    return out.getvalue()


def encoded(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, BLUE).save(out, fmt)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header (an IHDR chunk written by hand) claims ``width``×``height``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(4096))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- the rules: format, width, height, pixels, from the header ---------------------------------


@pytest.fixture
def quart_store(store_path: Path) -> Iterator[tuple[quart.Quart, Store]]:
    app = make_app("quart", store_path, STORE_IMAGE_FORMATS=["jpeg", "png", "webp"])
    store = Store(app)
    yield app, store
    store.close()


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (photo(), "photo.jpg"),
        (encoded("PNG"), "a.png"),
        (encoded("WEBP"), "a.webp"),
        (encoded("WEBP", mode="RGBA"), "alpha.webp"),
    ],
    ids=["jpeg", "png", "webp-lossy", "webp-alpha"],
)
async def test_the_formats_taken_are_stored(
    quart_store: tuple[quart.Quart, Store], store_path: Path, data: bytes, name: str
) -> None:
    app, store = quart_store
    async with app.app_context():
        provider = store.state().AsyncProvider(data, filename=name)
        await provider.save()
    assert (store_path / name).read_bytes() == data


@pytest.mark.parametrize(
    ("data", "name", "found"),
    [
        (encoded("GIF"), "a.gif", "it is a GIF image"),
        (encoded("BMP"), "a.bmp", "it is a BMP image"),
        (b"%PDF-1.7 a contract", "a.pdf", "its bytes are application/pdf, not an image"),
    ],
    ids=["gif", "bmp", "pdf"],
)
async def test_other_formats_and_non_images_are_refused_with_415(
    quart_store: tuple[quart.Quart, Store], store_path: Path, data: bytes, name: str, found: str
) -> None:
    app, store = quart_store
    async with app.app_context():
        with pytest.raises(DisallowedTypeError) as info:
            await store.state().AsyncProvider(data, filename=name).save()
    error = info.value
    assert error.code == 415 and error.rule == "images.formats" and error.filename == name
    assert f"the file {name!r} is refused by the rule images.formats=" in str(error.description)
    assert found in str(error.description)
    assert list(store_path.iterdir()) == []


async def test_size_rules_leave_files_that_are_no_images_alone(store_path: Path) -> None:
    app = make_app("quart", store_path, STORE_IMAGE_MAX_PIXELS=100)
    store = Store(app)
    async with app.app_context():
        await store.state().AsyncProvider(b"a,b\n1,2\n", filename="t.csv").save()
        await store.state().AsyncProvider(b"%PDF-1.7", filename="d.pdf").save()
        with pytest.raises(InvalidFileError):
            await store.state().AsyncProvider(encoded("PNG", (20, 20)), filename="big.png").save()
    assert sorted(p.name for p in store_path.iterdir()) == ["d.pdf", "t.csv"]
    store.close()


async def test_a_jpeg_header_after_a_large_exif_segment_is_read_from_the_longer_head(
    store_path: Path,
) -> None:
    """A JPEG's size (its SOF marker) follows its EXIF segment: 60 KiB of it here, far past
    the 8 KiB the type is sniffed from."""
    data = photo((300, 200), comment=60_000)
    assert data.index(b"\xff\xc0") > 60_000
    app = make_app("quart", store_path, STORE_IMAGE_MAX_WIDTH=250)
    store = Store(app)
    async with app.app_context():
        # Shown turned a quarter: 200 wide, 300 tall.
        await store.state().AsyncProvider(data, filename="tall.jpg").save()
        with pytest.raises(InvalidFileError) as info:
            await (
                store.state()
                .AsyncProvider(photo((300, 200), 1, 60_000), filename="wide.jpg")
                .save()
            )
    assert info.value.rule == "images.max_width" and info.value.found == (300, 200)
    assert [p.name for p in store_path.iterdir()] == ["tall.jpg"]
    store.close()


async def test_an_image_whose_header_is_not_in_the_head_is_refused(store_path: Path) -> None:
    data = photo((64, 64), comment=60_000)
    sof = data.index(b"\xff\xc0")
    # The same photo with more APP segments before its frame header than the head holds.
    filler = b"".join(b"\xff\xe9" + struct.pack(">H", 65535) + bytes(65533) for _ in range(4))
    late = data[:sof] + filler + data[sof:]
    assert late.index(b"\xff\xc0") > IMAGE_HEAD_SIZE
    app = make_app("quart", store_path, STORE_IMAGE_MAX_PIXELS=10_000)
    store = Store(app)
    async with app.app_context():
        with pytest.raises(InvalidFileError) as info:
            await store.state().AsyncProvider(late, filename="late.jpg").save()
    assert info.value.rule == "images.header"
    assert "not declared in its first 256 KiB" in str(info.value.description)
    assert list(store_path.iterdir()) == []
    store.close()


async def test_per_call_image_rules_go_over_the_storages_rule_for_rule(store_path: Path) -> None:
    app = make_app("quart", store_path, STORE_IMAGE_MAX_WIDTH=10, STORE_IMAGE_MAX_HEIGHT=10)
    store = Store(app)
    wide = encoded("PNG", (50, 5))
    async with app.app_context():
        taller = Rules(images=ImageRules(max_width=100))  # max_height=10 still holds
        await store.state().AsyncProvider(wide, filename="ok.png", validate=taller).save()
        with pytest.raises(InvalidFileError) as info:
            await (
                store.state()
                .AsyncProvider(encoded("PNG", (50, 50)), filename="no.png", validate=taller)
                .save()
            )
        assert info.value.rule == "images.max_height"
    assert [p.name for p in store_path.iterdir()] == ["ok.png"]
    store.close()


@pytest.fixture
def http_app(app_kind: str, store_path: Path) -> Iterator[Any]:
    """An app whose /up view stores the form's files under the storage's image rules."""
    app = make_app(
        app_kind,
        store_path,
        STORE_IMAGE_FORMATS=["jpeg", "png", "webp"],
        STORE_IMAGE_MAX_WIDTH=4000,
        STORE_IMAGE_MAX_PIXELS=50_000_000,
    )
    store = Store(app)
    if isinstance(app, quart.Quart):

        @app.post("/up")
        async def up_quart() -> Any:
            stored = await store.save_request()
            return {name: p.relative_path for name, p in stored.files.items()}

    else:
        assert isinstance(app, flask.Flask)

        @app.post("/up")
        def up_flask() -> Any:
            stored = store.save_request()
            return {name: p.relative_path for name, p in stored.files.items()}

    yield app
    store.close()


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("bomb.png", png_claiming(100_000, 100_000), 422, "it claims 10,000,000,000 pixels"),
        ("wide.png", png_claiming(5000, 10), 422, "images.max_width=4,000: it is 5,000×10"),
        ("many.png", png_claiming(4000, 20_000), 422, "(80,000,000 pixels)"),
        ("anim.gif", encoded("GIF"), 415, "images.formats=['jpeg', 'png', 'webp']"),
    ],
    ids=["bomb", "width", "pixels", "format"],
)
async def test_refusals_answer_422_and_415_through_the_app_naming_rule_file_and_size(
    http_app: Any, store_path: Path, name: str, data: bytes, status: int, message: str
) -> None:
    code, body = await post_form(http_app, multipart(("a", name, data)))
    assert code == status, body
    assert f"the file {name!r} is refused by the rule images." in body
    assert message in body
    assert list(store_path.iterdir()) == []


async def test_an_image_within_the_rules_is_stored_through_the_app(
    http_app: Any, store_path: Path
) -> None:
    code, body = await post_form(http_app, multipart(("a", "photo.jpg", photo())))
    assert (code, json.loads(body)) == (200, {"a": "photo.jpg"})
    assert (store_path / "photo.jpg").read_bytes() == photo()


def test_wrong_image_keys_are_refused_at_init(store_path: Path) -> None:
    for key, value, says in [
        ("STORE_IMAGE_FORMATS", ["jpeg", "no such"], "a list of image formats"),
        ("STORE_IMAGE_MAX_PIXELS", 0, "a whole number of at least 1"),
        ("STORE_IMAGE_VARIANTS", {"thumb": {"size": [0, 5]}}, "width is a whole number"),
        ("STORE_IMAGE_VARIANTS", {"thumb": {"width": 5, "colour": 1}}, "unknown variant option"),
        ("STORE_IMAGE_VARIANTS", {"Thumb!": {"width": 5}}, "a variant's name is like"),
        ("STORE_IMAGE_VARIANTS", {"t": {"width": 5, "fit": "cover"}}, "needs both"),
    ]:
        with pytest.raises(NotConfiguredError, match=says):
            Store(make_app("flask", store_path, **{key: value}))


def test_without_pillow_an_image_rule_names_the_extra_to_install(store_path: Path) -> None:
    """In a process where Pillow cannot be imported (as in an install without the extra)."""
    script = (
        "import sys; sys.modules['PIL'] = None\n"
        "import flask\n"
        "from async_store import Store, NotConfiguredError, Rules, ImageRules\n"
        "app = flask.Flask('t'); app.config['STORE_PATH'] = sys.argv[1]\n"
        "app.config['STORE_IMAGE_VARIANTS'] = {'thumb': {'width': 64}}\n"
        "try:\n    Store(app)\nexcept NotConfiguredError as e:\n    print(e)\n"
        "app.config.pop('STORE_IMAGE_VARIANTS'); store = Store(flask.Flask('u'))\n"
        "rules = Rules(images=ImageRules(max_pixels=5))  # declaring needs no Pillow\n"
        "from async_store._validate import Check\n"
        "try:\n    Check(rules, 'a.png', 'a.png')\nexcept NotConfiguredError as e:\n    print(e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(store_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("STORE_IMAGE_VARIANTS reads images with Pillow")
    assert all(line.endswith("pip install async_store[images]") for line in lines)


# --- variants ------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def variant_app(
    backend: str, store_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[quart.Quart, Store]]:
    config: dict[str, Any] = {"STORE_IMAGE_VARIANTS": VARIANTS, "SECRET_KEY": "s" * 32}
    if backend == "s3":
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("bucket")
        app = make_app("quart", None, **s3_config(server, bucket, STORE_PATH="media", **config))
    else:
        app = make_app("quart", store_path, **config)
    store = Store(app)
    async with app.test_app(), app.app_context():
        yield app, store
    await anyio.to_thread.run_sync(store.close)


async def read(store: Store, path: str) -> bytes:
    async with store.state().AsyncProvider(path).open() as f:
        return bytes(await f.read())


async def test_variants_have_their_size_format_and_orientation_and_no_metadata(
    variant_app: tuple[quart.Quart, Store],
) -> None:
    _, store = variant_app
    provider = store.state().AsyncProvider(photo(), "photos", filename="cat.jpg")
    await provider.save()
    record = await make_variants(provider)
    assert record.path == "photos/cat.jpg" and record.content_type == "image/jpeg"
    assert record.variants == {
        "thumb": "photos/_variants/cat.jpg/thumb.webp",
        "preview": "photos/_variants/cat.jpg/preview.jpg",  # the original's format
    }
    thumb = opened(await read(store, record.variants["thumb"]))
    preview = opened(await read(store, record.variants["preview"]))
    assert (thumb.format, thumb.size) == ("WEBP", (64, 64))  # cropped to fill
    # 600×400 stored sideways is shown 400×600: 200 wide is 300 tall.
    assert (preview.format, preview.size) == ("JPEG", (200, 300))
    # Turned a quarter clockwise: the stored top-left (red) is now the top right.
    assert preview.getpixel((150, 75)) == pytest.approx(RED, abs=40)
    assert preview.getpixel((50, 75)) == pytest.approx(BLUE, abs=40)
    for image in (thumb, preview):
        exif = image.getexif()
        assert dict(exif) == {} and exif.get_ifd(GPS_IFD) == {}
        assert not {"exif", "xmp", "XML:com.adobe.xmp"} & set(image.info)
    # Ordinary stored files: URLs and signed links as the original's.
    thumb_record = record.variant("thumb")
    assert thumb_record.content_type == "image/webp"
    assert thumb_record.absolute_url.endswith("/photos/_variants/cat.jpg/thumb.webp")
    assert "thumb.webp" in await thumb_record.url(expires=60)
    with pytest.raises(KeyError, match="has no variant 'huge'"):
        record.variant("huge")


async def test_make_variants_keeps_what_the_record_has_and_skips_files_that_are_no_images(
    variant_app: tuple[quart.Quart, Store],
) -> None:
    _, store = variant_app
    provider = store.state().AsyncProvider(encoded("PNG", (500, 100), "RGBA"), filename="logo.png")
    await provider.save()
    record = await make_variants(provider, variants={"thumb": Variant(100, 100)})
    assert record.variants == {"thumb": "_variants/logo.png/thumb.png"}
    assert opened(await read(store, record.variants["thumb"])).size == (100, 20)
    again = await make_variants(record)  # the storage's: thumb is kept, preview made
    assert again.variants == {**record.variants, "preview": "_variants/logo.png/preview.png"}
    assert opened(await read(store, again.variants["preview"])).size == (200, 40)
    text_file = store.state().AsyncProvider(b"not an image", filename="notes.txt")
    await text_file.save()
    assert (await make_variants(text_file)).variants == {}


async def test_a_bomb_stored_without_rules_gets_no_variants_and_leaves_none(
    variant_app: tuple[quart.Quart, Store],
) -> None:
    _, store = variant_app
    provider = store.state().AsyncProvider(png_claiming(100_000, 100_000), filename="bomb.png")
    await provider.save()
    with pytest.raises(InvalidFileError, match="no variants of 'bomb.png' are made") as info:
        await make_variants(provider)
    assert info.value.code == 422
    assert [f.path async for f in store.state().AsyncProvider.files()] == ["bomb.png"]


def test_a_record_lists_its_variants_in_json_and_old_records_still_load() -> None:
    record = FileRecord("default", "a.jpg", variants={"thumb": "_variants/a.jpg/thumb.webp"})
    assert FileRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.paths == ["a.jpg", "_variants/a.jpg/thumb.webp"]
    old = FileRecord.from_json({"storage": "default", "path": "a.jpg", "metadata": {}})
    assert old.variants == {} and old.paths == ["a.jpg"]
    with pytest.raises(ValueError, match="not a plain relative path"):
        FileRecord("default", "a.jpg", variants={"x": "../.secret"})


async def test_background_mode_makes_variants_from_the_spool_copy_and_delivers_them(
    store_path: Path, tmp_path: Path
) -> None:
    app = make_app(
        "quart",
        store_path,
        STORE_IMAGE_VARIANTS=VARIANTS,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(tmp_path / "spool"),
    )
    store = Store(app)
    async with app.test_app(), app.app_context():
        provider = store.state().AsyncProvider(photo(), filename="cat.jpg")
        await provider.save()
        record = await make_variants(provider)
        for path in record.paths:
            await store.state().AsyncProvider(path).wait()
    assert sorted(
        p.relative_to(store_path).as_posix() for p in store_path.rglob("*") if p.is_file()
    ) == ["_variants/cat.jpg/preview.jpg", "_variants/cat.jpg/thumb.webp", "cat.jpg"]
    await anyio.to_thread.run_sync(store.close)


# --- variants of FileType columns: made at the flush, deleted with the original ------------------


class Base(DeclarativeBase):
    pass


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    image: Mapped[Any] = mapped_column(FileType(location="p"), nullable=True)


def upload(data: bytes, name: str) -> werkzeug.datastructures.FileStorage:
    return werkzeug.datastructures.FileStorage(io.BytesIO(data), name)


class DB:
    def __init__(self, mode: str, urls: tuple[str, str], store_path: Path) -> None:
        self.mode, self.store_path = mode, store_path
        self.sync_engine = create_engine(urls[0])
        Base.metadata.create_all(self.sync_engine)
        self.async_engine = create_async_engine(urls[1]) if mode == "async" else None
        self.app: Any = quart.Quart(__name__) if mode == "async" else flask.Flask(__name__)
        self.app.config.update(STORE_PATH=str(store_path), STORE_IMAGE_VARIANTS=VARIANTS)
        self.store = Store(self.app)

    async def __call__(self, scenario: Callable[[Session], Any]) -> Any:
        if self.async_engine is not None:
            engine = self.async_engine
            async with self.app.app_context(), AsyncSession(engine) as session:
                return await session.run_sync(scenario)

        def in_thread() -> Any:
            with self.app.app_context(), Session(self.sync_engine) as session:
                return scenario(session)

        return await anyio.to_thread.run_sync(in_thread)

    def files(self) -> list[str]:
        return sorted(
            p.relative_to(self.store_path).as_posix()
            for p in self.store_path.rglob("*")
            if p.is_file()
        )

    def column(self) -> list[Any]:
        with self.sync_engine.connect() as connection:
            values = connection.execute(text("SELECT image FROM photos ORDER BY id")).scalars()
            return [json.loads(v) if isinstance(v, str) else v for v in values]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["async", "sync"])
async def db(request: pytest.FixtureRequest, database: str, tmp_path: Path) -> AsyncIterator[DB]:
    found = DB(str(request.param), new_database(database, tmp_path, request), tmp_path / "s")
    yield found
    if found.async_engine is not None:
        await found.async_engine.dispose()
    found.sync_engine.dispose()
    await anyio.to_thread.run_sync(found.store.close)


CAT = ["p/_variants/cat.jpg/preview.jpg", "p/_variants/cat.jpg/thumb.webp", "p/cat.jpg"]


async def test_a_column_makes_variants_at_the_flush_and_deletes_them_with_the_original(
    db: DB,
) -> None:
    def add(session: Session) -> tuple[int, FileRecord]:
        row = Photo(image=upload(photo(), "cat.jpg"))
        session.add(row)
        session.commit()
        return row.id, row.image

    row_id, record = await db(add)
    assert record.variants == {
        "thumb": "p/_variants/cat.jpg/thumb.webp",
        "preview": "p/_variants/cat.jpg/preview.jpg",
    }
    assert db.files() == CAT
    assert db.column() == [record.to_json()]

    def rolled_back(session: Session) -> FileRecord:
        row = Photo(image=upload(photo(), "dog.jpg"))
        session.add(row)
        session.flush()
        assert sorted(row.image.variants) == ["preview", "thumb"]
        stored = row.image
        session.rollback()
        return stored  # type: ignore[no-any-return]

    dog = await db(rolled_back)
    assert dog.path == "p/dog.jpg" and db.files() == CAT

    def replaced(session: Session) -> FileRecord:
        row = session.get(Photo, row_id)
        assert row is not None
        row.image = upload(encoded("PNG", (300, 300)), "cat.png")
        session.commit()
        return cast("FileRecord", row.image)

    png_record = await db(replaced)
    assert db.files() == [
        "p/_variants/cat.png/preview.png",
        "p/_variants/cat.png/thumb.webp",
        "p/cat.png",
    ]

    def metadata_changed(session: Session) -> None:
        row = session.get(Photo, row_id)
        assert row is not None
        row.image = dataclasses.replace(row.image, metadata={"alt": "a cat"})
        session.commit()

    await db(metadata_changed)  # the same files: nothing is released
    assert len(db.files()) == 3 and db.column()[0]["variants"] == png_record.variants

    def deleted(session: Session) -> None:
        row = session.get(Photo, row_id)
        session.delete(row)
        session.commit()

    await db(deleted)
    assert db.files() == []


@pytest.mark.parametrize("database", ["sqlite"])
async def test_a_bulk_delete_statement_releases_the_variants_too(db: DB) -> None:
    def add_and_bulk_delete(session: Session) -> list[str]:
        session.add_all([Photo(image=upload(photo(), "cat.jpg")), Photo(image=None)])
        session.commit()
        before = db.files()
        session.execute(delete(Photo))
        session.commit()
        return before

    assert await db(add_and_bulk_delete) == CAT
    assert db.files() == []


@pytest.mark.parametrize("database", ["sqlite"])
async def test_a_bomb_assigned_to_a_column_fails_the_flush_and_leaves_nothing(db: DB) -> None:
    def add(session: Session) -> None:
        session.add(Photo(image=upload(png_claiming(100_000, 100_000), "bomb.png")))
        with pytest.raises(InvalidFileError, match="decompression|Pillow refuses"):
            session.commit()
        session.rollback()

    await db(add)
    assert db.files() == [] and db.column() == []


def test_the_draft_decode_is_smaller_than_the_image() -> None:
    """What the bench measures, in small: a JPEG made into a 200-wide preview is decoded at
    1/2, 1/4 or 1/8 scale, never whole."""
    from async_store._render import render

    data = photo((3200, 2400), orientation=1)
    made = render(io.BytesIO(data), {"p": Variant(width=200)}, 10**8, "big.jpg")
    assert made is not None
    image = opened(made["p"][0])
    assert image.size == (200, 150) and made["p"][1] == "jpg"
    draft = Image.open(io.BytesIO(data))
    draft.draft("RGB", (200, 150))
    assert draft.size == (400, 300)  # what render decoded: 1/8 of each side
    assert ImageOps.exif_transpose(image).size == (200, 150)
