"""``StoreType``: a SQLAlchemy column that holds a stored file (the seed's ``FlaskStoreType``).

::

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        file = mapped_column(StoreType(128, location="docs"))

    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with Session() as session:
        doc = Doc(file=(await request.files)["f"])  # any upload Provider() accepts
        session.add(doc)
        await session.commit()                       # stored; the column holds 'docs/a.txt'
        doc.file.absolute_url                        # loaded rows give a provider

``expire_on_commit=False``: an expired attribute would be reloaded on access, which an
``AsyncSession`` cannot do (``MissingGreenlet``).

The column holds the relative path (``Unicode(max_length)``), so databases written by
Flask-Store stay readable. The type itself does no I/O; session events do:

* ``before_flush`` saves uploads assigned to a ``StoreType`` attribute (inside ``AsyncSession``'s
  greenlet the async provider is awaited with SQLAlchemy's ``await_``; a plain ``Session`` goes
  through the sync shim's loop) and puts the saved provider in their place;
* the mapper's ``before_delete``, which sees every row a flush deletes (``session.delete()`` and
  ``delete-orphan`` cascades alike), releases the path the row holds in the database;
* ``do_orm_execute`` reads the paths an ``update()`` or ``delete()`` statement run by the session
  replaces or removes (same criteria, same transaction, rows locked) and compares after it ran;
* ``_sqla_files`` deletes a transaction's saved files if it does not commit, and the released
  paths only once it has.

Loading needs an app context (the current app's Store gives the provider class). Updating other
columns never touches the file.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Unicode, event, inspect, select, tuple_, type_coerce
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Delete, Update
from sqlalchemy.sql.elements import BindParameter, ClauseElement, ColumnElement
from sqlalchemy.types import TypeDecorator

from ._paths import clean_key, clean_location
from ._sqla_files import files, run, state
from .exceptions import StoreError
from .providers.base import Provider
from .sync import SyncProvider

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from sqlalchemy import Result, Select
    from sqlalchemy.engine import Connection, Dialect
    from sqlalchemy.orm import InstanceState, ORMExecuteState, UOWTransaction

__all__ = ["FlaskStoreType", "StoreType"]

#: Rows per ``IN (...)`` when a bulk statement's rows are looked up again.
_CHUNK = 500
#: session.info key: {row: paths saved for it by this flush's before_flush}.
_SAVED_NOW = "async_store_saved_now"


def _provider(value: Any) -> Provider | None:
    if isinstance(value, SyncProvider):
        return value.provider
    return value if isinstance(value, Provider) else None


class StoreType(TypeDecorator[Any]):
    """A column holding a stored file: the relative path in the database, a provider in Python.

    Assign anything ``store.Provider()`` accepts (a ``FileStorage``, a path, bytes, …), a provider,
    or the relative path of a file already stored (kept as it is). Loaded values are providers of
    the current app (async in Quart, the sync shim in Flask); ``None`` stays ``None``.

    :param max_length: the column's length (``Unicode(max_length)``), 256 by default.
    :param location: the folder below ``STORE_PATH`` uploads are saved into.
    """

    impl = Unicode
    cache_ok = True

    def __init__(self, max_length: int = 256, location: str | None = None, **kwargs: Any) -> None:
        super().__init__(max_length, **kwargs)
        self.location = clean_location(location)

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
        return state().Provider(value)

    def compare_values(self, x: Any, y: Any) -> bool:
        return _key_of(x) == _key_of(y) if _key_of(x) is not None else x is y


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
    saved_now: dict[InstanceState[Any], list[str]] = {}
    session.info[_SAVED_NOW] = saved_now
    uploads: list[tuple[InstanceState[Any], str, StoreType, Any]] = []
    for obj in [*session.new, *session.dirty]:
        row = inspect(obj)
        for key, _, type_ in _store_columns(row.mapper):
            value = row.dict.get(key)
            if row.has_identity and row.attrs[key].history.has_changes():
                held = _held(session.execute, row, key)
                if held is not None and held != _stored_path(value):
                    files(session).old.append(held)
            if _is_upload(value):
                uploads.append((row, key, type_, value))
    if not uploads:
        return
    _refuse_shared_providers(uploads)
    store = state()
    records = files(session)
    for row, key, type_, value in uploads:
        provider = _provider(value) or store.provider_class(value, type_.location)
        run(store, provider.save)
        records.new.append(provider)
        saved_now.setdefault(row, []).append(provider.relative_path)
        setattr(row.obj(), key, store.Provider(provider.relative_path))


def _refuse_shared_providers(uploads: Iterable[tuple[InstanceState[Any], str, Any, Any]]) -> None:
    """One unsaved provider assigned twice would leave two rows sharing one file (deleting
    either row deletes it): refused before anything is stored."""
    seen: dict[int, str] = {}
    for row, key, _, value in uploads:
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
    released = [path for key, _, _ in columns if (path := _held(connection.execute, row, key))]
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
    if mapper is not None:
        found = [(k, c, mapper.attrs[k].class_attribute) for k, c, _ in _store_columns(mapper)]
        name, pk = mapper.class_.__name__, list(mapper.primary_key)
    else:  # a Core statement on a Table, run by the session
        table: Any = dml.table
        found = [(c.key, c, c) for c in getattr(table, "c", ()) if isinstance(c.type, StoreType)]
        name, pk = str(getattr(table, "name", table)), list(getattr(table, "primary_key", ()))
    if isinstance(dml, Update):
        # What it sets: .values(...), and the parameter sets (executemany, by primary key).
        sets = [{_name(k): v for k, v in (dml._values or {}).items()}, *_param_sets(execute_state)]
        found = [(k, c, e) for k, c, e in found if any(k in v or c.key in v for v in sets)]
        for (key, column, _), values in itertools.product(found, sets):
            value = values.get(key, values.get(str(column.key)))
            value = value.value if isinstance(value, BindParameter) else value
            if not isinstance(value, ClauseElement) and _is_upload(value):
                raise StoreError(
                    f"update({name}) sets {name}.{key} to an unsaved {type(value).__name__}: "
                    f"an update() statement stores no uploads (one file cannot belong to many "
                    f"rows). Assign the upload to each row's attribute and flush, or save it "
                    f"first (store.Provider(upload).save()) and set its relative_path."
                )
    if not found or not pk:
        return None  # nothing that holds a file changes, or no way to find the rows again
    return _Target(name, mapper, pk, [(k, e) for k, _, e in found])


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
    released = []
    for pk, was in before.items():
        now = after.get(pk)
        if now is None:  # deleted; an UPDATE that changed the primary key keeps its files
            released += [p for p in was if p is not None] if isinstance(dml, Delete) else []
            continue
        released += [p for p, n in zip(was, now, strict=True) if p is not None and p != n]
        if target.mapper is not None and was != now:
            _refresh(session, target, pk, now)
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
    store = state()
    for (key, _), path in zip(target.paths, now, strict=True):
        if key in row.dict and not row.attrs[key].history.has_changes():
            set_committed_value(obj, key, None if path is None else store.Provider(path))
