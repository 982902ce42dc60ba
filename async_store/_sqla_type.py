"""``StoreType`` itself, and what its attributes hold: the column type and the value helpers the
session hooks share (``sqla.py``'s flush hooks, ``_sqla_bulk``'s statement hook).

The type does no I/O: it turns a saved provider or a relative path into the path the column
holds, and a loaded path into a provider of the column's storage. The helpers tell an upload
from a saved provider or a path, find a mapper's ``StoreType`` attributes, read the path a row
holds in the database, and refuse a provider of another storage.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import Column, Unicode, event, select, type_coerce
from sqlalchemy.types import TypeDecorator

from ._paths import clean_key, clean_location
from ._record import FileRecord
from ._storages import DEFAULT
from ._validate import Rules
from .exceptions import StoreError
from .extension import current_state
from .providers.base import Provider
from .sync import SyncProvider

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Result, Table
    from sqlalchemy.engine import Dialect
    from sqlalchemy.orm import InstanceState, Mapper
    from sqlalchemy.sql.elements import ColumnElement

    from .extension import StoreState

__all__ = ["StoreType"]


def _provider(value: Any) -> Provider | None:
    if isinstance(value, SyncProvider):
        return value.provider
    return value if isinstance(value, Provider) else None


class StoreType(TypeDecorator[Any]):
    """A column holding a stored file: the relative path in the database, a provider in Python.

    Assign anything ``store.Provider()`` accepts (a ``FileStorage``, a path, bytes, …), a provider
    of the column's storage, or the relative path of a file already stored there (kept as it
    is). Loaded values are providers of that storage in the current app (async in Quart, the
    sync shim in Flask); ``None`` stays ``None``.

    :param max_length: the column's length (``Unicode(max_length)``), 256 by default.
    :param location: the folder below the storage's ``PATH`` uploads are saved into.
    :param storage: the storage the column's files live in: ``'default'`` (the ``STORE_*``
        keys') or a name of ``STORE_STORAGES``, looked up in the current app when the column is
        used (the model may be declared before any app exists).
    :param validate: :class:`~async_store.Rules` of this column over its storage's, checked as
        each upload the flush stores streams in (a refusal fails the flush; nothing is kept).
    :raises StoreError: when used, if the current app has no storage of that name.
    """

    # Named by the module it is imported from, as before the split: Alembic writes
    # ``<__module__>.StoreType(...)`` into the migrations it generates.
    __module__ = "async_store.sqla"

    impl = Unicode
    cache_ok = True

    # ``storage`` is not keyword-only: SQLAlchemy builds the type's cache key from the
    # attributes named after __init__'s positional-or-keyword parameters only, and two columns
    # of two storages must not share a compiled statement's result processing.
    def __init__(
        self,
        max_length: int = 256,
        location: str | None = None,
        storage: str = DEFAULT,
        validate: Rules | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_length, **kwargs)
        if not isinstance(storage, str) or not storage:
            raise TypeError(f"StoreType(storage=...) takes a storage's name, not {storage!r}")
        if validate is not None and not isinstance(validate, Rules):
            raise TypeError(f"StoreType(validate=...) takes Rules(...), not {validate!r}")
        self.location = clean_location(location)
        self.storage = storage
        self.validate = validate
        #: "table.column" of each column of this type, for messages (see _attached).
        self._columns: tuple[str, ...] = ()

    def _state(self) -> StoreState:
        """The column's storage in the current app.

        :raises StoreError: outside an app context, or when the app has no such storage.
        """
        storages = current_state(self._where).storages
        found = storages.get(self.storage)
        if found is None:
            known = ", ".join(map(repr, storages))
            raise StoreError(
                f"{self._where} keeps its files in the storage {self.storage!r}, and this app "
                f"has no storage of that name (it has {known}): add {self.storage!r} to "
                f"app.config['STORE_STORAGES'], or give the column one of those names."
            )
        return found

    @property
    def _where(self) -> str:
        """How messages name the column."""
        if not self._columns:
            return f"a StoreType(storage={self.storage!r}) column"
        return f"the StoreType column {' / '.join(self._columns)}"

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, FileRecord):  # a direct upload's confirm(), another column's
            if value.storage != self.storage:
                raise StoreError(
                    f"{self._where} keeps files of the storage {self.storage!r}, and this "
                    f"record's file {value.path!r} is in {value.storage!r}"
                )
            value = value.path
        if isinstance(value, str):
            return clean_key(value)  # a file stored earlier: kept (Flask-Store stored NULL)
        provider = _provider(value)
        if provider is not None and provider.saved:
            return provider.relative_path
        raise unsaved_upload("StoreType", value, "a saved provider or a relative path")

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._state().Provider(value)

    def compare_values(self, x: Any, y: Any) -> bool:
        return _key_of(x) == _key_of(y) if _key_of(x) is not None else x is y


@event.listens_for(Column, "after_parent_attach")
def _attached(column: Column[Any], table: Table) -> None:
    """A ``StoreType`` learns the name of each column it is the type of, for its messages."""
    if isinstance(column.type, StoreType):
        # A new tuple: TypeDecorator.copy() shares the instance dict's values with the copy.
        column.type._columns = (*column.type._columns, f"{table.name}.{column.name}")


def _key_of(value: Any) -> str | None:
    value = value.path if isinstance(value, FileRecord) else value
    if isinstance(value, str):
        return value
    provider = _provider(value)
    return provider.relative_path if provider is not None and provider.saved else None


def _stored_path(value: Any) -> str | None:
    """The path ``value`` puts in the column (as ``process_bind_param`` writes it), else None."""
    return clean_key(value) if isinstance(value, str) else _key_of(value)


def _is_upload(value: Any) -> bool:
    if value is None or isinstance(value, (str, FileRecord)):
        return False
    provider = _provider(value)
    return provider is None or not provider.saved


# --- which attributes hold files ------------------------------------------------------------


_Column = tuple[str, "ColumnElement[Any]", Any]
_columns: weakref.WeakKeyDictionary[Mapper[Any], dict[type, list[_Column]]] = (
    weakref.WeakKeyDictionary()
)


def typed_columns(mapper: Mapper[Any], kind: type) -> list[_Column]:
    """(attribute key, column, type) of each column of type ``kind`` that ``mapper`` maps."""
    by_kind = _columns.setdefault(mapper, {})
    cached = by_kind.get(kind)
    if cached is None:
        cached = by_kind[kind] = [
            (prop.key, prop.columns[0], prop.columns[0].type)
            for prop in mapper.column_attrs
            if isinstance(prop.columns[0].type, kind)
        ]
    return cached


def _store_columns(mapper: Mapper[Any]) -> list[tuple[str, ColumnElement[Any], StoreType]]:
    """(attribute key, column, type) of each ``StoreType`` column ``mapper`` maps."""
    return typed_columns(mapper, StoreType)


def unsaved_upload(kind: str, value: Any, needs: str) -> StoreError:
    """What a column of ``kind`` raises for an upload given where only stored files go."""
    return StoreError(
        f"a {kind} column got an unsaved {type(value).__name__}: uploads are saved when "
        f"assigned to a mapped attribute and flushed by a Session; an insert() or update() "
        f"statement needs {needs}."
    )


def _held(execute: Callable[[Any], Result[Any]], row: InstanceState[Any], key: str) -> str | None:
    """The path ``row`` holds for ``key`` in the database: what the session loaded, or, when it
    never loaded it (expired, deferred, or assigned before it was read), a query by primary key."""
    history = row.attrs[key].history
    if history.deleted:
        return _stored_path(history.deleted[0])
    if key in row.dict and not history.added:
        return _stored_path(row.dict[key])
    mapper = row.mapper
    column = type_coerce(mapper.attrs[key].class_attribute, Unicode())  # the path, no provider
    where = [c == v for c, v in zip(mapper.primary_key, row.identity or (), strict=True)]
    path: str | None = execute(select(column).where(*where)).scalar_one_or_none()
    return path


def _raise_other_storage(where: str, store: StoreState, provider: Provider) -> NoReturn:
    other = [s.name for s in store.storages.values() if isinstance(provider, s.provider_class)]
    whose = f"the storage {other[0]!r}" if other else "another app"
    raise StoreError(
        f"{where} keeps its files in the storage {store.name!r}, and {provider!r} is a provider "
        f"of {whose}: a column holds files of its own storage only. Assign the upload itself "
        f"(it is saved into {store.name!r} at the flush), a provider of "
        f"store[{store.name!r}], or the relative path of a file stored there."
    )
