"""``store backfill TARGET``: the size, content type and SHA-256 of the files a ``FileType``
column names by path only, written into its records.

A column switched from ``StoreType`` to ``FileType`` holds bare paths, which ``FileType`` reads
as records with those facts unknown. This command reads the rows in primary-key order, a page
(``--batch-size``) at a time. For each value lacking a fact it asks the storage (``info()``) and
streams the file once for its SHA-256 (unless the backend keeps one), then writes the full
records of the page in one transaction. Each UPDATE has the value it read in its WHERE
(compare-and-set), so a row the app changed meanwhile keeps what the app wrote. Complete rows
are skipped: a run that is killed resumes where it stopped when started again.

SQLAlchemy is an extra: it is imported when the command runs, never with the CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import click

from .._record import FileRecord
from .._storages import DEFAULT
from ..exceptions import NotFoundError, StoreError
from ._app import human_size, load_state, pick_storage, run, storage_option

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.sql.expression import TableClause

    from ..extension import StoreState

__all__ = ["Backfill", "Database", "Row", "Tally", "Target", "backfill"]

T = TypeVar("T")

#: The facts a record lacks until backfilled (``filename``, the client's name, is lost for a
#: bare path; ``stored_at`` is filled with the file's modification time, but not waited for).
_FACTS = ("size", "content_type", "sha256")


# --- what to fill: a table's column, or a model's -------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The column to fill in: its table, and what a model's ``FileType`` says of it."""

    #: As the user gave it, for messages: ``docs.file`` or ``myapp.models:Doc.file``.
    label: str
    table: str
    column: str
    schema: str | None = None
    #: The model column's ``FileType(storage=...)`` (None for a ``TABLE.COLUMN``).
    storage: str | None = None
    #: The Flask-SQLAlchemy bind of the model's table (``__bind_key__``).
    bind_key: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``TABLE.COLUMN``, ``SCHEMA.TABLE.COLUMN`` or ``module:Model.attribute``.

        :raises click.BadParameter: for anything else, or a model column that is no ``FileType``.
        """
        if ":" in text:
            return cls._of_model(text)
        *schema, table, column = text.split(".") if "." in text else ("", "")
        if len(schema) > 1 or not (table and column) or not all(schema):
            raise _bad(
                f"{text!r}: give TABLE.COLUMN (SCHEMA.TABLE.COLUMN), or a model's column as "
                f"module:Model.attribute"
            )
        return cls(text, table, column, schema[0] if schema else None)

    @classmethod
    def _of_model(cls, text: str) -> Target:
        from sqlalchemy import inspect
        from sqlalchemy.orm import ColumnProperty

        from .._sqla_filetype import FileType

        module_name, _, path = text.partition(":")
        model_name, _, attribute = path.rpartition(".")
        if not (module_name and model_name and attribute):
            raise _bad(f"{text!r}: give a model's column as module:Model.attribute")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as --app does: the app's modules are usually here
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise _bad(f"{text!r}: cannot import {module_name!r} ({exc})") from exc
        for name in model_name.split("."):
            found = getattr(found, name, None)
        mapper = inspect(found, raiseerr=False) if found is not None else None
        prop = getattr(mapper, "attrs", {}).get(attribute)
        if not isinstance(prop, ColumnProperty):
            raise _bad(f"{text!r}: {model_name!r} is no mapped class with a column {attribute!r}")
        column = prop.columns[0]
        if not isinstance(column.type, FileType):
            raise _bad(
                f"{text!r} is a {type(column.type).__name__} column: make it a FileType column "
                f"in the model first (see 'From StoreType to FileType' in the SQLAlchemy guide)"
            )
        table: Any = column.table
        return cls(
            text,
            table.name,
            str(column.name),
            table.schema,
            column.type.storage,
            table.metadata.info.get("bind_key"),
        )


def _bad(message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint="TARGET")


# --- the database, sync or async ------------------------------------------------------------------


class Database:
    """An engine, sync or async, running sync functions of a ``Connection``: in a worker
    thread for a sync engine, through ``AsyncConnection.run_sync`` for an async one."""

    def __init__(self, engine: Engine | AsyncEngine, *, owned: bool = True) -> None:
        self.engine = engine
        self.owned = owned

    @classmethod
    def of_url(cls, url: str) -> Database:
        """An engine for ``url``, async when its driver is (``sqlite+aiosqlite``,
        ``postgresql+asyncpg``).

        :raises click.UsageError: for a URL SQLAlchemy cannot use (naming a missing driver).
        """
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
        from sqlalchemy.ext.asyncio import create_async_engine

        try:
            parsed = make_url(url)
            if getattr(parsed.get_dialect(), "is_async", False):
                return cls(create_async_engine(parsed))
            return cls(create_engine(parsed))
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise click.BadParameter(f"{exc}", param_hint="--database-url") from exc

    async def read(self, func: Callable[[Connection], T]) -> T:
        return await self._call(func, write=False)

    async def write(self, func: Callable[[Connection], T]) -> T:
        """``func`` in a transaction, committed when it returns."""
        return await self._call(func, write=True)

    async def _call(self, func: Callable[[Connection], T], *, write: bool) -> T:
        from sqlalchemy.ext.asyncio import AsyncEngine

        engine = self.engine
        if isinstance(engine, AsyncEngine):
            async with engine.begin() if write else engine.connect() as connection:
                return await connection.run_sync(func)

        def in_thread() -> T:
            with engine.begin() if write else engine.connect() as connection:
                return func(connection)

        return await anyio.to_thread.run_sync(in_thread)

    async def aclose(self) -> None:
        from sqlalchemy.ext.asyncio import AsyncEngine

        if not self.owned:
            return
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
        else:
            await anyio.to_thread.run_sync(self.engine.dispose)


@dataclass
class _Column:
    """The target column as the database has it (reflected): the query builder's input."""

    table: TableClause
    keys: list[str]
    #: JSON or JSONB: parsed JSON goes in, a JSON string is a bare path.
    is_json: bool
    json_type: Any = None

    @classmethod
    def reflect(cls, connection: Connection, target: Target) -> _Column:
        """:raises click.UsageError: for no such table or column, no primary key, or a
        column too short for a record."""
        from sqlalchemy import JSON, Text, column, inspect, table

        found = inspect(connection)
        name = f"{target.schema}.{target.table}" if target.schema else target.table
        if not found.has_table(target.table, schema=target.schema):
            raise click.UsageError(f"{target.label}: the database has no table {name!r}")
        columns = {c["name"]: c for c in found.get_columns(target.table, schema=target.schema)}
        if target.column not in columns:
            raise click.UsageError(
                f"{target.label}: the table {name!r} has no column {target.column!r} (it has "
                f"{', '.join(map(repr, columns))})"
            )
        keys = list(
            found.get_pk_constraint(target.table, schema=target.schema)["constrained_columns"]
        )
        if not keys:
            raise click.UsageError(
                f"{target.label}: the table {name!r} has no primary key, and backfill finds each "
                f"row again by it: add one"
            )
        kind = columns[target.column]["type"]
        length = getattr(kind, "length", None)
        if length and connection.dialect.name != "sqlite":  # SQLite keeps any length
            change = f"ALTER TABLE {name} ALTER COLUMN {target.column} TYPE"
            raise click.UsageError(
                f"{target.label}: the column is {kind}, too short for a record: change its type "
                f"first ({change} jsonb USING to_jsonb({target.column}) on PostgreSQL, "
                f"{change} TEXT elsewhere)"
            )
        is_json = isinstance(kind, JSON)
        clause = table(
            target.table,
            *(column(k) for k in keys),
            column(target.column, Text()),
            schema=target.schema,
        )
        return cls(clause, keys, is_json, kind if is_json else None)


# --- one row --------------------------------------------------------------------------------------


@dataclass
class Row:
    """A row's value as read: its primary key, the text compared on write, its records."""

    key: tuple[Any, ...]
    old: str
    #: ``"path"`` (a bare path), ``"record"`` or ``"list"``: how it is written back.
    shape: str
    records: list[FileRecord]
    #: Why the value cannot be filled in (not a record, a storage the app does not have).
    error: str | None = None


def _is_complete(record: FileRecord) -> bool:
    return all(getattr(record, fact) is not None for fact in _FACTS)


def parse_value(text: str, *, is_json: bool, storage: str) -> tuple[str, list[FileRecord]]:
    """(its shape, its records) of a column's value as text, the way ``FileType`` reads it:
    a record's JSON object, a list of them, or a bare path (what ``StoreType`` wrote; in a
    JSON column, a JSON string).

    :raises StoreError: for JSON that is no record.
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = text  # not JSON: a bare path
    if is_json:
        if data is None:
            return "record", []
        if isinstance(data, str):
            return "path", [FileRecord.from_json(data, storage)]
    elif not (isinstance(data, dict) or _records_list(data)):
        # A cleaned name may be "[1]" or "12", never "{…}": anything else is a bare path.
        return "path", [FileRecord.from_json(text, storage)]
    if isinstance(data, list):
        return "list", [FileRecord.from_json(item, storage) for item in data]
    return "record", [FileRecord.from_json(data, storage)]


def _records_list(data: Any) -> bool:
    return isinstance(data, list) and all(
        isinstance(i, dict) and isinstance(i.get("path"), str) for i in data
    )


def _to_text(row: Row, records: Sequence[FileRecord]) -> str:
    data: Any = [r.to_json() for r in records] if row.shape == "list" else records[0].to_json()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))  # as FileType writes


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a backfill did so far."""

    #: Rows read (with a value).
    rows: int = 0
    #: Rows written (in a dry run: that would be).
    filled: int = 0
    complete: int = 0
    #: Bytes streamed for checksums (in a dry run: to stream).
    read: int = 0
    #: ``"table id=3"`` of each row the app changed between our read and our write.
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: In a dry run, one line per row that would change.
    would: list[str] = field(default_factory=list)


class Backfill:
    """Fills in one column's records, a page of rows at a time: :meth:`page` reads the next
    rows in primary-key order, :meth:`compute` gives the new value of each incomplete one, and
    :meth:`write` writes them, compare-and-set, in one transaction; :meth:`run` does it all."""

    def __init__(
        self,
        database: Database,
        column: _Column,
        target: Target,
        storages: dict[str, StoreState[Any]],
        storage: str,
        *,
        batch_size: int = 100,
        jobs: int = 4,
        dry_run: bool = False,
    ) -> None:
        self.database = database
        self.column = column
        self.target = target
        self.storages = storages
        self.storage = storage
        self.batch_size = batch_size
        self.jobs = jobs
        self.dry_run = dry_run
        self.tally = Tally()

    @classmethod
    async def open(
        cls,
        database: Database,
        target: Target,
        storages: dict[str, StoreState[Any]],
        storage: str,
        **options: Any,
    ) -> Backfill:
        """:raises click.UsageError: as :meth:`_Column.reflect`."""
        column = await database.read(lambda c: _Column.reflect(c, target))
        return cls(database, column, target, storages, storage, **options)

    def _name(self, key: tuple[Any, ...]) -> str:
        pairs = ", ".join(f"{k}={v!r}" for k, v in zip(self.column.keys, key, strict=True))
        return f"{self.target.table} {pairs}" if len(key) == 1 else f"{self.target.table} ({pairs})"

    # --- reading ----------------------------------------------------------------------------------

    async def count(self) -> int:
        from sqlalchemy import func, select

        c = self.column
        query = (
            select(func.count())
            .select_from(c.table)
            .where(c.table.c[self.target.column].is_not(None))
        )
        return int(await self.database.read(lambda conn: conn.execute(query).scalar_one()))

    async def page(self, after: tuple[Any, ...] | None) -> list[Row]:
        """The next ``batch_size`` rows with a value, after the primary key ``after``."""
        from sqlalchemy import Text, cast, select, tuple_

        c = self.column
        keys = [c.table.c[k] for k in c.keys]
        value = c.table.c[self.target.column]
        query = (
            select(*keys, cast(value, Text))
            .where(value.is_not(None))
            .order_by(*keys)
            .limit(self.batch_size)
        )
        if after is not None:
            query = query.where(
                tuple_(*keys) > tuple_(*after) if len(keys) > 1 else keys[0] > after[0]
            )
        found = await self.database.read(lambda conn: list(conn.execute(query)))
        return [self._row(tuple(r[:-1]), r[-1]) for r in found]

    def _row(self, key: tuple[Any, ...], text: str) -> Row:
        try:
            shape, records = parse_value(text, is_json=self.column.is_json, storage=self.storage)
        except StoreError as exc:
            return Row(key, text, "record", [], f"the value is no file record: {exc}")
        unknown = sorted({r.storage for r in records} - set(self.storages))
        if unknown:
            return Row(
                key,
                text,
                shape,
                records,
                f"it names the storage {unknown[0]!r}, which this app does not have (it has "
                f"{', '.join(map(repr, self.storages))})",
            )
        return Row(key, text, shape, records)

    # --- the files --------------------------------------------------------------------------------

    async def compute(self, rows: list[Row]) -> list[tuple[Row, str]]:
        """The new value of each row that lacks a fact (``jobs`` files at once);
        complete, missing and failed rows are counted in :attr:`tally`."""
        limiter = anyio.CapacityLimiter(self.jobs)
        updates: list[tuple[Row, str]] = []

        async def one(row: Row) -> None:
            new = await self._fill_row(row, limiter)
            if new is not None:
                updates.append((row, new))

        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(one, row)
        self.tally.rows += len(rows)
        order = {id(row): i for i, row in enumerate(rows)}
        updates.sort(key=lambda u: order[id(u[0])])
        return updates

    async def _fill_row(self, row: Row, limiter: anyio.CapacityLimiter) -> str | None:
        tally, name = self.tally, self._name(row.key)
        if row.error is not None:
            tally.failed.append(f"{name}: {row.error}")
            return None
        if all(_is_complete(r) for r in row.records):
            tally.complete += 1
            return None
        records, filled = list(row.records), False
        for i, record in enumerate(records):
            if _is_complete(record):
                continue
            async with limiter:
                try:
                    records[i] = await self._fill(record, bare=row.shape == "path")
                    filled = True
                except NotFoundError:
                    tally.missing.append(
                        f"{name}: {record.path!r} is not in the storage {record.storage!r}"
                    )
                except StoreError as exc:
                    tally.failed.append(f"{name}: {record.path!r}: {exc}")
        if not filled:
            return None  # every file it names is missing, or failed
        if self.dry_run:
            tally.would.append(f"{name}: {_describe(records, row.records)}")
        return _to_text(row, records)

    async def _fill(self, record: FileRecord, *, bare: bool) -> FileRecord:
        """``record`` with its missing facts, from the storage it names.

        :raises NotFoundError: if the file is not there.
        """
        state = self.storages[record.storage]
        provider = state.provider_class(record.path)
        info = await provider.info()
        size = record.size if record.size is not None else info.size
        sha256 = record.sha256 or info.sha256  # an S3 object stored with its checksum has one
        if sha256 is None:
            if self.dry_run:
                self.tally.read += info.size
            else:
                sha256, size = await self._digest(provider, state.config.chunk_size)
        # A bare path's type was a guess from its name: the backend's (S3's stored
        # Content-Type) is what the file is served with.
        content_type = (None if bare else record.content_type) or info.content_type
        return dataclasses.replace(
            record,
            size=size,
            content_type=content_type or record.content_type,
            sha256=sha256,
            stored_at=record.stored_at or info.modified,
        )

    async def _digest(self, provider: Any, chunk_size: int) -> tuple[str, int]:
        """The SHA-256 and size of a stored file, read once, a chunk at a time."""
        sha, size = hashlib.sha256(), 0
        async with provider.open() as f:
            while chunk := await f.read(chunk_size):
                sha.update(chunk)
                size += len(chunk)
        self.tally.read += size
        return sha.hexdigest(), size

    # --- writing ----------------------------------------------------------------------------------

    async def write(self, updates: list[tuple[Row, str]]) -> None:
        """Write the new values in one transaction, each only where the row still holds the
        value read (a row changed meanwhile is counted in ``tally.changed``, left as it is)."""
        if self.dry_run or not updates:
            self.tally.filled += len(updates)
            return
        from sqlalchemy import Text, and_, cast, literal, update

        c = self.column
        value = c.table.c[self.target.column]
        statements = []
        for row, new in updates:
            match = [c.table.c[k] == v for k, v in zip(c.keys, row.key, strict=True)]
            written: Any = literal(new, Text())
            if c.is_json and c.json_type is not None:
                written = cast(written, c.json_type)
            where = and_(*match, cast(value, Text) == row.old)
            statements.append((row, update(c.table).where(where).values({value.name: written})))

        def write_all(connection: Connection) -> list[Row]:
            return [row for row, s in statements if connection.execute(s).rowcount == 0]

        changed = await self.database.write(write_all)
        self.tally.filled += len(updates) - len(changed)
        self.tally.changed.extend(self._name(row.key) for row in changed)

    async def run(self, on_page: Callable[[Tally, int], object] = lambda t, n: None) -> Tally:
        """Every page, each written before the next is read; ``on_page(tally, total)`` after
        each one's commit."""
        total = await self.count()
        after: tuple[Any, ...] | None = None
        while rows := await self.page(after):
            after = rows[-1].key
            await self.write(await self.compute(rows))
            on_page(self.tally, total)
        return self.tally


def _describe(new: list[FileRecord], old: list[FileRecord]) -> str:
    parts = []
    for n, o in zip(new, old, strict=True):
        if n != o:
            size = human_size(n.size) if n.size is not None else "?"
            parts.append(f"{n.path} ({size}, {n.content_type})")
    return ", ".join(parts)


# --- the command ----------------------------------------------------------------------------------


def _app_of(ctx: click.Context) -> Any:
    """The app the command runs for (Flask's and Quart's ScriptInfo hand out the one loaded)."""
    load: Callable[[], Any] | None = getattr(ctx.find_root().obj, "load_app", None)
    return load() if load is not None else None


def _database(ctx: click.Context, url: str | None, target: Target) -> Database:
    """The database of ``--database-url``, else the app's: its Flask-SQLAlchemy engine for the
    target's bind, else its ``SQLALCHEMY_DATABASE_URI`` (``SQLALCHEMY_BINDS[bind]``)."""
    if url:
        return Database.of_url(url)
    app = _app_of(ctx)
    extension: Any = getattr(app, "extensions", {}).get("sqlalchemy")
    if type(extension).__module__.startswith("flask_sqlalchemy"):
        # Its engine, options and all (it resolves a relative SQLite path in instance_path).
        with app.app_context():
            engines = extension.engines
        if target.bind_key not in engines:
            raise click.UsageError(
                f"{target.label}: Flask-SQLAlchemy has no bind {target.bind_key!r} (it has "
                f"{', '.join(map(repr, engines))})"
            )
        return Database(engines[target.bind_key], owned=False)
    config = getattr(app, "config", {})
    found: Any = (
        (config.get("SQLALCHEMY_BINDS") or {}).get(target.bind_key)
        if target.bind_key
        else config.get("SQLALCHEMY_DATABASE_URI")
    )
    if isinstance(found, dict):
        found = found.get("url")
    if not found:
        raise click.UsageError(
            "which database? give --database-url URL (sqlite:///app.db, "
            "postgresql+psycopg://user@host/db, postgresql+asyncpg://…), or set "
            "SQLALCHEMY_DATABASE_URI in the app's config"
        )
    return Database.of_url(str(found))


def _bare_storage(state: StoreState[Any], option: str | None, target: Target) -> str:
    """The storage of the column's bare paths: ``--storage``, else the model's column's.

    :raises click.UsageError: if the two differ, or, for a ``TABLE.COLUMN`` of an app with
        several storages, if ``--storage`` is not given (the same path may be in more than one:
        filling in another storage's file would name the wrong file).
    """
    if option is not None:
        picked = pick_storage(state, option).name
        if target.storage is not None and target.storage != picked:
            raise click.UsageError(
                f"{target.label} keeps its files in the storage {target.storage!r}, not "
                f"{picked!r}: leave --storage out"
            )
        return picked
    if target.storage is not None:
        return pick_storage(state, target.storage).name
    if len(state.storages) > 1:
        raise click.UsageError(
            f"this app has several storages ({', '.join(map(repr, state.storages))}): say which "
            f"one the paths of {target.label} are in with --storage NAME, or name the model's "
            f"column (module:Model.attribute)"
        )
    return DEFAULT


@click.command()
@click.argument("target", metavar="TARGET")
@click.option(
    "--database-url",
    "database_url",
    metavar="URL",
    help="The database (sqlite:///app.db, postgresql+psycopg://…, or an async driver's: "
    "sqlite+aiosqlite://…, postgresql+asyncpg://…). Default: the app's Flask-SQLAlchemy "
    "engine, or its SQLALCHEMY_DATABASE_URI.",
)
@storage_option(
    "The storage a bare path is in (default: the model column's FileType(storage=...), else "
    "'default'). A record's own storage is always its own."
)
@click.option(
    "--batch-size",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Rows read, filled and committed at a time.",
)
@click.option(
    "--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="Files read at once."
)
@click.option("--dry-run", is_flag=True, help="Say which rows would change; write nothing.")
@click.option(
    "--missing-ok", is_flag=True, help="Exit with status 0 even if some files are missing."
)
@click.pass_context
def backfill(
    ctx: click.Context,
    target: str,
    database_url: str | None,
    storage: str | None,
    batch_size: int,
    jobs: int,
    dry_run: bool,
    missing_ok: bool,
) -> None:
    """Fill in the size, content type and SHA-256 of the files a FileType column names by
    path only (what a StoreType column wrote).

    TARGET is the model's column, module:Model.attribute (myapp.models:Doc.file), whose
    FileType says the storage; or TABLE.COLUMN (docs.file) with --storage NAME for the
    paths. Each file is read once, streamed, for its SHA-256 (not at all where the backend
    keeps one, as S3 does for objects stored with a checksum); its size, content type and
    modification time come from the storage. The row's value becomes the full record, path
    and storage unchanged.

    Rows are read in primary-key order and written --batch-size at a time, each batch one
    transaction; complete rows are skipped, so a run that stopped (killed, Ctrl-C) resumes
    when started again. A row is written only if it still holds the value read: one the app
    changed meanwhile keeps the app's value (reported as changed). Missing files are named
    with their row's primary key and left as they are; the exit status is then 1, unless
    --missing-ok.
    """
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise click.ClickException(
            "backfill needs SQLAlchemy: pip install 'async_store[sqlalchemy]'"
        ) from exc
    state = load_state(ctx)
    parsed = Target.parse(target)
    bare = _bare_storage(state, storage, parsed)
    database = _database(ctx, database_url, parsed)
    options = {"batch_size": batch_size, "jobs": jobs, "dry_run": dry_run}
    tally = Tally()

    def progress(now: Tally, total: int) -> None:
        read = f"{human_size(now.read)} {'to read' if dry_run else 'read'}"
        verb = "would fill" if dry_run else "filled"
        click.echo(
            f"{now.rows} of {total} rows: {verb} {now.filled}, {now.complete} complete, "
            f"{len(now.missing)} missing, {len(now.changed)} changed, {len(now.failed)} failed "
            f"({read})",
            err=True,
        )

    async def main() -> None:
        nonlocal tally
        try:
            job = await Backfill.open(database, parsed, state.storages, bare, **options)
            tally = job.tally
            await job.run(progress)
        finally:
            await database.aclose()

    try:
        run([s.provider_class for s in state.storages.values()], main)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"the database failed: {exc}") from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo(f"interrupted after filling {tally.filled} rows: run it again to resume")
        raise SystemExit(130) from None
    _summary(tally, parsed.label, dry_run=dry_run)
    if tally.failed or (tally.missing and not missing_ok):
        raise SystemExit(1)


def _summary(tally: Tally, label: str, *, dry_run: bool) -> None:
    for line in tally.would:
        click.echo(f"would fill: {line}")
    if dry_run:
        click.echo(
            f"would fill {tally.filled} rows of {label} ({human_size(tally.read)} to read), "
            f"{tally.complete} already complete, {len(tally.missing)} files missing, "
            f"{len(tally.failed)} failed; nothing was written (--dry-run)"
        )
    else:
        click.echo(
            f"filled {tally.filled} rows of {label} ({human_size(tally.read)} read), skipped "
            f"{tally.complete} already complete and {len(tally.changed)} changed meanwhile, "
            f"{len(tally.missing)} files missing, {len(tally.failed)} failed"
        )
    for line in tally.missing:
        click.echo(f"missing: {line} (the row is left as it is)")
    for line in tally.changed:
        click.echo(f"changed: {line} was changed by the app meanwhile (left as the app wrote it)")
    for line in tally.failed:
        click.echo(f"failed: {line}")
