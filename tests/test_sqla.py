"""StoreType on real databases: SQLite and PostgreSQL, AsyncSession and Session.

Each scenario is a sync function of a Session. ``db`` runs it either through
``AsyncSession.run_sync`` in a Quart app (the greenlet path: hooks await the async provider) or
through a plain Session in a worker thread of a Flask app (the sync shim's path).
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import anyio
import flask
import pytest
import quart
import werkzeug.datastructures
from sqlalchemy import ForeignKey, String, Table, create_engine, delete, insert, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from async_store import Store, StoreError
from async_store.sqla import FlaskStoreType, StoreType
from tests.conftest import s3_client, s3_config, unavailable
from tests.postgres import PostgreSQL, find_bin
from tests.seaweed import SeaweedFS

_databases = itertools.count()


class Base(DeclarativeBase):
    pass


def table_of(model: type[DeclarativeBase]) -> Table:
    """A mapped class's Core table (DeclarativeBase types ``__table__`` as any FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50), unique=True)
    file = mapped_column(StoreType(128, location="docs"), nullable=True)


class Album(Base):
    __tablename__ = "albums"
    id: Mapped[int] = mapped_column(primary_key=True)
    photos: Mapped[list[Photo]] = relationship(cascade="all, delete-orphan", order_by="Photo.id")


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    album_id: Mapped[int | None] = mapped_column(ForeignKey("albums.id"))
    file = mapped_column(StoreType(128, location="photos"), nullable=True)


class Pair(Base):
    """Two files a row."""

    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    file = mapped_column(StoreType(128, location="one"), nullable=True)
    copy = mapped_column(StoreType(128, location="two"), nullable=True)


def upload(data: bytes = b"data", name: str = "a.txt") -> werkzeug.datastructures.FileStorage:
    return werkzeug.datastructures.FileStorage(io.BytesIO(data), name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    bin_dir = find_bin()
    if bin_dir is None:
        unavailable("PostgreSQL is not installed here (make test installs Debian's postgresql)")
    server = PostgreSQL(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(sync URL, async URL) of a new, empty database."""
    return new_database(str(request.param), tmp_path, request)


def new_database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(sync URL, async URL) of a new, empty ``kind`` database (``sqlite``, ``postgresql``)."""
    if kind == "sqlite":
        path = tmp_path / "test.db"
        return f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}"
    server: PostgreSQL = request.getfixturevalue("postgres")
    name = f"t{os.getpid()}_{next(_databases)}"
    admin = create_engine(server.url("psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.url("psycopg", name), server.url("asyncpg", name)


class DB:
    def __init__(self, mode: str, urls: tuple[str, str], store_path: Path) -> None:
        self.mode = mode
        self.store_path = store_path
        self.sync_engine = create_engine(urls[0])
        Base.metadata.create_all(self.sync_engine)
        self.async_engine = create_async_engine(urls[1]) if mode == "async" else None
        self.app: Any = quart.Quart(__name__) if mode == "async" else flask.Flask(__name__)
        self.app.config["STORE_PATH"] = str(store_path)
        self.store = Store(self.app)

    async def __call__(self, scenario: Callable[[Session], Any], **options: Any) -> Any:
        """Run ``scenario(session)`` in a new session, the async or the sync way; ``options``
        go to the session (``expire_on_commit=False``)."""
        if self.async_engine is not None:
            engine = self.async_engine
            async with self.app.app_context(), AsyncSession(engine, **options) as session:
                return await session.run_sync(scenario)

        def in_thread() -> Any:
            with self.app.app_context(), Session(self.sync_engine, **options) as session:
                return scenario(session)

        return await anyio.to_thread.run_sync(in_thread)

    def files(self) -> dict[str, bytes]:
        return {
            p.relative_to(self.store_path).as_posix(): p.read_bytes()
            for p in self.store_path.rglob("*")
            if p.is_file()
        }

    def column(self, table: str = "docs", name: str = "file") -> list[Any]:
        query = text(f"SELECT {name} FROM {table} ORDER BY id")
        with self.sync_engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def store_file(self, relative: str, data: bytes) -> None:
        """A file stored earlier (by another row, Flask-Store, a migration)."""
        path = self.store_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    async def close(self) -> None:
        if self.async_engine is not None:
            await self.async_engine.dispose()
        self.sync_engine.dispose()
        await anyio.to_thread.run_sync(self.store.close)


@pytest.fixture(params=["async", "sync"])
async def db(request: pytest.FixtureRequest, urls: tuple[str, str], tmp_path: Path) -> Any:
    database = DB(str(request.param), urls, tmp_path / "store")
    yield database
    await database.close()


async def test_upload_is_stored_and_the_column_holds_its_path(db: DB) -> None:
    def scenario(session: Session) -> tuple[str, str]:
        doc = Doc(title="a", file=upload(b"hello", "report.pdf"))
        session.add(doc)
        session.commit()
        session.expire_all()
        loaded = session.get(Doc, doc.id)
        assert loaded is not None
        return loaded.file.relative_path, loaded.file.absolute_url

    assert await db(scenario) == ("docs/report.pdf", "/uploads/docs/report.pdf")
    assert db.column() == ["docs/report.pdf"]
    assert db.files() == {"docs/report.pdf": b"hello"}


async def test_none_and_stored_paths(db: DB) -> None:
    (db.store_path / "old").mkdir(parents=True)
    (db.store_path / "old" / "flask-store.txt").write_bytes(b"written by Flask-Store")

    def scenario(session: Session) -> tuple[Any, str]:
        session.add_all(
            [Doc(title="none", file=None), Doc(title="kept", file="old/flask-store.txt")]
        )
        session.commit()
        session.expire_all()
        docs = sorted(session.query(Doc).all(), key=lambda d: d.title)
        return docs[1].file, docs[0].file.relative_path

    assert await db(scenario) == (None, "old/flask-store.txt")
    assert db.column() == [None, "old/flask-store.txt"]


async def test_rollback_deletes_the_new_file(db: DB) -> None:
    def scenario(session: Session) -> None:
        session.add(Doc(title="a", file=upload()))
        session.flush()
        assert "docs/a.txt" in db.files()
        session.rollback()

    await db(scenario)
    assert db.files() == {}


async def test_failed_commit_deletes_the_new_file(db: DB) -> None:
    def scenario(session: Session) -> None:
        session.add(Doc(title="same"))
        session.commit()
        session.add(Doc(title="same", file=upload()))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()

    await db(scenario)
    assert db.files() == {}


async def test_closing_without_commit_deletes_the_new_file(db: DB) -> None:
    def scenario(session: Session) -> None:
        session.add(Doc(title="a", file=upload()))
        session.flush()
        assert db.files()
        session.close()

    await db(scenario)
    assert db.files() == {}


async def test_savepoints(db: DB) -> None:
    def scenario(session: Session) -> None:
        session.add(Doc(title="outer", file=upload(b"outer", "outer.txt")))
        with session.begin_nested() as savepoint:
            session.add(Doc(title="inner", file=upload(b"inner", "inner.txt")))
            session.flush()
            assert "docs/inner.txt" in db.files()
            savepoint.rollback()
        with session.begin_nested():
            session.add(Doc(title="kept", file=upload(b"kept", "kept.txt")))
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/outer.txt": b"outer", "docs/kept.txt": b"kept"}


async def test_released_savepoint_then_rollback_deletes(db: DB) -> None:
    def scenario(session: Session) -> None:
        with session.begin_nested():
            session.add(Doc(title="inner", file=upload()))
        session.rollback()

    await db(scenario)
    assert db.files() == {}


async def test_replacing_deletes_the_old_file_only_after_commit(db: DB) -> None:
    def scenario(session: Session) -> None:
        doc = Doc(title="a", file=upload(b"v1", "v1.txt"))
        session.add(doc)
        session.commit()
        session.expire_all()
        doc = session.get_one(Doc, doc.id)
        doc.file = upload(b"v2", "v2.txt")
        session.flush()
        assert set(db.files()) == {"docs/v1.txt", "docs/v2.txt"}
        session.rollback()  # v2 goes, v1 stays
        assert db.files() == {"docs/v1.txt": b"v1"}
        doc = session.get_one(Doc, doc.id)
        doc.file = upload(b"v3", "v3.txt")
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/v3.txt": b"v3"}
    assert db.column() == ["docs/v3.txt"]


async def test_replacing_an_unloaded_value(db: DB) -> None:
    def scenario(session: Session) -> None:
        doc = Doc(title="a", file=upload(b"v1", "v1.txt"))
        session.add(doc)
        session.commit()  # expires doc: the old value is not loaded when replaced
        doc.file = None
        session.commit()

    await db(scenario)
    assert db.files() == {} and db.column() == [None]


async def test_deleting_the_row_deletes_the_file_after_commit(db: DB) -> None:
    def scenario(session: Session) -> None:
        keep, gone = Doc(title="keep", file=upload(b"k", "k.txt")), Doc(title="gone", file=upload())
        session.add_all([keep, gone])
        session.commit()
        session.delete(keep)
        session.flush()
        session.rollback()
        session.delete(session.get(Doc, gone.id))
        session.flush()
        assert "docs/a.txt" in db.files()
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/k.txt": b"k"}


async def test_a_file_already_gone_is_fine(db: DB) -> None:
    def scenario(session: Session) -> None:
        doc = Doc(title="a", file=upload())
        session.add(doc)
        session.commit()
        os.unlink(db.store_path / "docs" / "a.txt")
        session.delete(doc)
        session.commit()

    await db(scenario)
    assert db.column() == []


async def test_updating_other_columns_leaves_the_file_alone(db: DB) -> None:
    def scenario(session: Session) -> None:
        doc = Doc(title="a", file=upload())
        session.add(doc)
        session.commit()
        for title in ("b", "c"):
            doc.title = title
            session.commit()
        doc.file = doc.file  # the same file assigned again: no change either
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/a.txt": b"data"} and db.column() == ["docs/a.txt"]


async def test_core_insert_of_an_upload_is_refused(db: DB) -> None:
    def scenario(session: Session) -> None:
        with pytest.raises(StatementError, match="unsaved FileStorage") as info:
            session.execute(insert(Doc).values(title="a", file=upload()))
        assert isinstance(info.value.orig, StoreError)

    await db(scenario)
    assert db.files() == {}


@pytest.mark.parametrize("expire_on_commit", [True, False])
async def test_deleting_a_row_that_holds_a_stored_path_deletes_the_file(
    db: DB, expire_on_commit: bool
) -> None:
    db.store_file("docs/kept.txt", b"kept")
    db.store_file("docs/flushed.txt", b"flushed")

    def scenario(session: Session) -> None:
        kept = Doc(title="kept", file="docs/kept.txt")
        session.add(kept)
        session.commit()
        session.delete(kept)
        session.commit()
        flushed = Doc(title="flushed", file="docs/flushed.txt")
        session.add(flushed)
        session.flush()
        session.delete(flushed)
        session.commit()

    await db(scenario, expire_on_commit=expire_on_commit)
    assert db.files() == {} and db.column() == []


@pytest.mark.parametrize("loaded", [True, False])
async def test_deleting_a_row_after_assigning_an_upload(db: DB, loaded: bool) -> None:
    """The file the row held goes with it; the upload assigned before the delete is never
    stored (and a rollback keeps the row's file)."""

    def scenario(session: Session) -> None:
        doc = Doc(title="a", file=upload(b"held", "held.txt"))
        session.add(doc)
        session.commit()  # expires doc: `loaded` reads the file before replacing it
        for end in (session.rollback, session.commit):
            if loaded:
                assert doc.file.relative_path == "docs/held.txt"
            doc.file = upload(b"new", "new.txt")
            session.delete(doc)
            session.flush()
            assert db.files() == {"docs/held.txt": b"held"}
            end()

    await db(scenario)
    assert db.files() == {} and db.column() == []


async def test_delete_orphan_cascade_deletes_the_files(db: DB) -> None:
    def scenario(session: Session) -> None:
        names = ["1", "2", "3", "4", "5"]
        album = Album(photos=[Photo(file=upload(n.encode(), f"{n}.txt")) for n in names])
        session.add(album)
        session.commit()
        album.photos.pop(0)  # photo 1
        session.flush()
        session.rollback()  # the orphan is back, its file too
        assert len(db.files()) == 5
        album.photos.pop(0)  # photo 1, for good
        session.commit()
        session.expire(album.photos[0], ["file"])  # photo 2's path not loaded: read from the row
        album.photos.pop(0)
        session.commit()
        photo = album.photos[0]  # photo 3, given a new file in the flush that deletes it
        photo.file = upload(b"new", "new.txt")
        album.photos.remove(photo)
        session.commit()

    await db(scenario)
    assert db.files() == {"photos/4.txt": b"4", "photos/5.txt": b"5"}
    assert db.column("photos") == ["photos/4.txt", "photos/5.txt"]

    def delete_the_album(session: Session) -> None:
        album = session.query(Album).one()
        session.delete(album)  # cascade="all": its photos too
        session.commit()

    await db(delete_the_album)
    assert db.files() == {} and db.column("photos") == []


async def docs(db: DB, *names: str) -> None:
    def scenario(session: Session) -> None:
        session.add_all(Doc(title=n, file=upload(n.encode(), f"{n}.txt")) for n in names)
        session.commit()

    await db(scenario)


@pytest.mark.parametrize("synchronize_session", ["auto", "fetch", False])
async def test_bulk_update_deletes_the_replaced_files_after_commit(
    db: DB, synchronize_session: Any
) -> None:
    await docs(db, "a", "b", "c")
    db.store_file("docs/other.txt", b"other")
    options = {"synchronize_session": synchronize_session}

    def scenario(session: Session) -> None:
        loaded = session.query(Doc).order_by(Doc.id).all()  # in the session while it runs
        replace = update(Doc).where(Doc.title != "c").values(file="docs/other.txt")
        session.execute(replace, execution_options=options)
        session.rollback()
        assert len(db.files()) == 4
        session.execute(replace, execution_options=options)
        session.execute(replace, execution_options=options)  # the same value again: no change
        session.commit()
        assert set(db.files()) == {"docs/other.txt", "docs/c.txt"}
        # A stale in-session value (synchronize_session=False) does not hide what the row
        # holds now: replacing it deletes docs/other.txt, not the long-gone docs/a.txt.
        loaded[0].file = upload(b"a2", "a2.txt")
        loaded[1].file = "docs/c.txt"
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/a2.txt": b"a2", "docs/c.txt": b"c"}
    assert db.column() == ["docs/a2.txt", "docs/c.txt", "docs/c.txt"]


async def test_bulk_update_by_primary_key_core_update_and_returning(db: DB) -> None:
    await docs(db, "a", "b", "c", "d")

    def scenario(session: Session) -> None:
        session.execute(update(Doc), [{"id": 1, "file": "docs/c.txt"}, {"id": 2, "title": "x"}])
        session.commit()
        assert set(db.files()) == {"docs/b.txt", "docs/c.txt", "docs/d.txt"}
        table = table_of(Doc)
        core = update(table).where(table.c.title == "x").values(file=None)
        assert session.execute(core.returning(table.c.id)).scalars().all() == [2]
        orm = update(Doc).where(Doc.title == "d").values(file="docs/c.txt").returning(Doc)
        assert [d.title for d in session.scalars(orm)] == ["d"]
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/c.txt": b"c"}
    assert db.column() == ["docs/c.txt", None, "docs/c.txt", "docs/c.txt"]


async def test_bulk_delete_deletes_the_files_after_commit(db: DB) -> None:
    await docs(db, "a", "b", "c")

    def scenario(session: Session) -> None:
        session.execute(delete(Doc).where(Doc.title != "c"))
        session.rollback()
        assert len(db.files()) == 3
        with session.begin_nested():
            session.execute(delete(Doc).where(Doc.title == "a"))
        session.execute(delete(table_of(Doc)).where(table_of(Doc).c.title == "b"))
        session.commit()

    await db(scenario)
    assert db.files() == {"docs/c.txt": b"c"} and db.column() == ["docs/c.txt"]


async def test_bulk_update_with_an_upload_is_refused(db: DB) -> None:
    await docs(db, "a")

    def scenario(session: Session) -> None:
        refused = r"update\(Doc\) sets Doc.file to an unsaved FileStorage"
        with pytest.raises(StoreError, match=refused):
            session.execute(update(Doc).values(file=upload(b"new", "new.txt")))
        with pytest.raises(StoreError, match=refused):  # by primary key
            session.execute(update(Doc), [{"id": 1, "file": upload(b"new", "new.txt")}])
        session.rollback()

    await db(scenario)
    assert db.files() == {"docs/a.txt": b"a"} and db.column() == ["docs/a.txt"]


async def test_one_upload_assigned_to_two_rows_and_two_columns(db: DB) -> None:
    def scenario(session: Session) -> None:
        same = upload(b"same", "same.txt")
        session.add_all([Doc(title="a", file=same), Doc(title="b", file=same)])
        session.add(Pair(file=same, copy=same))
        session.commit()

    await db(scenario)
    files = db.files()
    assert sorted(files.values()) == [b"same"] * 4
    assert sorted(db.column() + db.column("pairs") + db.column("pairs", "copy")) == sorted(files)


class OneShot(io.RawIOBase):
    """An upload stream that can be read once (a socket, a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


async def test_one_shot_upload_assigned_twice_is_refused(db: DB) -> None:
    def scenario(session: Session) -> None:
        # A binary stream at runtime; typeshed's RawIOBase is no IO[bytes], which werkzeug wants.
        once = werkzeug.datastructures.FileStorage(cast("IO[bytes]", OneShot(b"once")), "once.txt")
        session.add(Pair(file=once, copy=once))
        with pytest.raises(StoreError):
            session.flush()
        session.rollback()

    await db(scenario)
    assert db.files() == {} and db.column("pairs") == []


async def test_one_unsaved_provider_assigned_to_two_rows_is_refused(db: DB) -> None:
    def scenario(session: Session) -> None:
        provider = db.store.Provider(upload())
        session.add_all([Doc(title="a", file=provider), Doc(title="b", file=provider)])
        with pytest.raises(StoreError, match="same unsaved provider"):
            session.flush()
        session.rollback()

    await db(scenario)
    assert db.files() == {} and db.column() == []


async def test_real_async_session_in_quart(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    app = quart.Quart(__name__)
    app.config["STORE_PATH"] = str(tmp_path / "store")
    Store(app)
    async with app.app_context(), AsyncSession(engine, expire_on_commit=False) as session:
        doc = Doc(title="a", file=quart.datastructures.FileStorage(io.BytesIO(b"q"), "q.txt"))
        session.add(doc)
        await session.commit()
        loaded = await session.get(Doc, doc.id, populate_existing=True)
        assert loaded is not None
        async with loaded.file.open() as f:
            assert await f.read() == b"q"
        await session.delete(loaded)
        await session.commit()
    assert not (tmp_path / "store" / "docs" / "q.txt").exists()
    await engine.dispose()


def test_flask_sqlalchemy_quick_start(tmp_path: Path) -> None:
    from flask_sqlalchemy import SQLAlchemy

    app = flask.Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'db.sqlite'}",
        STORE_PATH=str(tmp_path / "store"),
        STORE_DOMAIN="http://127.0.0.1:5000",
    )
    db = SQLAlchemy(app)
    store = Store(app)

    class MyModel(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        field = db.Column(FlaskStoreType(128, location="/some/where"))

    @app.post("/foo")
    def foo() -> str:
        model = MyModel()
        model.field = flask.request.files.get("foo")
        db.session.add(model)
        db.session.commit()
        return str(model.field.absolute_url)

    @app.get("/bar/<int:id>")
    def bar(id: int) -> str:
        return str(db.session.get_one(MyModel, id).field.absolute_url)

    with app.app_context():
        db.create_all()
    client = app.test_client()
    url = client.post("/foo", data={"foo": (io.BytesIO(b"f"), "foo.png")}).text
    assert url == "http://127.0.0.1:5000/uploads/some/where/foo.png"
    assert client.get("/bar/1").text == url
    with client.get("/uploads/some/where/foo.png") as response:
        assert response.data == b"f"
    store.close()


@pytest.mark.parametrize("background", [False, True])
async def test_s3_column_with_and_without_background_uploads(
    s3_server: SeaweedFS, bucket: str, tmp_path: Path, background: bool
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    app = quart.Quart(__name__)
    app.config.update(
        s3_config(
            s3_server,
            bucket,
            STORE_PATH="media",
            STORE_BACKGROUND=background,
            STORE_SPOOL_PATH=str(tmp_path / "spool"),
        )
    )
    Store(app)
    async with app.test_app(), app.app_context():
        async with AsyncSession(engine, expire_on_commit=False) as session:
            kept = Doc(title="kept", file=upload(b"kept", "kept.txt"))
            session.add(kept)
            await session.commit()
            kept_id = kept.id
            session.add(Doc(title="dropped", file=upload(b"dropped", "dropped.txt")))
            await session.flush()
            await session.rollback()
            doomed = Doc(title="doomed", file=upload(b"doomed", "doomed.txt"))
            session.add(doomed)
            await session.flush()  # saved (spooled, with background uploads), then deleted
            await session.delete(doomed)
            await session.commit()
            loaded = await session.get(Doc, kept_id)
            assert loaded is not None
            await loaded.file.wait()
            assert loaded.file.relative_path == "docs/kept.txt"
        if background:
            with anyio.fail_after(20):  # the spool empties: delivered, and discarded
                while [p for p in (tmp_path / "spool").iterdir() if p.name != "names"]:
                    await anyio.sleep(0.05)
    client = s3_client(s3_server)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["media/docs/kept.txt"]
    await engine.dispose()
