"""``store backfill``: the facts of the files a column switched from StoreType to FileType names
by path only, written into its records (issue 14).

Each table is made the way an app has it: written by ``StoreType`` (bare paths, VARCHAR),
switched to ``FileType`` (on PostgreSQL the column becomes JSONB with ``to_jsonb``, as the
guide says; SQLite keeps its column). Files are stored behind the library's back, on local disk
or the suite's SeaweedFS, as a seed app left them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
from click.testing import Result
from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from async_store import Store
from async_store.cli._app import human_size
from async_store.cli._backfill import Backfill
from async_store.cli._sqla_database import Database
from async_store.cli._sqla_target import Target
from async_store.sqla import FileRecord, FileType, StoreType
from tests.conftest import s3_client, s3_config, spool_undeliverable
from tests.seaweed import SeaweedFS
from tests.test_cli import invoke
from tests.test_sqla import new_database, postgres

__all__ = ["postgres"]  # test_sqla's fixture: one PostgreSQL server

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


class Before(DeclarativeBase):
    pass


class OldDoc(Before):
    """The table as the seed's app wrote it."""

    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    file = mapped_column(StoreType(128), nullable=True)


class OldPaper(Before):
    __tablename__ = "papers"
    id: Mapped[int] = mapped_column(primary_key=True)
    file = mapped_column(StoreType(128, storage="documents"), nullable=True)


class After(DeclarativeBase):
    pass


class Doc(After):
    """The same table once the model says FileType."""

    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    file: Mapped[FileRecord | None] = mapped_column(FileType(), nullable=True)


class Paper(After):
    __tablename__ = "papers"
    id: Mapped[int] = mapped_column(primary_key=True)
    file: Mapped[FileRecord | None] = mapped_column(FileType(storage="documents"), nullable=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = {
    "f/a.txt": b"hello\n",
    "f/report.pdf": b"%PDF-1.7" + os.urandom(200_000),  # several chunks
    "f/blob.dat": os.urandom(1000),
}


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedFS) -> str:
    """One bucket for the module, each test below a prefix of its own (a new bucket costs
    SeaweedFS seconds)."""
    s3_client(s3_server).create_bucket(Bucket="backfill")
    return "backfill"


class World:
    """A database with the seed's tables, and an app whose storages hold the files."""

    def __init__(self, urls: tuple[str, str], tmp_path: Path, storages: dict[str, Any]) -> None:
        self.sync_url, self.async_url = urls
        self.engine = create_engine(self.sync_url)
        Before.metadata.create_all(self.engine)
        self.tmp_path = tmp_path
        self.app = flask.Flask(__name__)
        self.app.config["STORE_PATH"] = str(tmp_path / "default")
        self.app.config.update(storages)
        self.store = Store(self.app)

    def rows(self, table: str = "docs") -> dict[int, Any]:
        """Each row's value as the database holds it: a bare path, or the parsed record."""
        with self.engine.connect() as connection:
            found = connection.execute(text(f"SELECT id, file FROM {table} ORDER BY id"))
            return {i: _parsed(v) for i, v in found}

    def insert(self, values: dict[int, str | None], table: str = "docs") -> None:
        with self.engine.begin() as connection:
            for key, value in values.items():
                connection.execute(
                    text(f"INSERT INTO {table} (id, file) VALUES (:id, :file)"),
                    {"id": key, "file": value},
                )

    def switch_to_file_type(self, table: str = "docs") -> None:
        """What the guide says to do to the column in the database: JSONB on PostgreSQL."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE {table} ALTER COLUMN file TYPE jsonb USING to_jsonb(file)")
                )

    def cli(self, *args: str) -> Result:
        result: Result = self.app.test_cli_runner().invoke(args=["store", "backfill", *args])
        return result

    def close(self) -> None:
        self.engine.dispose()
        self.store.close()


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def store_local(folder: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)


@pytest.fixture
def database() -> str:
    return "sqlite"


@pytest.fixture
def world(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    found = World(new_database(database, tmp_path, request), tmp_path, {})
    yield found
    found.close()


def read_back(world: World, model: type[Doc | Paper], key: int) -> tuple[FileRecord, bytes, int]:
    """The record the app reads, the bytes its provider opens, and its provider's info()."""
    with world.app.app_context(), Session(world.engine) as session:
        row: Any = session.get(model, key)
        assert row is not None and isinstance(row.file, FileRecord)
        with row.file.open() as f:
            data = f.read()
        return row.file, bytes(data), row.file.info().size


# --- the facts, on local disk and on S3, through sync and async drivers ---------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_bare_paths_get_the_facts_of_their_files(
    database: str, driver: str, where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config: dict[str, Any] = {}
    types = {"f/a.txt": "text/plain", "f/report.pdf": "application/pdf"}
    if where == "s3":
        server = request.getfixturevalue("s3_server")
        prefix = f"t{tmp_path.name}"
        config = s3_config(server, request.getfixturevalue("bucket"), STORE_PATH=prefix)
        client = s3_client(server)
        types["f/blob.dat"] = "application/x-measurements"  # what S3 serves it with
        for relative, data in FILES.items():
            # blob.dat is stored with its SHA-256, which S3 keeps: it need not be read again.
            checksum = {"ChecksumAlgorithm": "SHA256"} if relative == "f/blob.dat" else {}
            client.put_object(
                Bucket=config["STORE_S3_BUCKET"],
                Key=f"{prefix}/{relative}",
                Body=data,
                ContentType=types[relative],
                **checksum,
            )
        read = human_size(len(FILES["f/a.txt"]) + len(FILES["f/report.pdf"]))
    else:
        types["f/blob.dat"] = "application/octet-stream"  # guessed from the name
        store_local(tmp_path / "default", FILES)
        read = human_size(sum(map(len, FILES.values())))
    world = World(new_database(database, tmp_path, request), tmp_path, config)
    try:
        world.insert({1: "f/a.txt", 2: "f/report.pdf", 3: "f/blob.dat", 4: None})
        world.switch_to_file_type()
        url = world.sync_url if driver == "sync" else world.async_url
        done = world.cli("docs.file", "--database-url", url, "--batch-size", "2")
        assert done.exit_code == 0, done.output
        assert f"filled 3 rows of docs.file ({read} read)" in done.stdout
        # A count line after each batch's commit, on stderr.
        assert re.findall(r"^(\d) of 3 rows: filled (\d)", done.stderr, re.M) == [
            ("2", "2"),
            ("3", "3"),
        ]
        rows = world.rows()
        assert rows[4] is None  # no file: nothing to fill
        for key, path in [(1, "f/a.txt"), (2, "f/report.pdf"), (3, "f/blob.dat")]:
            data = FILES[path]
            record = rows[key]
            assert (record["storage"], record["path"]) == ("default", path)
            assert (record["size"], record["sha256"]) == (len(data), sha(data))
            assert record["content_type"] == types[path]
            assert record["stored_at"] is not None and record["filename"] is None
            # Read back through FileType: a record with its provider's API, in the app.
            loaded, opened, size = read_back(world, Doc, key)
            assert (loaded.size, loaded.sha256, loaded.content_type) == (
                len(data),
                sha(data),
                types[path],
            )
            assert (opened, size) == (data, len(data))

        again = world.cli("docs.file", "--database-url", url)
        assert again.exit_code == 0, again.output
        assert "filled 0 rows of docs.file (0 B read), skipped 3 already complete" in again.stdout
        assert world.rows() == rows
    finally:
        world.close()


# --- named storages -------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_each_path_is_filled_from_its_own_storage(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``f/a.txt`` is in both storages with other bytes: the facts are those of the file in
    the storage the column (or the record) names, never of the other."""
    documents = tmp_path / "documents"
    storages = {"STORE_STORAGES": {"documents": {"PATH": str(documents)}}}
    world = World(new_database(database, tmp_path, request), tmp_path, storages)
    ours, theirs = b"documents' a", b"the default storage's a, longer"
    store_local(documents, {"f/a.txt": ours, "f/b.txt": b"b"})
    store_local(tmp_path / "default", {"f/a.txt": theirs})
    try:
        world.insert({1: "f/a.txt", 2: "f/b.txt"}, table="papers")
        world.switch_to_file_type("papers")
        with Session(world.engine) as session:  # a record naming another storage, facts unknown
            session.add(Paper(id=3, file=FileRecord("default", "f/a.txt")))
            session.commit()
        url = ["--database-url", world.sync_url]

        # TABLE.COLUMN in an app with several storages: which one must be said.
        unsaid = world.cli("papers.file", *url)
        assert unsaid.exit_code == 2
        assert "say which one the paths of papers.file are in with --storage NAME" in (
            unsaid.output
        )
        assert world.cli("papers.file", *url, "--storage", "nope").exit_code == 2
        # The model's column knows its storage, and says so if --storage disagrees.
        model = "tests.test_cli_backfill:Paper.file"
        wrong = world.cli(model, *url, "--storage", "default")
        assert wrong.exit_code == 2 and "keeps its files in the storage 'documents'" in (
            wrong.output
        )
        done = world.cli(model, *url)
        assert done.exit_code == 0, done.output
        assert f"filled 3 rows of {model}" in done.stdout
        rows = world.rows("papers")
        assert (rows[1]["storage"], rows[1]["sha256"], rows[1]["size"]) == (
            "documents",
            sha(ours),
            len(ours),
        )
        assert (rows[3]["storage"], rows[3]["sha256"]) == ("default", sha(theirs))
        loaded, opened, _ = read_back(world, Paper, 1)
        assert (loaded.storage, opened) == ("documents", ours)
        loaded, opened, _ = read_back(world, Paper, 3)
        assert (loaded.storage, opened) == ("default", theirs)

        again = world.cli("papers.file", *url, "--storage", "documents")
        assert again.exit_code == 0 and "skipped 3 already complete" in again.stdout
    finally:
        world.close()


def test_a_list_of_records_is_filled_element_by_element(world: World, tmp_path: Path) -> None:
    store_local(tmp_path / "default", {"f/1.txt": b"one", "f/2.txt": b"two"})
    complete = FileRecord(
        "default", "f/2.txt", size=3, content_type="text/plain", sha256=sha(b"two")
    ).to_json()
    world.insert({1: json.dumps([{"storage": "default", "path": "f/1.txt"}, complete])})
    done = world.cli("docs.file", "--database-url", world.sync_url)
    assert done.exit_code == 0, done.output
    [filled, kept] = world.rows()[1]
    assert (filled["size"], filled["sha256"], filled["content_type"]) == (
        3,
        sha(b"one"),
        "text/plain",
    )
    assert kept == complete


# --- missing files, dry runs ----------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_missing_file_is_named_with_its_row_and_left_alone(world: World, tmp_path: Path) -> None:
    store_local(tmp_path / "default", {"f/a.txt": b"a", "f/c.txt": b"c"})
    world.insert({1: "f/a.txt", 2: "f/gone.txt", 3: "f/c.txt"})
    world.switch_to_file_type()
    done = world.cli("docs.file", "--database-url", world.sync_url)
    assert done.exit_code == 1, done.output
    assert "missing: docs id=2: 'f/gone.txt' is not in the storage 'default'" in done.stdout
    assert "filled 2 rows of docs.file" in done.stdout and "1 files missing" in done.stdout
    rows = world.rows()
    assert rows[2] == "f/gone.txt"  # as it was
    assert rows[1]["sha256"] == sha(b"a") and rows[3]["sha256"] == sha(b"c")

    again = world.cli("docs.file", "--database-url", world.sync_url, "--missing-ok")
    assert again.exit_code == 0, again.output
    assert "filled 0 rows" in again.stdout and "missing: docs id=2" in again.stdout
    # The app still reads the row as a record with the facts unknown.
    with world.app.app_context(), Session(world.engine) as session:
        row = session.get(Doc, 2)
        assert row is not None and row.file == FileRecord(
            "default", "f/gone.txt", content_type="text/plain"
        )


def test_a_dry_run_says_what_would_change_and_writes_nothing(world: World, tmp_path: Path) -> None:
    store_local(tmp_path / "default", {"f/a.txt": b"hello\n", "f/b.pdf": bytes(2048)})
    world.insert({1: "f/a.txt", 2: "f/b.pdf", 3: "f/gone.txt"})
    before = world.rows()
    done = world.cli("docs.file", "--database-url", world.sync_url, "--dry-run")
    assert done.exit_code == 1, done.output  # a file is missing, in a dry run too
    assert done.stdout.splitlines()[:3] == [
        "would fill: docs id=1: f/a.txt (6 B, text/plain)",
        "would fill: docs id=2: f/b.pdf (2.0 KiB, application/pdf)",
        "would fill 2 rows of docs.file (2.0 KiB to read), 0 already complete, 1 files "
        "missing, 0 failed; nothing was written (--dry-run)",
    ]
    assert "missing: docs id=3: 'f/gone.txt'" in done.stdout
    assert world.rows() == before


# --- background uploads not delivered yet --------------------------------------------------------


def test_a_file_still_spooled_waits_for_delivery_and_a_rerun_fills_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """STORE_BACKGROUND: ``docs/0.bin`` was saved but cannot be delivered (a file stands where
    its folder goes), so the storage has nothing there yet. Its row is waiting, not missing,
    and the run does not fail; once delivered, running it again fills it in."""
    store_path, config = spool_undeliverable(tmp_path, 1)
    store_local(store_path, {"f/a.txt": b"a"})
    world = World(
        new_database("sqlite", tmp_path, request),
        tmp_path,
        {"STORE_PATH": str(store_path), **config},
    )
    try:
        world.insert({1: "f/a.txt", 2: "docs/0.bin"})
        url = ["--database-url", world.sync_url]
        done = world.cli("docs.file", *url)
        assert done.exit_code == 0, done.output
        assert done.stdout.splitlines()[0] == (
            "warning: 1 background uploads are still spooled and cannot be read yet (their "
            "rows are left for the next run); run 'store drain' first"
        )
        assert (
            "waiting: docs id=2: 'docs/0.bin' is still spooled for the storage 'default' "
            "('store drain' delivers it): not delivered yet, the row is left for the next run"
        ) in done.stdout
        assert "0 files missing, 1 waiting for delivery, 0 failed" in done.stdout
        assert "missing:" not in done.stdout
        assert "0 missing, 1 waiting for delivery," in done.stderr  # the progress line
        rows = world.rows()
        assert rows[1]["sha256"] == sha(b"a") and rows[2] == "docs/0.bin"

        (store_path / "docs").unlink()  # the cause is fixed
        delivered = world.app.test_cli_runner().invoke(args=["store", "drain"])
        assert delivered.exit_code == 0, delivered.output
        again = world.cli("docs.file", *url)
        assert again.exit_code == 0, again.output
        assert "filled 1 rows of docs.file" in again.stdout
        assert "skipped 1 already complete" in again.stdout and "waiting" not in again.stdout
        record = world.rows()[2]
        assert (record["size"], record["sha256"]) == (1000, sha(bytes(1000)))
    finally:
        world.close()


# --- the app, loaded once ---------------------------------------------------------------------


def test_an_app_factory_is_called_once_for_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m async_store --app module:create_app()``: backfill reads the database from
    the app's config, from the app the store came from, not from a second one."""
    store_local(tmp_path / "s", {"f/a.txt": b"a"})
    database = tmp_path / "app.db"
    engine = create_engine(f"sqlite:///{database}")
    Before.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO docs (id, file) VALUES (1, 'f/a.txt')"))
    engine.dispose()
    (tmp_path / "backfill_factory.py").write_text(
        textwrap.dedent(f"""\
            import flask

            from async_store import Store

            store = Store()
            calls = 0


            def create_app():
                global calls
                calls += 1
                app = flask.Flask(__name__)
                app.config.update(
                    SQLALCHEMY_DATABASE_URI={f"sqlite:///{database}"!r},
                    STORE_PATH={str(tmp_path / "s")!r},
                )
                store.init_app(app)
                return app
            """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        done = invoke(["--app", "backfill_factory:create_app()", "backfill", "docs.file"])
        assert done.exit_code == 0, done.output
        assert "filled 1 rows of docs.file" in done.stdout
        assert sys.modules["backfill_factory"].calls == 1
    finally:
        sys.modules.pop("backfill_factory", None)


# --- concurrent writers, interrupted runs ---------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_row_the_app_changed_meanwhile_keeps_the_apps_value(
    world: World, tmp_path: Path
) -> None:
    store_local(tmp_path / "default", {"f/a.txt": b"a", "f/b.txt": b"b", "f/new.txt": b"new"})
    world.insert({1: "f/a.txt", 2: "f/b.txt"})
    world.switch_to_file_type()
    database = Database(create_engine(world.sync_url))
    storages = world.store.state(world.app).storages
    job = await Backfill.open(database, Target.parse("docs.file"), storages, "default")
    rows = await job.page(None)
    updates = await job.compute(rows)
    assert [row.key for row, _ in updates] == [(1,), (2,)]

    # The app writes row 2 between the backfill's read and its write.
    new = FileRecord("default", "f/new.txt", size=3, content_type="text/plain", sha256=sha(b"new"))

    def app_writes() -> None:
        with world.app.app_context(), Session(world.engine) as session:
            doc = session.get(Doc, 2)
            assert doc is not None
            doc.file = dataclasses.replace(new, metadata={"by": "the app"})
            session.commit()

    await anyio.to_thread.run_sync(app_writes)
    await job.write(updates)
    await database.aclose()
    assert (job.tally.filled, job.tally.changed) == (1, ["docs id=2"])
    rows_now = await anyio.to_thread.run_sync(world.rows)
    assert rows_now[2]["path"] == "f/new.txt" and rows_now[2]["metadata"] == {"by": "the app"}
    assert rows_now[1]["sha256"] == sha(b"a")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_where_it_stopped(
    postgres: Any, tmp_path: Path, request: pytest.FixtureRequest, how: signal.Signals
) -> None:
    """A real ``python -m async_store backfill``, one row a batch, killed once its first batch
    is committed. The app holds row 2 locked (a transaction of its own), so the second batch
    cannot commit before the signal; SIGTERM stops it saying how to resume, and the rerun fills
    what is left."""
    urls = new_database("postgresql", tmp_path, request)
    world = World(urls, tmp_path, {})
    store_local(tmp_path / "default", FILES)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "STORE_PATH": str(tmp_path / "default"),
    }
    command = [PYTHON, "-m", "async_store", "backfill", "docs.file"]
    command += ["--database-url", world.async_url, "--batch-size", "1"]
    try:
        world.insert({1: "f/a.txt", 2: "f/report.pdf", 3: "f/blob.dat"})
        world.switch_to_file_type()
        with world.engine.connect() as app, app.begin():
            app.execute(text("SELECT id FROM docs WHERE id = 2 FOR UPDATE"))
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                assert process.stderr is not None
                first = process.stderr.readline()  # written after the first commit
            finally:
                process.send_signal(how)
                output, errors = process.communicate(timeout=30)
            assert first.startswith("1 of 3 rows: filled 1,"), first + output + errors
            if how == signal.SIGTERM:
                assert process.returncode == 130, output + errors
                assert output == "interrupted after filling 1 rows: run it again to resume\n"
            else:
                assert process.returncode == -signal.SIGKILL
        rows = world.rows()
        assert rows[1]["sha256"] == sha(FILES["f/a.txt"])
        assert (rows[2], rows[3]) == ("f/report.pdf", "f/blob.dat")

        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "filled 2 rows of docs.file" in done.stdout
        assert "skipped 1 already complete" in done.stdout
        rows = world.rows()
        assert [rows[k]["sha256"] for k in (1, 2, 3)] == [sha(d) for d in FILES.values()]
    finally:
        world.close()


# --- Flask-SQLAlchemy, and what is refused --------------------------------------------------------


def test_flask_sqlalchemy_apps_need_no_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's column names the target, and the app's Flask-SQLAlchemy engine is the
    database (its relative SQLite path is in the app's instance folder, as Flask-SQLAlchemy
    resolves it)."""
    (tmp_path / "backfill_fsa_app.py").write_text(
        textwrap.dedent(f"""\
            import flask
            from flask_sqlalchemy import SQLAlchemy

            from async_store import Store
            from async_store.sqla import FileType

            app = flask.Flask(__name__, instance_path={str(tmp_path / "instance")!r})
            app.config.update(
                SQLALCHEMY_DATABASE_URI="sqlite:///app.db", STORE_PATH={str(tmp_path / "s")!r}
            )
            db = SQLAlchemy(app)
            store = Store(app)


            class Upload(db.Model):
                id = db.Column(db.Integer, primary_key=True)
                file = db.Column(FileType())
            """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import backfill_fsa_app  # type: ignore[import-not-found]

    app = backfill_fsa_app.app
    store_local(tmp_path / "s", {"up/a.txt": b"uploaded"})
    with app.app_context():
        backfill_fsa_app.db.create_all()
        with backfill_fsa_app.db.engine.begin() as connection:
            connection.execute(text("INSERT INTO upload (id, file) VALUES (1, 'up/a.txt')"))
    try:
        result = app.test_cli_runner().invoke(
            args=["store", "backfill", "backfill_fsa_app:Upload.file"]
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / "instance" / "app.db").exists()
        with app.app_context():
            record = backfill_fsa_app.db.session.get(backfill_fsa_app.Upload, 1).file
            assert (record.size, record.sha256) == (8, sha(b"uploaded"))
            assert record.info().size == 8
    finally:
        backfill_fsa_app.store.close()
        del sys.modules["backfill_fsa_app"]


def test_what_cannot_be_filled_is_refused_with_the_fix(world: World) -> None:
    url = ["--database-url", world.sync_url]
    cases = {
        ("nope.file", *url): "the database has no table 'nope'",
        ("docs.nope", *url): "the table 'docs' has no column 'nope' (it has 'id', 'file')",
        ("docs", *url): "give TABLE.COLUMN (SCHEMA.TABLE.COLUMN), or a model's column",
        ("tests.test_cli_backfill:OldDoc.file", *url): "is a StoreType column: make it a "
        "FileType column in the model first",
        ("tests.test_cli_backfill:Doc.nope", *url): "'Doc' is no mapped class with a column",
        ("docs.file",): "which database? give --database-url URL",
        ("docs.file", "--database-url", "nosuch://x"): "--database-url",
    }
    for args, message in cases.items():
        result = world.cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


@pytest.mark.parametrize("database", ["postgresql"])
def test_a_column_too_short_for_a_record_is_refused(world: World) -> None:
    """Still the StoreType's VARCHAR(128) on PostgreSQL: the command says how to change it."""
    world.insert({1: "f/a.txt"})
    done = world.cli("docs.file", "--database-url", world.sync_url)
    assert done.exit_code == 2
    assert "ALTER TABLE docs ALTER COLUMN file TYPE jsonb USING to_jsonb(file)" in " ".join(
        done.output.split()
    )
    assert world.rows() == {1: "f/a.txt"}
