"""Metadata stripped from originals (issue 16): ``STORE_IMAGE_STRIP_METADATA`` and
``ImageRules(strip_metadata=True)``.

The images are made with Pillow as cameras and editors write them: EXIF with GPS tags and a
camera make, XMP, an ICC profile, a comment or text chunks (some after the pixels). What is
stored is opened with Pillow again: the metadata gone, the orientation and the colour profile
kept, the pixels the same, and the size and SHA-256 the save recorded those of the stored
file. Saves go through every path that streams an upload: ``save()`` (Quart), ``save_request``
(Quart, Flask), background mode, the sync shim, tus on local disk, S3 (SeaweedFS).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import flask
import httpx
import pytest
import quart
from PIL import Image, ImageCms, PngImagePlugin

from async_store import (
    FileTooLargeError,
    ImageRules,
    InvalidFileError,
    Rules,
    Store,
    SyncStore,
)
from async_store._strip import HOLD, Stripper
from async_store.sqla import FileRecord
from tests.conftest import make_app, s3_app, s3_client
from tests.helpers import multipart, post_form
from tests.seaweed import SeaweedFS
from tests.test_tus import V, b64, serving

GPS_IFD, ORIENTATION, MAKE = 0x8825, 0x0112, 0x010F
SECRET = b"Secret"  # in every piece of metadata written as text: none of it may be stored
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SecretXMP at 52.37N 4.89E</x:xmpmeta>'


def picture(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """An image whose pixels all differ a little (a lossless copy shows as the same bytes)."""
    width, height = size
    data = bytes(
        (x * 7 + y * 3 + c * 50) % 256
        for y in range(height)
        for x in range(width)
        for c in range(3)
    )
    return Image.frombytes("RGB", size, data)


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    tags[MAKE] = "SecretCam"
    tags.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 22.0, 5.0), 3: "E", 4: (4.0, 53.0, 0.0)})
    return tags


def jpeg(orientation: int = 6, image: Image.Image | None = None, **options: Any) -> bytes:
    """A phone's photo: EXIF (orientation, make, GPS), XMP, an ICC profile, a comment."""
    out = io.BytesIO()
    (image or picture()).save(
        out,
        "JPEG",
        exif=exif(orientation),
        xmp=XMP,
        icc_profile=ICC,
        comment=b"SecretComment",
        **options,
    )
    return out.getvalue()


def chunks_of(png: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, data, CRC)."""
    found, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        found.append(png[at : at + 12 + length])
        at += 12 + length
    return found


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(orientation: int = 8) -> bytes:
    """A PNG with text (plain, compressed, international: XMP), EXIF, ICC, and more text and a
    time after its pixels, where a streaming reader meets them last."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Secret Author")
    info.add_text("Comment", "Secret " * 40, zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    out = io.BytesIO()
    picture().save(out, "PNG", pnginfo=info, exif=exif(orientation), icc_profile=ICC)
    parts = chunks_of(out.getvalue())
    late = chunk(b"tEXt", b"Location\0Secret place") + chunk(b"tIME", bytes(7))
    return b"\x89PNG\r\n\x1a\n" + b"".join(parts[:-1]) + late + parts[-1]


def webp(orientation: int = 3) -> bytes:
    out = io.BytesIO()
    picture().save(out, "WEBP", exif=exif(orientation), xmp=XMP, icc_profile=ICC, lossless=True)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_stripped(stored: bytes, original: bytes, orientation: int) -> None:
    """What a user checks: no GPS, camera, XMP, comment or text left; the orientation, the
    colour profile and the pixels as they were."""
    assert SECRET not in stored
    image, before = opened(stored), opened(original)
    assert before.getexif().get_ifd(GPS_IFD)  # it was there to strip
    tags = image.getexif()
    assert dict(tags) == ({ORIENTATION: orientation} if orientation != 1 else {})
    assert tags.get_ifd(GPS_IFD) == {}
    assert not {"xmp", "comment", "Author", "Comment", "XML:com.adobe.xmp"} & set(image.info)
    assert image.info["icc_profile"] == before.info["icc_profile"] == ICC
    assert (image.format, image.size) == (before.format, before.size)
    assert image.tobytes() == before.tobytes()


def strip(data: bytes, sizes: Iterator[int] | None = None) -> bytes:
    """``data`` through a stripper, fed in pieces of ``sizes`` (default: at once)."""
    stripper, out, at = Stripper(), [], 0
    for size in sizes or iter([len(data)]):
        if at >= len(data):
            break
        out.append(stripper.feed(data[at : at + size]))
        at += size
    if at < len(data):
        out.append(stripper.feed(data[at:]))
    return b"".join([*out, stripper.end()])


def random_sizes(seed: int, largest: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(1, largest)


def byte_by_byte() -> Iterator[int]:
    while True:
        yield 1


# --- the transformer, on its own ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "orientation"),
    [(jpeg, 6), (png, 8), (webp, 3)],
    ids=["jpeg", "png", "webp"],
)
def test_metadata_goes_orientation_colours_and_pixels_stay(make: Any, orientation: int) -> None:
    original = make(orientation)
    stored = strip(original)
    assert_stripped(stored, original, orientation)


def test_a_jpeg_without_a_turn_keeps_no_exif_at_all() -> None:
    original = jpeg(orientation=1)
    stored = strip(original)
    assert_stripped(stored, original, 1)
    assert b"Exif" not in stored and "exif" not in opened(stored).info


def test_png_chunks_kept_are_byte_for_byte_those_of_the_original_crcs_included() -> None:
    original = png(orientation=1)
    kept = chunks_of(strip(original))
    kinds = [c[4:8] for c in kept]
    assert kinds == [b"IHDR", b"iCCP", b"IDAT", b"IEND"]
    assert all(c in chunks_of(original) for c in kept)


def test_webp_keeps_its_size_metadata_overwritten_flags_cleared() -> None:
    original = webp(orientation=1)
    stored = strip(original)
    assert len(stored) == len(original) and stored[:8] == original[:8]  # the RIFF size holds
    assert XMP not in stored and b"JUNK" in stored
    assert stored[20] & 0x04 == 0  # no XMP announced (VP8X flags)
    assert_stripped(stored, original, 1)


@pytest.mark.parametrize("make", [jpeg, png, webp], ids=["jpeg", "png", "webp"])
def test_chunk_boundaries_anywhere_give_the_same_bytes(make: Any) -> None:
    original = make()
    whole = strip(original)
    assert strip(original, byte_by_byte()) == whole
    for seed in range(20):
        assert strip(original, random_sizes(seed, 700)) == whole


def test_a_header_longer_than_what_is_held_still_streams_stripped() -> None:
    """Segments before the frame past HOLD bytes: stripping goes on, streaming."""
    original = jpeg()
    after_jfif = 4 + int.from_bytes(original[4:6], "big")  # SOI, then APP0
    filler = b"".join(b"\xff\xeb" + struct.pack(">H", 65535) + bytes(65533) for _ in range(5))
    big = original[:after_jfif] + filler + original[after_jfif:]
    assert len(filler) > HOLD
    stored = strip(big, random_sizes(1, 64 * 1024))
    assert stored == strip(original)
    assert_stripped(stored, big, 6)


@pytest.mark.parametrize(
    "data",
    [
        jpeg()[:400],  # cut in its metadata
        jpeg()[: jpeg().index(b"\xff\xda")],  # cut before its image data
        b"\xff\xd8\xff\xe1\x00\x01garbage",  # a segment length that cannot be
        b"\xff\xd8\xff" + os.urandom(3000),
        b"\xff\xd8\xff\xe1" + b"\xff\xff" + b"Exif\0\0" + bytes(100),  # longer than it is
        b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x05te-t" + bytes(40),  # not a chunk type
        png()[:300],
        b"RIFF\x10\x00\x00\x00WEBPVP8X",
        b"",
        b"hello",
        b"%PDF-1.7 a contract with Secret text",
    ],
    ids=[
        "jpeg-cut",
        "jpeg-no-data",
        "jpeg-length",
        "jpeg-garbage",
        "jpeg-segment-cut",
        "png-chunk-type",
        "png-cut",
        "webp-cut",
        "empty",
        "short",
        "pdf",
    ],
)
def test_what_does_not_parse_is_passed_through_unchanged(data: bytes) -> None:
    assert strip(data) == data
    assert strip(data, byte_by_byte()) == data


def test_a_jpeg_cut_in_its_image_data_is_stored_stripped_up_to_the_cut() -> None:
    original = jpeg()
    cut = original[: len(original) - 200]
    stored = strip(cut)
    assert SECRET not in stored
    assert strip(original).startswith(stored)


# --- through the store ------------------------------------------------------------------------


@pytest.fixture
def quart_store(store_path: Path) -> Iterator[tuple[quart.Quart, Store]]:
    app = make_app("quart", store_path, STORE_IMAGE_STRIP_METADATA=True)
    store = Store(app)
    yield app, store
    store.close()


def assert_recorded(provider: Any, path: Path) -> None:
    """The size and SHA-256 the save counted (and its record) are the stored file's."""
    stored = path.read_bytes()
    assert provider.size == len(stored)
    assert provider.sha256 == hashlib.sha256(stored).hexdigest()
    record = FileRecord.of(getattr(provider, "provider", provider), "default")  # sync: its own
    assert (record.size, record.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())


@pytest.mark.parametrize(
    ("make", "name", "orientation"),
    [(jpeg, "photo.jpg", 6), (png, "scan.png", 8), (webp, "pic.webp", 3)],
    ids=["jpeg", "png", "webp"],
)
@pytest.mark.parametrize("given", ["bytes", "path", "async-iterator"])
async def test_save_stores_the_original_stripped_and_records_the_stored_bytes(
    quart_store: tuple[quart.Quart, Store],
    store_path: Path,
    tmp_path: Path,
    make: Any,
    name: str,
    orientation: int,
    given: str,
) -> None:
    app, store = quart_store
    original = make(orientation)
    source: Any = original
    if given == "path":
        source = tmp_path / name
        source.write_bytes(original)
    elif given == "async-iterator":

        async def pieces() -> AsyncIterator[bytes]:
            for at in range(0, len(original), 333):
                yield original[at : at + 333]

        source = pieces()
    async with app.app_context():
        provider = store.state().AsyncProvider(source, filename=name, checksum=True)
        await provider.save()
    assert_stripped((store_path / name).read_bytes(), original, orientation)
    assert_recorded(provider, store_path / name)


async def test_other_files_are_stored_unchanged(
    quart_store: tuple[quart.Quart, Store], store_path: Path
) -> None:
    app, store = quart_store
    text = b"Secret notes, not an image"
    async with app.app_context():
        gif = io.BytesIO()
        picture().save(gif, "GIF", comment=b"Secret GIF comment")
        for name, data in (("notes.txt", text), ("anim.gif", gif.getvalue())):
            await store.state().AsyncProvider(data, filename=name).save()
            assert (store_path / name).read_bytes() == data


async def test_option_off_stores_the_bytes_unchanged(store_path: Path) -> None:
    app = make_app("quart", store_path)
    store = Store(app)
    original = jpeg()
    async with app.app_context():
        await store.state().AsyncProvider(original, filename="as-is.jpg").save()
    assert (store_path / "as-is.jpg").read_bytes() == original
    store.close()


async def test_a_call_turns_stripping_on_or_off_over_the_storage(store_path: Path) -> None:
    original = jpeg()
    on, off = Rules(images=ImageRules(strip_metadata=True)), ImageRules(strip_metadata=False)
    for folder in ("plain", "strip"):
        (store_path / folder).mkdir()
    app = make_app("quart", store_path / "plain")
    stripping = make_app("quart", store_path / "strip", STORE_IMAGE_STRIP_METADATA=True)
    plain_store, strip_store = Store(app), Store(stripping)
    async with app.app_context():
        await plain_store.state().AsyncProvider(original, filename="on.jpg", validate=on).save()
    async with stripping.app_context():
        state = strip_store.state()
        await state.AsyncProvider(original, filename="off.jpg", validate=Rules(images=off)).save()
        await state.AsyncProvider(original, filename="none.jpg", validate=False).save()
    assert_stripped((store_path / "plain" / "on.jpg").read_bytes(), original, 6)
    assert (store_path / "strip" / "off.jpg").read_bytes() == original
    assert (store_path / "strip" / "none.jpg").read_bytes() == original
    plain_store.close()
    strip_store.close()


async def test_with_image_rules_the_type_is_detected_and_checked_on_the_original(
    store_path: Path,
) -> None:
    app = make_app(
        "quart",
        store_path,
        STORE_IMAGE_STRIP_METADATA=True,
        STORE_IMAGE_FORMATS=["jpeg", "png"],
        STORE_IMAGE_MAX_WIDTH=100,  # 120×80 turned a quarter (EXIF 6): 80 wide
    )
    store = Store(app)
    original = jpeg()
    async with app.app_context():
        provider = store.state().AsyncProvider(original, filename="photo.jpg")
        await provider.save()
        assert provider.content_type == "image/jpeg"
        # A JPEG whose header is garbage: the image rules refuse it, as without stripping.
        with pytest.raises(InvalidFileError) as info:
            await store.state().AsyncProvider(original[:400], filename="cut.jpg").save()
    assert info.value.rule == "images.header"
    assert_stripped((store_path / "photo.jpg").read_bytes(), original, 6)
    assert [p.name for p in store_path.iterdir()] == ["photo.jpg"]
    store.close()


async def test_a_malformed_jpeg_is_stored_unchanged_without_image_rules(
    quart_store: tuple[quart.Quart, Store], store_path: Path
) -> None:
    app, store = quart_store
    broken = jpeg()[:400]
    async with app.app_context():
        provider = store.state().AsyncProvider(broken, filename="cut.jpg", checksum=True)
        await provider.save()
    assert (store_path / "cut.jpg").read_bytes() == broken
    assert_recorded(provider, store_path / "cut.jpg")


async def test_max_size_counts_the_upload_as_it_came(store_path: Path) -> None:
    """The limit is on what the client sends (metadata it would lose counts too): else an
    upload of endless metadata would never reach it."""
    original = jpeg()
    app = make_app(
        "quart", store_path, STORE_IMAGE_STRIP_METADATA=True, STORE_MAX_FILE_SIZE=len(original) - 1
    )
    store = Store(app)
    assert len(strip(original)) < len(original) - 1
    async with app.app_context():
        with pytest.raises(FileTooLargeError):
            await store.state().AsyncProvider(original, filename="big.jpg").save()
    assert list(store_path.iterdir()) == []
    store.close()


@pytest.fixture
def http_app(app_kind: str, store_path: Path) -> Iterator[Any]:
    """An app whose /up view stores the form's files (Flask's through the sync shim)."""
    app = make_app(app_kind, store_path, STORE_IMAGE_STRIP_METADATA=True)
    store = Store(app)

    def answer(stored: Any) -> Any:
        return {n: [p.relative_path, p.size] for n, p in stored.files.items()}

    if isinstance(app, quart.Quart):

        @app.post("/up")
        async def up_quart() -> Any:
            return answer(await store.save_request())

    else:
        assert isinstance(app, flask.Flask)

        @app.post("/up")
        def up_flask() -> Any:
            return answer(store.save_request())

    yield app
    store.close()


async def test_save_request_stores_uploads_stripped(http_app: Any, store_path: Path) -> None:
    photo, scan = jpeg(), png()
    body = multipart(("a", "photo.jpg", photo), ("b", "scan.png", scan))
    code, text = await post_form(http_app, body)
    assert code == 200, text
    sizes = {n: (store_path / n).stat().st_size for n in ("photo.jpg", "scan.png")}
    assert json.loads(text) == {
        "a": ["photo.jpg", sizes["photo.jpg"]],
        "b": ["scan.png", sizes["scan.png"]],
    }
    assert_stripped((store_path / "photo.jpg").read_bytes(), photo, 6)
    assert_stripped((store_path / "scan.png").read_bytes(), scan, 8)


async def test_background_mode_spools_and_delivers_the_stripped_bytes(
    store_path: Path, tmp_path: Path
) -> None:
    app = make_app(
        "quart",
        store_path,
        STORE_IMAGE_STRIP_METADATA=True,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(tmp_path / "spool"),
    )
    store = Store(app)
    original = jpeg()
    async with app.test_app(), app.app_context():
        provider = store.state().AsyncProvider(original, filename="cat.jpg", checksum=True)
        await provider.save()
        await provider.wait()
    assert_stripped((store_path / "cat.jpg").read_bytes(), original, 6)
    assert_recorded(provider, store_path / "cat.jpg")
    await anyio.to_thread.run_sync(store.close)


def test_the_sync_shim_stores_stripped(store_path: Path, tmp_path: Path) -> None:
    app = make_app("flask", store_path, STORE_IMAGE_STRIP_METADATA=True)
    store: SyncStore = Store(app)
    original = webp()
    (tmp_path / "pic.webp").write_bytes(original)
    with app.app_context():
        for name, source in (("a.webp", original), ("b.webp", tmp_path / "pic.webp")):
            provider = store.Provider(source, filename=name, checksum=True)
            provider.save()
            assert_stripped((store_path / name).read_bytes(), original, 3)
            assert_recorded(provider, store_path / name)
    store.close()


async def test_a_tus_upload_on_local_disk_is_stored_stripped(
    tmp_path: Path, free_tcp_port: int
) -> None:
    original = jpeg()
    config = {"STORE_IMAGE_STRIP_METADATA": True}
    async with (
        serving("quart", tmp_path, free_tcp_port, config=config) as endpoint,
        httpx.AsyncClient() as http,
    ):
        answer = await http.post(
            endpoint.url,
            content=original,
            headers={
                **V,
                "Upload-Length": str(len(original)),
                "Upload-Metadata": f"filename {b64('photo.jpg')}",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["Upload-Offset"] == str(len(original))  # the upload's own bytes
    path = tmp_path / "store" / "photo.jpg"
    assert_stripped(path.read_bytes(), original, 6)
    [(provider, _)] = endpoint.completed
    assert_recorded(provider, path)


@pytest.mark.parametrize("large", [False, True], ids=["put", "multipart"])
async def test_s3_stores_the_stripped_bytes_with_their_checksum(
    s3_server: SeaweedFS, bucket: str, large: bool
) -> None:
    """One PUT, and a multipart upload (a 6 MiB photo of noise): the checksum S3 is sent, and
    checks, is the stripped bytes'."""
    image, mib = None, 1024 * 1024
    if large:
        image = Image.frombytes("RGB", (2000, 1500), random.Random(7).randbytes(2000 * 1500 * 3))
    original = jpeg(image=image, quality=95, subsampling=0)
    assert len(original) > 6 * mib or not large
    app = s3_app(
        s3_server,
        bucket,
        STORE_IMAGE_STRIP_METADATA=True,
        STORE_S3_MULTIPART_THRESHOLD=5 * mib,
        STORE_S3_PART_SIZE=5 * mib,
    )
    store = Store(app)
    async with app.test_app(), app.app_context():
        provider = store.state().AsyncProvider(original, filename="photo.jpg", checksum=True)
        await provider.save()
    client = s3_client(s3_server)
    stored = client.get_object(Bucket=bucket, Key="media/photo.jpg")["Body"].read()
    client.close()
    assert_stripped(stored, original, 6)
    assert provider.size == len(stored)
    assert provider.sha256 == hashlib.sha256(stored).hexdigest()
    await anyio.to_thread.run_sync(store.close)
