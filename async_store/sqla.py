"""``StoreType``: a SQLAlchemy column that holds a stored file (the seed's ``FlaskStoreType``).

::

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        file = mapped_column(StoreType(128, location="docs"))
        signed = mapped_column(StoreType(storage="documents"))  # a storage of STORE_STORAGES

    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with Session() as session:
        doc = Doc(file=(await request.files)["f"])  # any upload Provider() accepts
        session.add(doc)
        await session.commit()                       # stored; the column holds 'docs/a.txt'
        doc.file.absolute_url                        # loaded rows give a provider

``expire_on_commit=False``: an expired attribute would be reloaded on access, which an
``AsyncSession`` cannot do (``MissingGreenlet``).

The column holds the relative path (``Unicode(max_length)``), so databases written by
Flask-Store stay readable; which storage holds the file is the column's (``storage=``), and the
hooks record each file with its storage, so a path is only ever deleted from the storage of the
column it was in. The type itself does no I/O; session events do:

* ``before_flush`` saves uploads assigned to a ``StoreType`` attribute (inside ``AsyncSession``'s
  greenlet the async provider is awaited with SQLAlchemy's ``await_``; a plain ``Session`` goes
  through the sync shim's loop) and puts the saved provider in their place;
* the mapper's ``before_delete``, which sees every row a flush deletes (``session.delete()`` and
  ``delete-orphan`` cascades alike), releases the path the row holds in the database;
* ``do_orm_execute`` reads the paths an ``update()`` or ``delete()`` statement run by the session
  replaces or removes (same criteria, same transaction, rows locked) and compares after it ran;
* ``_sqla_files`` deletes a transaction's saved files if it does not commit, and the released
  paths only once it has.

Loading needs an app context (the current app's Store gives the storage, by name: models are
declared before any app). Updating other columns never touches the file.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import Column, Unicode, event, inspect, select, tuple_, type_coerce
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Delete, Update
from sqlalchemy.sql.elements import BindParameter, ClauseElement, ColumnElement
from sqlalchemy.types import TypeDecorator

from ._paths import clean_key, clean_location
from ._sqla_files import Released, Saved, files, run
from ._storages import DEFAULT
from .exceptions import StoreError
from .extension import current_state
from .providers.base import Provider
from .sync import SyncProvider

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from sqlalchemy import Result, Select, Table
    from sqlalchemy.engine import Connection, Dialect
    from sqlalchemy.orm import InstanceState, ORMExecuteState, UOWTransaction

    from .extension import StoreState

__all__ = ["FlaskStoreType", "StoreType"]

#: Rows per ``IN (...)`` when a bulk statement's rows are looked up again.
_CHUNK = 500
#: session.info key: {row: (storage, path) of each file its before_flush saved for it}.
_SAVED_NOW = "async_store_saved_now"


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
    :raises StoreError: when used, if the current app has no storage of that name.
    """

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
        **kwargs: Any,
    ) -> None:
        super().__init__(max_length, **kwargs)
        if not isinstance(storage, str) or not storage:
            raise TypeError(f"StoreType(storage=...) takes a storage's name, not {storage!r}")
        self.location = clean_location(location)
        self.storage = storage
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
        if isinstance(value, str):
            return clean_key(value)  # a file stored earlier: kept (Flask-Store stored NULL)
        provider = _provider(value)
        if provider is not None and provider.saved:
            return provider.relative_path
        raise StoreError(
            f"a StoreType column got an unsaved {type(value).__name__}: uploads are saved when "
            f"assigned to a mapped attribute and flushed by a Session; an insert() or update() "
            f"statement needs a saved provider or a relative path."
        )

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


#: The seed's name.
FlaskStoreType = StoreType


def _key_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    provider = _provider(value)
    return provider.relative_path if provider is not None and provider.saved else None


def _stored_path(value: Any) -> str | None:
    """The path ``value`` puts in the column (as ``process_bind_param`` writes it), else None."""
    return clean_key(value) if isinstance(value, str) else _key_of(value)


def _is_upload(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return False
    provider = _provider(value)
    return provider is None or not provider.saved


# --- which attributes hold files ------------------------------------------------------------


_Column = tuple[str, "ColumnElement[Any]", "StoreType"]
_columns: weakref.WeakKeyDictionary[Mapper[Any], list[_Column]] = weakref.WeakKeyDictionary()


def _store_columns(mapper: Mapper[Any]) -> list[_Column]:
    """(attribute key, column, type) of each ``StoreType`` column ``mapper`` maps."""
    cached = _columns.get(mapper)
    if cached is None:
        cached = _columns[mapper] = [
            (prop.key, prop.columns[0], prop.columns[0].type)
            for prop in mapper.column_attrs
            if isinstance(prop.columns[0].type, StoreType)
        ]
    return cached


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


# --- rows a flush inserts, updates or deletes -------------------------------------------------


@event.listens_for(Session, "before_flush")
def _save_uploads(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    # Rows this flush deletes are left to _row_deleted: session.deleted does not hold the
    # orphans a delete-orphan cascade finds inside the flush, and an upload assigned to a row
    # that is being deleted is never stored.
    saved_now: dict[InstanceState[Any], list[Released]] = {}
    session.info[_SAVED_NOW] = saved_now
    uploads: list[tuple[InstanceState[Any], str, Any, StoreType, StoreState]] = []
    for obj in [*session.new, *session.dirty]:
        row = inspect(obj)
        for key, _, type_ in _store_columns(row.mapper):
            value = row.dict.get(key)
            changed = row.attrs[key].history.has_changes()
            if changed and row.has_identity:
                held = _held(session.execute, row, key)
                if held is not None and held != _stored_path(value):
                    files(session).old.append(Released(type_._state(), held))
            if _is_upload(value) or (changed and _provider(value) is not None):
                store = type_._state()
                _refuse_other_storages(row, key, store, value)
                if _is_upload(value):
                    uploads.append((row, key, value, type_, store))
    if not uploads:
        return
    _refuse_shared_providers((row, key, value) for row, key, value, _, _ in uploads)
    records = files(session)
    for row, key, value, type_, store in uploads:
        provider = _provider(value) or store.provider_class(value, type_.location)
        run(store, provider.save)
        records.new.append(Saved(store, provider))
        saved_now.setdefault(row, []).append(Released(store, provider.relative_path))
        setattr(row.obj(), key, store.Provider(provider.relative_path))


def _refuse_other_storages(
    row: InstanceState[Any], key: str, store: StoreState, value: Any
) -> None:
    """A provider assigned to a column is one of the column's storage: the row would otherwise
    name a file its storage does not hold (and deleting the row would delete another file)."""
    provider = _provider(value)
    if provider is None or isinstance(provider, store.provider_class):
        return
    _raise_other_storage(f"{row.mapper.class_.__name__}.{key}", store, provider)


def _raise_other_storage(where: str, store: StoreState, provider: Provider) -> NoReturn:
    other = [s.name for s in store.storages.values() if isinstance(provider, s.provider_class)]
    whose = f"the storage {other[0]!r}" if other else "another app"
    raise StoreError(
        f"{where} keeps its files in the storage {store.name!r}, and {provider!r} is a provider "
        f"of {whose}: a column holds files of its own storage only. Assign the upload itself "
        f"(it is saved into {store.name!r} at the flush), a provider of "
        f"store[{store.name!r}], or the relative path of a file stored there."
    )


def _refuse_shared_providers(uploads: Iterable[tuple[InstanceState[Any], str, Any]]) -> None:
    """One unsaved provider assigned twice would leave two rows sharing one file (deleting
    either row deletes it): refused before anything is stored."""
    seen: dict[int, str] = {}
    for row, key, value in uploads:
        provider = _provider(value)
        if provider is None:
            continue  # a FileStorage, bytes, a path…: each attribute stores its own copy
        where = f"{row.mapper.class_.__name__}.{key}"
        if id(provider) in seen:
            places = f"{seen[id(provider)]} and {where}"
            if seen[id(provider)] == where:
                places = f"{where} of two rows"
            raise StoreError(
                f"the same unsaved provider {provider!r} is assigned to {places}: a stored file "
                f"belongs to one row. Assign the upload itself to each (each then stores its "
                f"own copy), or give each its own store.Provider(...)."
            )
        seen[id(provider)] = where


@event.listens_for(Mapper, "before_delete")
def _row_deleted(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """Every row a flush deletes (``session.delete()``, a cascade, a ``delete-orphan``) releases
    the path it holds, and whatever this flush saved for it."""
    columns = _store_columns(mapper)
    row = inspect(target)
    session = row.session
    if not columns or session is None:
        return
    released = [
        Released(type_._state(), path)
        for key, _, type_ in columns
        if (path := _held(connection.execute, row, key))
    ]
    released += session.info.get(_SAVED_NOW, {}).get(row, [])
    files(session).old.extend(released)


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, flush_context: UOWTransaction) -> None:
    session.info.pop(_SAVED_NOW, None)


# --- update() and delete() statements run by a session --------------------------------------


@dataclass
class _Target:
    """The rows an ``update()`` or ``delete()`` statement may change, as the hook reads them."""

    name: str  # for messages: the class, or the table
    mapper: Mapper[Any] | None
    pk: list[ColumnElement[Any]]
    paths: list[tuple[str, ColumnElement[Any]]]  # (attribute or column key, what to select)
    storages: list[StoreState]  # each path's column's

    def select(self, *where: ColumnElement[bool], lock: bool) -> Select[Any]:
        query = select(*self.pk, *(type_coerce(e, Unicode()) for _, e in self.paths))
        query = query.where(*where)
        return query.with_for_update() if lock else query  # SQLite ignores FOR UPDATE

    def by_pk(self, pks: list[tuple[Any, ...]]) -> Iterator[ColumnElement[bool]]:
        """``pk IN (...)`` criteria, a chunk at a time."""
        it = iter(pks)
        while chunk := list(itertools.islice(it, _CHUNK)):
            if len(self.pk) == 1:
                yield self.pk[0].in_([values[0] for values in chunk])
            else:
                yield tuple_(*self.pk).in_(chunk)


def _target(execute_state: ORMExecuteState, dml: Update | Delete) -> _Target | None:
    mapper = execute_state.bind_mapper if execute_state.is_orm_statement else None
    found: list[tuple[str, ColumnElement[Any], ColumnElement[Any], StoreType]]
    if mapper is not None:
        found = [(k, c, mapper.attrs[k].class_attribute, t) for k, c, t in _store_columns(mapper)]
        name, pk = mapper.class_.__name__, list(mapper.primary_key)
    else:  # a Core statement on a Table, run by the session
        table: Any = dml.table
        columns = getattr(table, "c", ())
        found = [(c.key, c, c, c.type) for c in columns if isinstance(c.type, StoreType)]
        name, pk = str(getattr(table, "name", table)), list(getattr(table, "primary_key", ()))
    if isinstance(dml, Update):
        # What it sets: .values(...), and the parameter sets (executemany, by primary key).
        sets = [{_name(k): v for k, v in (dml._values or {}).items()}, *_param_sets(execute_state)]
        found = [(k, c, e, t) for k, c, e, t in found if any(k in v or c.key in v for v in sets)]
        for (key, column, _, type_), values in itertools.product(found, sets):
            value = values.get(key, values.get(str(column.key)))
            value = value.value if isinstance(value, BindParameter) else value
            if isinstance(value, ClauseElement):
                continue
            if _is_upload(value):
                raise StoreError(
                    f"update({name}) sets {name}.{key} to an unsaved {type(value).__name__}: "
                    f"an update() statement stores no uploads (one file cannot belong to many "
                    f"rows). Assign the upload to each row's attribute and flush, or save it "
                    f"first (store.Provider(upload).save()) and set its relative_path."
                )
            provider = _provider(value)
            store = type_._state()
            if provider is not None and not isinstance(provider, store.provider_class):
                _raise_other_storage(f"update({name}) sets {name}.{key}, which", store, provider)
    if not found or not pk:
        return None  # nothing that holds a file changes, or no way to find the rows again
    # Each column's storage, looked up before the statement runs (an unknown one stops it).
    storages = [type_._state() for _, _, _, type_ in found]
    return _Target(name, mapper, pk, [(k, e) for k, _, e, _ in found], storages)


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key.key)


def _param_sets(execute_state: ORMExecuteState) -> list[dict[str, Any]]:
    params: Any = execute_state.parameters
    if isinstance(params, list):
        return [dict(p) for p in params]
    return [dict(params)] if params else [{}]


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(execute_state: ORMExecuteState) -> Result[Any] | None:
    """A bulk ``update()``/``delete()`` of rows whose columns hold files: the paths it replaces
    or removes are released like the flush's (deleted after the commit, kept on rollback)."""
    if not (execute_state.is_update or execute_state.is_delete):
        return None
    dml: Any = execute_state.statement
    if not isinstance(dml, (Update, Delete)):
        dml = getattr(dml, "element", None)  # select().from_statement(update(...))
    if not isinstance(dml, (Update, Delete)):
        return None
    target = _target(execute_state, dml)
    if target is None:
        return None
    session = execute_state.session
    options = {k: v for k, v in execute_state.execution_options.items() if k == "autoflush"}

    def rows(query: Select[Any], params: dict[str, Any]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        # The pre-select autoflushes (an ORM select) when the statement would: it sees what the
        # statement will change.
        found = session.execute(
            query, params, execution_options=options, bind_arguments=execute_state.bind_arguments
        )
        n = len(target.pk)
        return {tuple(r[:n]): tuple(r[n:]) for r in found}

    before: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    param_sets = _param_sets(execute_state)
    if target.mapper is not None and isinstance(dml, Update) and execute_state.is_executemany:
        # ORM bulk UPDATE by primary key: each parameter set names its row.
        keys = [target.mapper.get_property_by_column(c).key for c in target.mapper.primary_key]
        pks = [tuple(p.get(k) for k in keys) for p in param_sets]
        for where in target.by_pk(pks):
            before.update(rows(target.select(where, lock=True), {}))
    else:
        criteria = [] if dml.whereclause is None else [dml.whereclause]
        for params in param_sets:
            before.update(rows(target.select(*criteria, lock=True), params))
    if not before:
        return None
    result = execute_state.invoke_statement()
    if getattr(result, "returns_rows", True):
        result = result.freeze()()  # read before the lookups below share its connection
    after: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for where in target.by_pk(list(before)):
        after.update(rows(target.select(where, lock=False), {}))
    released: list[Released] = []
    for pk, was in before.items():
        now = after.get(pk)
        if now is None:  # deleted, or an UPDATE changed its primary key (its files are kept)
            now = (None,) * len(was) if isinstance(dml, Delete) else was
        elif target.mapper is not None and was != now:
            _refresh(session, target, pk, now)
        for store, path, new in zip(target.storages, was, now, strict=True):
            if path is not None and path != new:
                released.append(Released(store, path))
    files(session).old.extend(released)
    return result


def _refresh(session: Session, target: _Target, pk: tuple[Any, ...], now: tuple[Any, ...]) -> None:
    """Give a row the session holds the paths the statement wrote, whatever
    ``synchronize_session`` did: a stale path would be released later instead of the real one."""
    assert target.mapper is not None
    obj = session.identity_map.get(target.mapper.identity_key_from_primary_key(pk))
    if obj is None:
        return
    row = inspect(obj)
    for (key, _), store, path in zip(target.paths, target.storages, now, strict=True):
        if key in row.dict and not row.attrs[key].history.has_changes():
            set_committed_value(obj, key, None if path is None else store.Provider(path))
