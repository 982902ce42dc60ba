"""The flush hooks' half for ``FileType`` columns: which files a row's records name, which of
them a change releases, and storing the uploads assigned to them (and their image variants).

``sqla.py`` calls these from the same hooks that serve ``StoreType``, so both kinds of column
follow one set of rules (``_sqla_files``): files saved in a transaction are deleted if it does
not commit; the files a record named, once replaced, removed from a list or deleted with its
row, are deleted after the commit, each from the storage its record names. A record's image
variants (``FileRecord.variants``) are files it names too: saved with it, released with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select, type_coerce

from ._record import FileRecord, storage_named
from ._sqla_files import Released, Saved, files, run
from ._sqla_filetype import FileType, records_of, storage_of, uploads_in
from ._sqla_type import _provider, typed_columns
from ._variants import declared, make_variants

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import Result
    from sqlalchemy.orm import InstanceState, Mapper, Session
    from sqlalchemy.sql.elements import ColumnElement

    from .extension import StoreState

__all__ = [
    "Pending",
    "changed_records",
    "file_columns",
    "files_of",
    "held_records",
    "keep_named",
    "store_pending",
]


def file_columns(mapper: Mapper[Any]) -> list[tuple[str, ColumnElement[Any], FileType]]:
    """(attribute key, column, type) of each ``FileType`` column ``mapper`` maps."""
    return typed_columns(mapper, FileType)


def held_records(
    execute: Callable[[Any], Result[Any]], row: InstanceState[Any], key: str
) -> list[FileRecord]:
    """The files ``row`` holds for ``key`` in the database, one record each (a record's image
    variants as records of their own, so that whatever releases it releases them): what the
    session loaded, or, when that is not known (never loaded, or a list changed in place), a
    query by primary key."""
    return [file for record in _held(execute, row, key) for file in files_of(record)]


def files_of(record: FileRecord) -> list[FileRecord]:
    """A record, then a record of each of its variants: every file it names."""
    return [record, *(FileRecord(record.storage, p) for p in record.variants.values())]


def _held(
    execute: Callable[[Any], Result[Any]], row: InstanceState[Any], key: str
) -> list[FileRecord]:
    history = row.attrs[key].history
    if history.deleted:
        return records_of(history.deleted[0])
    if key in row.dict and not history.added:
        return records_of(row.dict[key])
    if row.identity is None:
        return []
    mapper = row.mapper
    attribute = mapper.attrs[key].class_attribute
    column = type_coerce(attribute, mapper.columns[key].type)  # records: no app needed
    where = [c == v for c, v in zip(mapper.primary_key, row.identity, strict=True)]
    return records_of(execute(select(column).where(*where)).scalar_one_or_none())


class Pending(NamedTuple):
    """An upload a flush stores into a ``FileType`` attribute (at ``position`` in its list)."""

    row: InstanceState[Any]
    key: str
    position: int | None
    value: Any
    type_: FileType
    store: StoreState


def changed_records(
    session: Session, row: InstanceState[Any], named: set[tuple[str, str]]
) -> list[Pending]:
    """For each ``FileType`` attribute of ``row`` a flush writes: release the files of the
    records it held that its new value no longer holds, add the files it names now to
    ``named`` (see :func:`keep_named`), and list the uploads to store."""
    pending: list[Pending] = []
    for key, _, type_ in file_columns(row.mapper):
        if row.attrs[key].history.has_changes():
            _record_saved(row, key, type_)
        value = row.dict.get(key)
        if row.attrs[key].history.has_changes():
            kept = {(r.storage, path) for r in records_of(value) for path in r.paths}
            named |= kept
            for held in held_records(session.execute, row, key) if row.has_identity else ():
                if (held.storage, held.path) not in kept:
                    files(session).old.append(Released(held.state(), held.path))
        for index, upload in uploads_in(value):
            provider = _provider(upload)
            # An unsaved provider stores into its own storage, the rest into the column's.
            store = (storage_of(provider) if provider is not None else None) or storage_named(
                type_.storage, f"{row.mapper.class_.__name__}.{key}"
            )
            pending.append(Pending(row, key, index, upload, type_, store))
    return pending


def _record_saved(row: InstanceState[Any], key: str, type_: FileType) -> None:
    """A saved provider assigned (a tus upload's, one the app saved itself) becomes its record
    at the flush, as an upload the flush stores does: the attribute then names every file of it,
    its variants too (``Provider.variants``), for what releases them later, in this session as
    after a reload. The file stays the app's until the commit: a rollback leaves it (and its
    variants) where it is, as it leaves any file the transaction did not save."""
    value = row.dict.get(key)
    if isinstance(value, list):
        for index, item in enumerate(value):
            if _is_saved(item):
                value[index] = type_.record(item)
    elif _is_saved(value):
        setattr(row.obj(), key, type_.record(value))


def _is_saved(value: Any) -> bool:
    provider = _provider(value)
    return provider is not None and provider.saved


def keep_named(session: Session, named: set[tuple[str, str]]) -> None:
    """A record moved to another attribute or row (``a.file = b.file``) keeps its file: the
    transaction releases none that a value it wrote names."""
    if named:
        records = files(session)
        records.old = [r for r in records.old if (r.storage.name, r.path) not in named]


def store_pending(pending: list[Pending]) -> Iterator[tuple[InstanceState[Any], Saved]]:
    """Store each upload, put its record in its place, and yield what was saved for which row:
    the upload, then the image variants its storage declares, made from it right away."""
    for row, key, position, value, type_, store in pending:
        provider = _provider(value) or store.provider_class(
            value, type_.location, checksum=True, validate=type_.validate
        )
        run(store, provider.save)
        yield row, Saved(store, provider)
        record = FileRecord.of(provider, store.name)
        if declared(store):
            # A failure leaves no variant (make_variants removes what it made); the original,
            # yielded above, goes with the transaction's rollback.
            record = run(store, make_variants, record, store)
            for path in record.variants.values():
                yield row, Saved(store, store.provider_class(path))
        if position is None:
            setattr(row.obj(), key, record)
        else:
            row.dict[key][position] = record  # a FileList: marks the attribute changed
