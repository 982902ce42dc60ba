"""What ``store backfill`` fills: the ``TARGET`` a user names, and that column as the database
has it.

``TARGET`` is a model's column (``module:Model.attribute``, whose ``FileType`` says the storage
and whose table says the Flask-SQLAlchemy bind) or a table's (``TABLE.COLUMN``,
``SCHEMA.TABLE.COLUMN``). Either way the column is then reflected from the database, since
that, not the model, says what its values are (JSON or text) and how its rows are found again
(the primary key). Imported only when ``backfill`` runs: SQLAlchemy is an extra.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
import sqlalchemy as sa
from sqlalchemy import JSON, Text, inspect
from sqlalchemy.orm import ColumnProperty

from .._sqla_filetype import FileType

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.sql.expression import ColumnClause, TableClause

__all__ = ["Column", "Target"]


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


@dataclass
class Column:
    """The target column as the database has it (reflected): what the queries are built of."""

    table: TableClause
    #: The primary key's columns, in order: how a row is found again.
    keys: list[str]
    name: str
    #: JSON or JSONB: parsed JSON goes in, a JSON string is a bare path.
    is_json: bool
    json_type: Any = None

    @property
    def value(self) -> ColumnClause[Any]:
        return self.table.c[self.name]

    @classmethod
    def reflect(cls, connection: Connection, target: Target) -> Column:
        """:raises click.UsageError: for no such table or column, no primary key, or a
        column too short for a record."""
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
        clause = sa.table(
            target.table,
            *(sa.column(k) for k in keys),
            sa.column(target.column, Text()),
            schema=target.schema,
        )
        return cls(clause, keys, target.column, is_json, kind if is_json else None)
