"""The database ``store backfill`` reads and writes: which one, sync or async, and its
statements on the target column.

The engine is ``--database-url``'s, else the app's (its Flask-SQLAlchemy engine, else its
``SQLALCHEMY_DATABASE_URI``). Rows are read a page at a time in primary-key order; each new
value is written only where the row still holds the value read (compare-and-set), all of a page
in one transaction. Imported only when ``backfill`` runs: SQLAlchemy is an extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import click
from sqlalchemy import Text, and_, cast, create_engine, func, literal, select, tuple_, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy.engine import Connection, Engine

    from ._sqla_target import Column, Target

__all__ = ["Database", "Key"]

T = TypeVar("T")

#: A row's primary key, its columns in order.
Key = tuple[Any, ...]


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
        try:
            parsed = make_url(url)
            if getattr(parsed.get_dialect(), "is_async", False):
                return cls(create_async_engine(parsed))
            return cls(create_engine(parsed))
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise click.BadParameter(f"{exc}", param_hint="--database-url") from exc

    @classmethod
    def of_app(cls, app: Any, target: Target) -> Database:
        """The app's database for ``target``: its Flask-SQLAlchemy engine for the target's
        bind, else its ``SQLALCHEMY_DATABASE_URI`` (``SQLALCHEMY_BINDS[bind]``).

        :raises click.UsageError: for no such bind, or no database in the app's config.
        """
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
            return cls(engines[target.bind_key], owned=False)
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
        return cls.of_url(str(found))

    # --- running functions of a connection --------------------------------------------------

    async def read(self, func: Callable[[Connection], T]) -> T:
        return await self._call(func, write=False)

    async def write(self, func: Callable[[Connection], T]) -> T:
        """``func`` in a transaction, committed when it returns."""
        return await self._call(func, write=True)

    async def _call(self, func: Callable[[Connection], T], *, write: bool) -> T:
        engine = self.engine
        if isinstance(engine, AsyncEngine):
            async with engine.begin() if write else engine.connect() as connection:
                return await connection.run_sync(func)

        def in_thread() -> T:
            with engine.begin() if write else engine.connect() as connection:
                return func(connection)

        return await anyio.to_thread.run_sync(in_thread)

    async def aclose(self) -> None:
        if not self.owned:
            return
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
        else:
            await anyio.to_thread.run_sync(self.engine.dispose)

    # --- the target column's statements -----------------------------------------------------

    async def count(self, column: Column) -> int:
        """The rows with a value."""
        query = select(func.count()).select_from(column.table).where(column.value.is_not(None))
        return int(await self.read(lambda conn: conn.execute(query).scalar_one()))

    async def page(self, column: Column, after: Key | None, limit: int) -> list[tuple[Key, str]]:
        """(primary key, value as text) of the next ``limit`` rows with a value, in primary-key
        order after the primary key ``after``."""
        keys = [column.table.c[k] for k in column.keys]
        query = (
            select(*keys, cast(column.value, Text))
            .where(column.value.is_not(None))
            .order_by(*keys)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                tuple_(*keys) > tuple_(*after) if len(keys) > 1 else keys[0] > after[0]
            )
        found = await self.read(lambda conn: list(conn.execute(query)))
        return [(tuple(r[:-1]), r[-1]) for r in found]

    async def compare_and_set(
        self, column: Column, updates: Sequence[tuple[Key, str, str]]
    ) -> list[Key]:
        """Write each (primary key, value read as text, new value) in one transaction, only
        where the row still holds the value read; the keys of the rows that did not."""
        value = column.value
        statements = []
        for key, old, new in updates:
            match = [column.table.c[k] == v for k, v in zip(column.keys, key, strict=True)]
            written: Any = literal(new, Text())
            if column.is_json and column.json_type is not None:
                written = cast(written, column.json_type)
            where = and_(*match, cast(value, Text) == old)
            statement = update(column.table).where(where).values({value.name: written})
            statements.append((key, statement))

        def write_all(connection: Connection) -> list[Key]:
            return [key for key, s in statements if connection.execute(s).rowcount == 0]

        return await self.write(write_all)
