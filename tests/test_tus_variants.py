"""Image variants of tus uploads (issue 16): a finished upload gets its storage's variants,
made after it is stored and before the app's ``on_complete`` hook sees it; they follow the
provider into a ``FileType`` column's record and are deleted with the provider or the row.

Real servers and the real tuspy client (``tests.test_tus``), real JPEGs made by Pillow
(``tests.test_images``), a real SQLite database, Quart and Flask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from async_store.sqla import FileRecord
from tests.test_images import Base, Photo, opened, photo
from tests.test_tus import Endpoint, b64, create, kind, patch, serving, tuspy_upload, uploads

__all__ = ["kind"]  # test_tus's fixture: Quart and Flask

THUMB = {"thumb": {"size": [64, 64], "format": "webp"}}
CONFIG = {"STORE_IMAGE_VARIANTS": THUMB}


def stored(endpoint: Endpoint) -> list[str]:
    """The files of the endpoint's storage, relative to it."""
    root = Path(endpoint.app.config["STORE_PATH"])
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def upload(endpoint: Endpoint, tmp_path: Path, data: bytes, name: str) -> Any:
    """``data`` uploaded by tuspy as ``name``: the provider the app's hook got."""
    source = tmp_path / f"source-{name}"
    source.write_bytes(data)
    await anyio.to_thread.run_sync(
        lambda: tuspy_upload(endpoint.url, source, chunk_size=8192, metadata={"filename": name})
    )
    return endpoint.completed[-1][0]


async def call(endpoint: Endpoint, func: Any, *args: Any) -> Any:
    """A provider call as the app makes it: awaited in Quart, blocking (in a thread) in Flask."""
    if endpoint.app.__class__.__name__ == "Quart":
        return await func(*args)
    return await anyio.to_thread.run_sync(func, *args)


async def test_a_tus_upload_of_an_image_gets_its_variants_and_deletes_them_with_it(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    data = photo((600, 400))
    async with serving(kind, tmp_path, free_tcp_port, config=CONFIG) as endpoint:
        provider = await upload(endpoint, tmp_path, data, "cat.jpg")
        assert provider.variants == {"thumb": "_variants/cat.jpg/thumb.webp"}
        assert stored(endpoint) == ["_variants/cat.jpg/thumb.webp", "cat.jpg"]
        root = Path(endpoint.app.config["STORE_PATH"])
        thumb = opened((root / provider.variants["thumb"]).read_bytes())
        assert thumb.format == "WEBP" and max(thumb.size) <= 64
        assert thumb.size == (43, 64)  # shown 400×600 (EXIF orientation), within 64×64
        assert (root / "cat.jpg").read_bytes() == data  # the original as it came

        text = await upload(endpoint, tmp_path, b"no image here", "notes.txt")
        assert text.variants == {}

        await call(endpoint, provider.delete)
        assert stored(endpoint) == ["notes.txt"]
        assert provider.variants == {}


async def test_a_tus_provider_assigned_to_a_file_column_records_its_variants(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = create_engine(url)
    await anyio.to_thread.run_sync(Base.metadata.create_all, engine)
    async with serving(kind, tmp_path, free_tcp_port, config=CONFIG) as endpoint:
        first = await upload(endpoint, tmp_path, photo(), "cat.jpg")
        second = await upload(endpoint, tmp_path, photo(), "dog.jpg")
        app = endpoint.app

        def saved_then_deleted(session: Session) -> tuple[FileRecord, list[str]]:
            """The row added, then deleted in the same session (its attribute as assigned)."""
            row = Photo(image=first)
            session.add(row)
            session.commit()
            record = row.image
            before = stored(endpoint)
            session.delete(row)
            session.commit()
            return record, before

        def replaced(session: Session) -> list[str]:
            row = Photo(image=second)
            session.add(row)
            session.commit()
            before = stored(endpoint)
            loaded = session.get(Photo, row.id)
            assert loaded is not None
            loaded.image = None
            session.commit()
            return before

        if kind == "quart":
            async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
            async with (
                app.app_context(),
                AsyncSession(async_engine, expire_on_commit=False) as session,
            ):
                record, before = await session.run_sync(saved_then_deleted)
                before_replaced = await session.run_sync(replaced)
            await async_engine.dispose()
        else:

            def in_thread() -> tuple[FileRecord, list[str], list[str]]:
                with app.app_context(), Session(engine, expire_on_commit=False) as session:
                    return (*saved_then_deleted(session), replaced(session))

            record, before, before_replaced = await anyio.to_thread.run_sync(in_thread)
    engine.dispose()
    # p/: the column's location is for the uploads it stores; a stored provider keeps its path.
    assert record.path == "cat.jpg"
    assert record.variants == {"thumb": "_variants/cat.jpg/thumb.webp"}
    assert before == [
        "_variants/cat.jpg/thumb.webp",
        "_variants/dog.jpg/thumb.webp",
        "cat.jpg",
        "dog.jpg",
    ]
    assert before_replaced == ["_variants/dog.jpg/thumb.webp", "dog.jpg"]
    assert stored(endpoint) == []


async def test_an_image_whose_variants_cannot_be_made_is_refused_with_a_422(
    kind: str, tmp_path: Path, free_tcp_port: int
) -> None:
    data = photo((600, 400))
    broken = data[: len(data) // 2]  # its header is whole, its pixels are cut off
    async with (
        serving(kind, tmp_path, free_tcp_port, config=CONFIG) as endpoint,
        httpx.AsyncClient() as http,
    ):
        url = await create(
            http, endpoint, len(broken), **{"Upload-Metadata": f"filename {b64('cut.jpg')}"}
        )
        answer = await patch(http, url, 0, broken)
        assert answer.status_code == 422
        assert "no variants of 'cut.jpg' are made: its image data is broken" in answer.text
        assert stored(endpoint) == [] and uploads(endpoint) == []
        assert endpoint.completed == []


async def test_a_storage_failing_while_the_variants_are_made_keeps_the_upload(
    kind: str, tmp_path: Path, free_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(kind, tmp_path, free_tcp_port, config=CONFIG) as endpoint:
        # A file where the variants' folder goes: the disk refuses to save them there.
        root = Path(endpoint.app.config["STORE_PATH"])
        root.mkdir(parents=True, exist_ok=True)
        (root / "_variants").write_bytes(b"in the way")
        with caplog.at_level(logging.WARNING, "async_store.tus"):
            provider = await upload(endpoint, tmp_path, photo(), "cat.jpg")
    assert provider.variants == {}
    assert stored(endpoint) == ["_variants", "cat.jpg"]
    assert "'cat.jpg' is stored without its image variants" in caplog.text
