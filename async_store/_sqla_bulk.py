"""Bulk ``update()`` and ``delete()`` statements run by a session, on rows whose columns hold files.

The ``do_orm_execute`` hook reads the paths the statement may replace or remove (same criteria,
same transaction, rows locked), lets it run, reads them again by primary key, and releases each
path that changed, as a flush does (``_sqla_files`` deletes it once the transaction commits). An
``update()`` that sets an upload, or a provider of another storage, is refused before it runs.
Importing ``async_store.sqla`` registers the hook.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Unicode, event, inspect, select, tuple_, type_coerce
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Delete, Update
from sqlalchemy.sql.elements import BindParameter, ClauseElement, ColumnElement

from ._record import storage_named
from ._sqla_files import Released, files
from ._sqla_filetype import FileList, FileType, records_of, uploads_in
from ._sqla_records import file_columns, files_of
from ._sqla_type import StoreType, _is_upload, _provider, _raise_other_storage, _store_columns
from .exceptions import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Result, Select
    from sqlalchemy.orm import ORMExecuteState

    from .extension import StoreState

#: Rows per ``IN (...)`` when a bulk statement's rows are looked up again.
_CHUNK = 500


def _holds_files(column: Any) -> bool:
    return isinstance(column.type, (StoreType, FileType))


@dataclass
class _Target:
    """The rows an ``update()`` or ``delete()`` statement may change, as the hook reads them."""

    name: str  # for messages: the class, or the table
    mapper: Mapper[Any] | None
    pk: list[ColumnElement[Any]]
    paths: list[tuple[str, ColumnElement[Any]]]  # (attribute or column key, what to select)
    storages: list[StoreState]  # each path's column's
    types: list[StoreType | FileType]  # each path's column's

    def select(self, *where: ColumnElement[bool], lock: bool) -> Select[Any]:
        # A StoreType's path as text (no provider: none is needed), a FileType's records.
        raw = [t if isinstance(t, FileType) else Unicode() for t in self.types]
        query = select(
            *self.pk, *(type_coerce(e, r) for (_, e), r in zip(self.paths, raw, strict=True))
        )
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
    found: list[tuple[str, ColumnElement[Any], ColumnElement[Any], StoreType | FileType]]
    if mapper is not None:
        columns: list[tuple[str, ColumnElement[Any], StoreType | FileType]] = [
            *_store_columns(mapper),
            *file_columns(mapper),
        ]
        found = [(k, c, mapper.attrs[k].class_attribute, t) for k, c, t in columns]
        name, pk = mapper.class_.__name__, list(mapper.primary_key)
    else:  # a Core statement on a Table, run by the session
        table: Any = dml.table
        found = [(c.key, c, c, c.type) for c in getattr(table, "c", ()) if _holds_files(c)]
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
            records = isinstance(type_, FileType)
            # The upload itself, or the first one a list of a FileType holds.
            upload = next(iter(uploads_in(value)), (0, None))[1] if records else value
            if upload is not None and _is_upload(upload):
                raise StoreError(
                    f"update({name}) sets {name}.{key} to an unsaved {type(upload).__name__}: "
                    f"an update() statement stores no uploads (one file cannot belong to many "
                    f"rows). Assign the upload to each row's attribute and flush, or save it "
                    f"first (store.Provider(upload).save()) and set its relative_path."
                )
            if records:
                continue  # records name their storage
            provider = _provider(value)
            store = type_._state()
            if provider is not None and not isinstance(provider, store.provider_class):
                _raise_other_storage(f"update({name}) sets {name}.{key}, which", store, provider)
    if not found or not pk:
        return None  # nothing that holds a file changes, or no way to find the rows again
    # Each column's storage, looked up before the statement runs (an unknown one stops it).
    storages = [
        t._state() if isinstance(t, StoreType) else storage_named(t.storage, f"{name}.{k}")
        for k, _, _, t in found
    ]
    paths = [(k, e) for k, _, e, _ in found]
    return _Target(name, mapper, pk, paths, storages, [t for _, _, _, t in found])


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
        for type_, store, old, new in zip(target.types, target.storages, was, now, strict=True):
            kept = _files(type_, store, new)
            released += [f for f in _files(type_, store, old) if f not in kept]
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
    for (key, _), type_, store, value in zip(
        target.paths, target.types, target.storages, now, strict=True
    ):
        if key in row.dict and not row.attrs[key].history.has_changes():
            if isinstance(value, FileList):
                value._parents[row] = key  # tracked in place, as a loaded list is
            elif not isinstance(type_, FileType) and value is not None:
                value = store.Provider(value)
            set_committed_value(obj, key, value)


def _files(type_: StoreType | FileType, store: StoreState, value: Any) -> list[Released]:
    """The files a column value read by :meth:`_Target.select` names, each with its storage."""
    if isinstance(type_, FileType):
        # A record's image variants are released with it (and kept with it).
        return [Released(r.state(), f.path) for r in records_of(value) for f in files_of(r)]
    return [] if value is None else [Released(store, value)]
