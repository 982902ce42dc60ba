"""StoreType(storage=...): each column's files live in its own storage of the app.

The app has the default storage on local disk and a second one, ``documents``, on local disk, in
memory or on the suite's SeaweedFS. ``Record`` has a column for each, both saving under ``f/``,
so the same relative path exists in both storages: every save, load, replacement, deleted row,
rollback and bulk statement must touch the storage of its column only (issue 12, item 26: the
demo deleted another storage's file that had the same path).

As in test_sqla.py, each scenario is a sync function of a Session, run through
``AsyncSession.run_sync`` in a Quart app or through a plain Session in a Flask app's thread.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
import quart
import werkzeug.datastructures
from sqlalchemy import (
    ForeignKey,
    String,
    create_engine,
    delete,
    insert,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from async_store import Store, StoreError
from async_store.sqla import StoreType
from tests.conftest import s3_client, s3_config
from tests.test_sqla import new_database, postgres, table_of

__all__ = ["postgres"]  # test_sqla's fixture: one PostgreSQL server for both modules


class Base(DeclarativeBase):
    pass


class Shelf(Base):
    __tablename__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    records: Mapped[list[Record]] = relationship(cascade="all, delete-orphan", order_by="Record.id")


class Record(Base):
    """One column per storage, both saving under f/: their paths collide on purpose."""

    __tablename__ = "records"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50), unique=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("shelves.id"))
    avatar = mapped_column(StoreType(128, location="f"), nullable=True)
    document = mapped_column(StoreType(128, location="f", storage="documents"), nullable=True)


class Lost(Base):
    """A column of a storage the app does not have (declared, like every model, before it)."""

    __tablename__ = "lost"
    id: Mapped[int] = mapped_column(primary_key=True)
    file = mapped_column(StoreType(storage="archive"), nullable=True)


def upload(data: bytes, name: str = "a.txt") -> werkzeug.datastructures.FileStorage:
    return werkzeug.datastructures.FileStorage(io.BytesIO(data), name)


class DB:
    """A database, and an app whose ``documents`` storage is on ``second``."""

    def __init__(
        self, mode: str, second: str, urls: tuple[str, str], tmp_path: Path, request: Any
    ) -> None:
        self.mode, self.second = mode, second
        self.folders = {"default": tmp_path / "default", "documents": tmp_path / "documents"}
        self.sync_engine = create_engine(urls[0])
        Base.metadata.create_all(self.sync_engine)
        self.async_engine = create_async_engine(urls[1]) if mode == "async" else None
        documents: dict[str, Any] = {"PROVIDER": second}
        if second == "local":
            documents["PATH"] = str(self.folders["documents"])
        elif second == "s3":
            self.s3 = s3_client(request.getfixturevalue("s3_server"))
            self.bucket = request.getfixturevalue("bucket")
            keys = s3_config(request.getfixturevalue("s3_server"), self.bucket, STORE_PATH="media")
            documents = {k.removeprefix("STORE_"): v for k, v in keys.items()}
        self.app: Any = quart.Quart(__name__) if mode == "async" else flask.Flask(__name__)
        self.app.config.update(
            STORE_PATH=str(self.folders["default"]), STORE_STORAGES={"documents": documents}
        )
        self.store = Store(self.app)

    def state(self, storage: str = "default") -> Any:
        return self.store.state(self.app, storage)

    async def __call__(self, scenario: Callable[[Session], Any], **options: Any) -> Any:
        if self.async_engine is not None:
            engine = self.async_engine
            async with self.app.app_context(), AsyncSession(engine, **options) as session:
                return await session.run_sync(scenario)

        def in_thread() -> Any:
            with self.app.app_context(), Session(self.sync_engine, **options) as session:
                return scenario(session)

        return await anyio.to_thread.run_sync(in_thread)

    def files(self) -> dict[str, dict[str, bytes]]:
        """What each storage holds: {storage: {relative path: bytes}}."""
        found = {"default": self._folder("default"), "documents": self._folder("documents")}
        if self.second == "memory":
            backend = self.state("documents").provider_class.backend
            found["documents"] = {key: f.data for key, f in backend.files.items()}
        elif self.second == "s3":
            listed = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
            found["documents"] = {
                o["Key"].removeprefix("media/"): self.s3.get_object(
                    Bucket=self.bucket, Key=o["Key"]
                )["Body"].read()
                for o in listed
            }
        return found

    def _folder(self, storage: str) -> dict[str, bytes]:
        folder = self.folders[storage]
        return {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*")
            if p.is_file()
        }

    def rows(self) -> list[tuple[str, str | None, str | None]]:
        """(title, avatar, document) of each record, as the database holds them."""
        query = text("SELECT title, avatar, document FROM records ORDER BY id")
        with self.sync_engine.connect() as connection:
            return [(r[0], r[1], r[2]) for r in connection.execute(query)]

    async def store_file(self, storage: str, relative: str, data: bytes) -> None:
        """A file stored earlier in ``storage`` (by another app, a migration, by hand)."""
        location, _, name = relative.rpartition("/")
        provider = self.state(storage).AsyncProvider(data, location, filename=name)
        await provider.save()
        assert provider.relative_path == relative

    async def read(self, provider: Any) -> bytes:
        """The content of a loaded value, through the provider itself."""
        if self.mode == "async":
            async with provider.open() as f:
                return bytes(await f.read())

        def in_thread() -> bytes:
            with provider.open() as f:
                return bytes(f.read())

        return await anyio.to_thread.run_sync(in_thread)

    async def close(self) -> None:
        if self.async_engine is not None:
            await self.async_engine.dispose()
        self.sync_engine.dispose()
        await anyio.to_thread.run_sync(self.store.close)


@pytest.fixture(params=["async", "sync"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["local", "memory", "s3"])
def second(request: pytest.FixtureRequest) -> str:
    """Where the documents storage keeps its files."""
    return str(request.param)


@pytest.fixture
def database() -> str:
    """The database (tests that run on PostgreSQL too parametrise this)."""
    return "sqlite"


@pytest.fixture
async def db(
    mode: str, second: str, database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[DB]:
    found = DB(mode, second, new_database(database, tmp_path, request), tmp_path, request)
    try:
        if mode == "async":  # Quart's serving loop: the S3 clients live there
            async with found.app.test_app():
                yield found
        else:
            yield found
    finally:
        await found.close()


async def test_each_column_saves_into_its_storage_and_loads_its_providers(db: DB) -> None:
    def scenario(session: Session) -> tuple[Any, Any]:
        record = Record(title="r", avatar=upload(b"avatar"), document=upload(b"document"))
        session.add(record)
        session.commit()
        session.expire_all()
        loaded = session.get(Record, record.id)
        assert loaded is not None
        return loaded.avatar, loaded.document

    avatar, document = await db(scenario)
    assert type(avatar) is db.state().Provider
    assert type(document) is db.state("documents").Provider
    assert avatar.relative_path == document.relative_path == "f/a.txt"  # not renamed
    assert avatar.absolute_url == "/uploads/f/a.txt"
    assert document.absolute_url != avatar.absolute_url
    assert await db.read(avatar) == b"avatar" and await db.read(document) == b"document"
    assert db.files() == {"default": {"f/a.txt": b"avatar"}, "documents": {"f/a.txt": b"document"}}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_path_in_both_storages_is_deleted_from_its_columns_storage_only(db: DB) -> None:
    await db.store_file("documents", "f/kept.txt", b"documents' kept")  # no row names it

    def scenario(session: Session) -> None:
        both = Record(title="both", avatar=upload(b"A1"), document=upload(b"D1"))
        session.add(both)
        session.commit()
        both.avatar = upload(b"A2", "b.txt")  # replaced: f/a.txt goes from default only
        session.commit()
        assert db.files() == {
            "default": {"f/b.txt": b"A2"},
            "documents": {"f/a.txt": b"D1", "f/kept.txt": b"documents' kept"},
        }
        both.document = upload(b"D2", "b.txt")  # and now from documents
        session.commit()
        assert set(db.files()["documents"]) == {"f/b.txt", "f/kept.txt"}
        # A row of the default storage holding f/kept.txt: deleting it leaves documents' file.
        avatar_only = Record(title="avatar", avatar=upload(b"default's kept", "kept.txt"))
        session.add(avatar_only)
        session.commit()
        assert avatar_only.avatar.relative_path == "f/kept.txt"
        session.delete(avatar_only)
        session.commit()
        assert db.files()["documents"]["f/kept.txt"] == b"documents' kept"
        assert "f/kept.txt" not in db.files()["default"]
        session.delete(both)  # each file from its own storage
        session.commit()

    await db(scenario)
    assert db.files() == {"default": {}, "documents": {"f/kept.txt": b"documents' kept"}}
    assert db.rows() == []


async def test_rollback_deletes_what_it_saved_from_that_storage_only(db: DB) -> None:
    def scenario(session: Session) -> None:
        session.add(Record(title="kept", avatar=upload(b"default's")))
        session.commit()
        replaced = session.get(Record, 1)
        assert replaced is not None
        replaced.avatar = upload(b"new", "new.txt")
        session.add(Record(title="dropped", document=upload(b"documents'")))  # f/a.txt there
        session.flush()
        assert db.files()["documents"] == {"f/a.txt": b"documents'"}
        session.rollback()  # f/a.txt goes from documents; the default one stays, and is held
        assert db.files() == {"default": {"f/a.txt": b"default's"}, "documents": {}}
        with session.begin_nested() as savepoint:
            session.add(Record(title="inner", document=upload(b"inner")))
            session.flush()
            savepoint.rollback()
        session.commit()

    await db(scenario)
    assert db.files() == {"default": {"f/a.txt": b"default's"}, "documents": {}}


async def test_delete_orphan_deletes_each_file_from_its_storage(db: DB) -> None:
    def scenario(session: Session) -> None:
        shelf = Shelf(
            records=[
                Record(
                    title=n,
                    avatar=upload(n.encode(), f"{n}.txt"),
                    document=upload(b"d" + n.encode(), f"{n}.txt"),
                )
                for n in ("1", "2")
            ]
        )
        session.add(shelf)
        session.commit()
        shelf.records.pop(0)
        session.commit()

    await db(scenario)
    assert db.files() == {"default": {"f/2.txt": b"2"}, "documents": {"f/2.txt": b"d2"}}


async def records(db: DB, *names: str) -> None:
    """A record per name, its avatar and its document both f/NAME.txt."""

    def scenario(session: Session) -> None:
        session.add_all(
            Record(
                title=n,
                avatar=upload(b"a" + n.encode(), f"{n}.txt"),
                document=upload(b"d" + n.encode(), f"{n}.txt"),
            )
            for n in names
        )
        session.commit()

    await db(scenario)


async def test_bulk_update_deletes_the_replaced_files_from_their_columns_storage(db: DB) -> None:
    await records(db, "1", "2", "3")
    await db.store_file("documents", "f/other.txt", b"other")

    def scenario(session: Session) -> tuple[Any, Any]:
        loaded = session.scalars(select(Record).order_by(Record.id)).all()
        session.execute(update(Record).where(Record.title == "1").values(document="f/other.txt"))
        session.execute(update(Record), [{"id": 2, "avatar": None}])  # by primary key
        table = table_of(Record)
        session.execute(update(table).where(table.c.title == "3").values(document=None))  # Core
        session.commit()
        return loaded[0].document, loaded[1].avatar

    document, avatar = await db(scenario)
    # The rows the session held got the new values, as providers of their own storage.
    assert type(document) is db.state("documents").Provider
    assert document.relative_path == "f/other.txt" and avatar is None
    assert db.files() == {
        "default": {"f/1.txt": b"a1", "f/3.txt": b"a3"},
        "documents": {"f/2.txt": b"d2", "f/other.txt": b"other"},
    }
    assert db.rows() == [
        ("1", "f/1.txt", "f/other.txt"),
        ("2", None, "f/2.txt"),
        ("3", "f/3.txt", None),
    ]


async def test_bulk_delete_deletes_each_file_from_its_storage(db: DB) -> None:
    await records(db, "1", "2", "3")

    def scenario(session: Session) -> None:
        session.execute(delete(Record).where(Record.title != "3"))
        session.rollback()
        assert len(db.files()["documents"]) == 3
        session.execute(delete(Record).where(Record.title == "1"))
        session.execute(delete(table_of(Record)).where(table_of(Record).c.title == "2"))
        session.commit()

    await db(scenario)
    assert db.files() == {"default": {"f/3.txt": b"a3"}, "documents": {"f/3.txt": b"d3"}}


@pytest.mark.parametrize("second", ["local"])
async def test_a_provider_of_another_storage_is_refused(db: DB) -> None:
    await db.store_file("default", "f/a.txt", b"default's")
    await records(db, "1")

    def scenario(session: Session) -> None:
        default = db.state().Provider
        for value in (default(upload(b"unsaved")), default("f/a.txt")):
            session.add(Record(title="r", document=value))
            with pytest.raises(StoreError) as info:
                session.flush()
            assert str(info.value).startswith(
                "Record.document keeps its files in the storage 'documents', and "
            )
            assert "is a provider of the storage 'default'" in str(info.value)
            session.rollback()
        refused = r"update\(Record\) sets Record.document, which keeps its files in the storage"
        with pytest.raises(StoreError, match=refused):
            session.execute(update(Record).values(document=default("f/a.txt")))
        session.rollback()

    await db(scenario)
    assert db.files() == {
        "default": {"f/a.txt": b"default's", "f/1.txt": b"a1"},
        "documents": {"f/1.txt": b"d1"},
    }
    assert db.rows() == [("1", "f/1.txt", "f/1.txt")]


@pytest.mark.parametrize("second", ["memory"])
async def test_an_unknown_storage_is_named_when_the_column_is_used(db: DB) -> None:
    with db.sync_engine.begin() as connection:
        connection.execute(insert(table_of(Lost)).values(id=1, file="f/a.txt"))
    message = (
        r"^the StoreType column lost\.file keeps its files in the storage 'archive', and this app "
        r"has no storage of that name \(it has 'default', 'documents'\): add 'archive' to "
        r"app\.config\['STORE_STORAGES'\]"
    )

    def scenario(session: Session) -> None:
        with pytest.raises(StoreError, match=message):
            session.get(Lost, 1)  # loading
        session.rollback()
        session.add(Lost(file=upload(b"never stored")))
        with pytest.raises(StoreError, match=message):
            session.flush()  # saving
        session.rollback()
        with pytest.raises(StoreError, match=message):
            session.execute(delete(Lost))  # releasing: the statement does not run
        session.rollback()

    await db(scenario)
    with db.sync_engine.connect() as connection:
        assert connection.execute(text("SELECT file FROM lost")).scalars().all() == ["f/a.txt"]
    assert db.files() == {"default": {}, "documents": {}}


@pytest.mark.parametrize("second", ["memory"])
async def test_two_storages_never_share_a_cached_statement(db: DB) -> None:
    """The storage is part of the type's cache key: the same SQL, typed for another storage,
    loads providers of that storage."""

    def scenario(session: Session) -> list[Any]:
        found = []
        for storage in ("default", "documents", "default"):
            path = type_coerce(literal_column("'f/a.txt'"), StoreType(storage=storage))
            found.append(session.scalar(select(path)))
        return found

    loaded = await db(scenario)
    kinds = [db.state().Provider, db.state("documents").Provider, db.state().Provider]
    assert [type(p) for p in loaded] == kinds


def test_a_storage_is_named_by_a_string() -> None:
    with pytest.raises(TypeError, match="takes a storage's name"):
        StoreType(storage=None)  # type: ignore[arg-type]
    assert StoreType(storage="documents").storage == "documents"
