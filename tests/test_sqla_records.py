"""FileType: a column holding a stored file's record (or a list of them), issue 14.

The app is test_sqla_storages' (the default storage on local disk, ``documents`` on local disk,
in memory or on the suite's SeaweedFS); ``Doc`` keeps one file in ``documents`` and a list of
scans in the default storage, all under ``f/``, so the same relative path exists in both: every
release must delete from the storage its record names, and only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
import quart
import werkzeug.datastructures
from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from async_store import Store, StoreError
from async_store.backends.background import background_of
from async_store.sqla import FileList, FileRecord, FileType, StoreType
from tests.conftest import s3_config
from tests.test_sqla_storages import DB, database, db, mode, postgres, second

__all__ = ["database", "db", "mode", "postgres", "second"]  # the fixtures, shared


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "file_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(default="")
    # Any: an upload is assigned, a record (a FileList of them) is read back.
    file: Mapped[Any] = mapped_column(FileType(storage="documents", location="f"), nullable=True)
    scans: Mapped[Any] = mapped_column(FileType(location="f", multiple=True))


class OldDoc(Base):
    """A table a StoreType column wrote (the seed's paths), read through FileType below."""

    __tablename__ = "old_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    file = mapped_column(StoreType(128, location="f"), nullable=True)


class OldDocAsRecords(DeclarativeBase):
    pass


class OldDocRecord(OldDocAsRecords):
    __tablename__ = "old_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    file: Mapped[FileRecord | None] = mapped_column(FileType(location="f"), nullable=True)


def upload(data: bytes, name: str = "a.txt") -> werkzeug.datastructures.FileStorage:
    return werkzeug.datastructures.FileStorage(io.BytesIO(data), name)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def records(db: DB) -> DB:
    Base.metadata.create_all(db.sync_engine)
    return db


@contextlib.asynccontextmanager
async def in_app(db: DB) -> AsyncIterator[None]:
    """An app context of ``db``'s app, Quart's or Flask's: records find their storage there."""
    if db.mode == "async":
        async with db.app.app_context():
            yield
    else:
        with db.app.app_context():
            yield


async def call(db: DB, method: Callable[[], Any]) -> Any:
    """A record's provider call: awaited in Quart, in a worker thread in Flask (the sync shim
    refuses to block the loop); the app context goes along."""
    if db.mode == "async":
        return await method()
    return await anyio.to_thread.run_sync(method)


def raw(db: DB, column: str = "file") -> list[Any]:
    """The column's values as the database holds them, parsed from JSON (or bare paths)."""
    with db.sync_engine.connect() as connection:
        values = connection.execute(text(f"SELECT {column} FROM file_docs ORDER BY id"))
        return [json.loads(v) if isinstance(v, str) else v for (v,) in values]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_record_holds_what_the_save_counted(records: DB) -> None:
    data = b"%PDF-1.7 the contract"
    before = datetime.now(UTC) - timedelta(seconds=5)

    def scenario(session: Session) -> tuple[FileRecord, FileRecord | None]:
        doc = Doc(file=upload(data, "Contract (final).pdf"), scans=[])
        session.add(doc)
        session.commit()
        assert doc.file is not None
        saved = doc.file
        session.expire_all()
        loaded = session.get(Doc, doc.id)
        assert loaded is not None
        return saved, loaded.file

    saved, loaded = await records(scenario)
    assert loaded == saved
    assert (saved.storage, saved.path) == ("documents", "f/Contract_(final).pdf")
    assert (saved.size, saved.sha256) == (len(data), sha(data))
    assert saved.content_type == "application/pdf"
    assert saved.filename == "Contract (final).pdf"  # the client's name, kept apart
    assert saved.stored_at is not None and before < saved.stored_at < datetime.now(UTC)
    assert saved.metadata == {}
    assert raw(records) == [saved.to_json()]
    assert records.files()["documents"] == {"f/Contract_(final).pdf": data}
    async with in_app(records):
        assert saved.absolute_url == records.state("documents").Provider(saved.path).absolute_url
        assert await records.read(saved) == data
        info = await call(records, saved.info)
        assert (info.size, info.content_type) == (len(data), "application/pdf")


async def test_a_list_of_files_is_tracked_in_place(records: DB) -> None:
    def scenario(session: Session) -> None:
        doc = Doc(scans=[upload(b"one", "1.txt"), upload(b"two", "2.txt")])
        session.add(doc)
        session.commit()
        assert isinstance(doc.scans, FileList)
        assert [s.path for s in doc.scans] == ["f/1.txt", "f/2.txt"]
        doc.scans.append(upload(b"three", "3.txt"))  # stored on flush, like any change
        session.commit()
        assert [(s.path, s.size) for s in doc.scans] == [
            ("f/1.txt", 3),
            ("f/2.txt", 3),
            ("f/3.txt", 5),
        ]
        assert records.files()["default"] == {
            "f/1.txt": b"one",
            "f/2.txt": b"two",
            "f/3.txt": b"three",
        }
        doc.scans.remove(doc.scans[0])  # its file goes, after the commit
        assert "f/1.txt" in records.files()["default"]
        session.commit()
        assert set(records.files()["default"]) == {"f/2.txt", "f/3.txt"}
        session.expire_all()
        again = session.get(Doc, doc.id)
        assert again is not None
        assert [s.sha256 for s in again.scans] == [sha(b"two"), sha(b"three")]
        again.scans[0] = upload(b"two again", "2.txt")  # replaced in place
        session.commit()
        # Stored while the old file still held the name (it goes at the commit): renamed.
        stored = records.files()["default"]
        assert again.scans[0].path != "f/2.txt"
        assert stored == {again.scans[0].path: b"two again", "f/3.txt": b"three"}

    await records(scenario)


async def test_rollback_deletes_what_the_transaction_stored(records: DB) -> None:
    def scenario(session: Session) -> None:
        doc = Doc(file=upload(b"kept"), scans=[upload(b"kept scan")])
        session.add(doc)
        session.commit()
        doc.scans.append(upload(b"new scan", "new.txt"))
        doc.file = upload(b"new file", "new.txt")
        session.flush()
        assert "f/new.txt" in records.files()["default"]
        assert "f/new.txt" in records.files()["documents"]
        session.rollback()

    await records(scenario)
    assert records.files() == {
        "default": {"f/a.txt": b"kept scan"},
        "documents": {"f/a.txt": b"kept"},
    }


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_each_release_deletes_from_the_storage_its_record_names(records: DB) -> None:
    await records.store_file("default", "f/a.txt", b"default's, no row")

    def scenario(session: Session) -> None:
        doc = Doc(file=upload(b"documents' a"), scans=[upload(b"default's b", "b.txt")])
        session.add(doc)
        session.commit()
        assert doc.file is not None and doc.file.path == "f/a.txt"  # both storages: f/a.txt
        doc.file = None
        session.commit()
        assert records.files() == {
            "default": {"f/a.txt": b"default's, no row", "f/b.txt": b"default's b"},
            "documents": {},
        }
        # A record of the default storage kept in the documents column: released from default.
        doc.file = doc.scans[0]
        doc.scans = []
        session.commit()  # still named by the record: kept
        assert "f/b.txt" in records.files()["default"]
        session.delete(doc)
        session.commit()

    await records(scenario)
    assert records.files() == {"default": {"f/a.txt": b"default's, no row"}, "documents": {}}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_bulk_statements_release_the_files_they_remove(records: DB) -> None:
    def scenario(session: Session) -> None:
        session.add_all(
            [
                Doc(title="a", file=upload(b"A", "a.txt"), scans=[upload(b"a1", "a1.txt")]),
                Doc(title="b", file=upload(b"B", "b.txt"), scans=[upload(b"b1", "b1.txt")]),
            ]
        )
        session.commit()
        session.execute(update(Doc).where(Doc.title == "a").values(scans=[]))
        session.execute(delete(Doc).where(Doc.title == "b"))
        assert len(records.files()["default"]) == 2  # nothing deleted before the commit
        session.commit()
        with pytest.raises(StoreError, match="stores no uploads"):
            session.execute(update(Doc).values(scans=[upload(b"x")]))

    await records(scenario)
    assert records.files() == {"default": {}, "documents": {"f/a.txt": b"A"}}


async def test_a_record_changed_keeps_its_file(records: DB) -> None:
    def scenario(session: Session) -> FileRecord:
        doc = Doc(file=upload(b"x"), scans=[])
        session.add(doc)
        session.commit()
        assert doc.file is not None
        doc.file = dataclasses.replace(doc.file, metadata={"pages": 3})
        session.commit()
        session.expire_all()
        loaded = session.get(Doc, doc.id)
        assert loaded is not None and isinstance(loaded.file, FileRecord)
        return loaded.file

    loaded = await records(scenario)
    assert loaded.metadata == {"pages": 3}
    assert records.files()["documents"] == {"f/a.txt": b"x"}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_paths_a_store_type_column_wrote_read_as_records(records: DB) -> None:
    OldDoc.metadata.create_all(records.sync_engine)

    def write(session: Session) -> None:
        session.add(OldDoc(file=upload(b"old", "old.txt")))
        session.commit()

    await records(write)

    def read(session: Session) -> FileRecord | None:
        return session.scalars(select(OldDocRecord)).one().file

    record = await records(read)
    assert record == FileRecord("default", "f/old.txt", content_type="text/plain")
    async with in_app(records):
        assert await records.read(record) == b"old"


def test_a_record_never_names_a_path_out_of_the_store() -> None:
    with pytest.raises(StoreError):
        FileType().parse('{"storage": "default", "path": "../../etc/passwd"}')
    with pytest.raises(StoreError):
        FileType().parse('{"no": "path"}')
    # A bare path that happens to be JSON ("[1]") is a path.
    [record] = FileType().parse("[1]")
    assert (record.storage, record.path) == ("default", "[1]")


def test_flask_sqlalchemy(tmp_path: Path) -> None:
    from flask_sqlalchemy import SQLAlchemy

    app = flask.Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'db.sqlite'}",
        STORE_PATH=str(tmp_path / "store"),
    )
    sql = SQLAlchemy(app)
    store = Store(app)

    class Upload(sql.Model):  # type: ignore[name-defined,misc]
        id = sql.Column(sql.Integer, primary_key=True)
        file = sql.Column(FileType())

    @app.post("/up")
    def up() -> dict[str, Any]:
        row = Upload(file=flask.request.files["f"])
        sql.session.add(row)
        sql.session.commit()
        return {"url": row.file.absolute_url, "sha256": row.file.sha256}

    with app.app_context():
        sql.create_all()
    try:
        answer = app.test_client().post("/up", data={"f": (io.BytesIO(b"hi"), "hi.txt")}).json
    finally:
        store.close()
    assert answer == {"url": "/uploads/hi.txt", "sha256": sha(b"hi")}
    assert (tmp_path / "store" / "hi.txt").read_bytes() == b"hi"


class Spooled(DeclarativeBase):
    pass


class SpooledDoc(Spooled):
    __tablename__ = "spooled_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    file: Mapped[Any] = mapped_column(FileType(storage="documents"), nullable=True)


@pytest.mark.parametrize("second", ["local", "s3"])
async def test_a_background_storage_records_what_it_spooled(
    mode: str, second: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Background mode: the record is made when the upload is spooled (its facts counted on the
    way), the file arrives later; a rolled-back one is never delivered."""
    if second == "s3":
        server, proxy = request.getfixturevalue("s3_server"), request.getfixturevalue("proxy")
        # The first delivery is held, so its upload is seen under way.
        proxy.delay = (lambda r: r.method == "PUT" and "Spooled_Doc" in r.path, 3.0)
        keys = s3_config(
            server,
            request.getfixturevalue("bucket"),
            STORE_PATH="media",
            STORE_S3_ENDPOINT_URL=proxy.endpoint,
        )
        documents: dict[str, Any] = {k.removeprefix("STORE_"): v for k, v in keys.items()}
    else:
        documents = {"PATH": str(tmp_path / "documents")}
    documents.update(BACKGROUND=True, SPOOL_PATH=str(tmp_path / "spool"))
    app: Any = quart.Quart(__name__) if mode == "async" else flask.Flask(__name__)
    app.config.update(STORE_PATH=str(tmp_path / "default"), STORE_STORAGES={"documents": documents})
    store = Store(app)
    engine = create_engine(f"sqlite:///{tmp_path / 'spooled.sqlite'}")
    Spooled.metadata.create_all(engine)
    data = b"spooled, then delivered"

    def scenario(session: Session) -> FileRecord:
        doc = SpooledDoc(file=upload(data, "Spooled Doc.txt"))
        session.add(doc)
        session.commit()
        if second == "s3":  # a record's provider follows the upload still under way
            assert doc.file.provider.status == "pending"
        session.add(SpooledDoc(file=upload(b"rolled back", "dropped.txt")))
        session.flush()
        session.rollback()  # its upload is discarded, or deleted once it lands
        assert isinstance(doc.file, FileRecord)
        return doc.file

    def in_flask() -> FileRecord:
        with app.app_context(), Session(engine) as session:
            return scenario(session)

    async def stored() -> dict[str, bytes]:
        """Once the spool is empty (the rolled-back upload's job too): what the storage holds."""
        state = store.state(app, "documents")
        await settled(state)
        files = {}
        async for found in state.AsyncProvider.files(""):
            async with state.AsyncProvider(found.path).open() as f:
                files[found.path] = bytes(await f.read())
        return files

    try:
        if mode == "async":
            async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'spooled.sqlite'}")
            async with app.test_app():  # Quart's serving loop runs the deliveries
                async with app.app_context(), AsyncSession(async_engine) as session:
                    record = await session.run_sync(scenario)
                async with app.app_context():
                    await record.provider.wait()  # waits for the upload under way
                    assert record.provider.status == "stored"
                    files = await stored()
            await async_engine.dispose()
        else:
            record = await anyio.to_thread.run_sync(in_flask)
            with app.app_context():
                provider = record.provider
            await anyio.to_thread.run_sync(provider.wait)  # the sync shim's loop delivers
            assert provider.status == "stored"

            def after() -> dict[str, bytes]:
                with app.app_context():
                    return anyio.run(stored)

            files = await anyio.to_thread.run_sync(after)
        assert (record.size, record.sha256) == (len(data), sha(data))
        assert record.filename == "Spooled Doc.txt" and record.storage == "documents"
        assert files == {record.path: data}  # the rolled-back upload was never delivered
    finally:
        await anyio.to_thread.run_sync(store.close)
        engine.dispose()


async def settled(state: Any) -> None:
    """Until the storage's spool holds no job (the rolled-back upload's included)."""
    background = background_of(state.provider_class.backend)
    assert background is not None
    with anyio.fail_after(20):
        while (await background.jobs())[0]:
            await anyio.sleep(0.05)
