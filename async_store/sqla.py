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
* ``do_orm_execute`` (``_sqla_bulk``) reads the paths an ``update()`` or ``delete()`` statement
  run by the session replaces or removes (same criteria, same transaction, rows locked) and
  compares after it ran;
* ``_sqla_files`` deletes a transaction's saved files if it does not commit, and the released
  paths only once it has.

Loading needs an app context (the current app's Store gives the storage, by name: models are
declared before any app). Updating other columns never touches the file.

The type and the value helpers the hooks share are in ``_sqla_type``; this module holds the
flush hooks and imports the other hooks' modules, so importing it registers every hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, Session

from . import _sqla_bulk  # noqa: F401  (registers the update()/delete() statement hook)
from ._record import FileRecord
from ._sqla_files import Released, Saved, files, run
from ._sqla_filetype import FileList, FileListType, FileType
from ._sqla_records import (
    Pending,
    changed_records,
    file_columns,
    held_records,
    keep_named,
    store_pending,
)
from ._sqla_type import (
    StoreType,
    _held,
    _is_upload,
    _provider,
    _raise_other_storage,
    _store_columns,
    _stored_path,
)
from .exceptions import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import InstanceState, UOWTransaction

    from .extension import StoreState

__all__ = ["FileList", "FileListType", "FileRecord", "FileType", "FlaskStoreType", "StoreType"]

#: session.info key: {row: (storage, path) of each file its before_flush saved for it}.
_SAVED_NOW = "async_store_saved_now"

#: The seed's name.
FlaskStoreType = StoreType

# --- rows a flush inserts, updates or deletes -------------------------------------------------


@event.listens_for(Session, "before_flush")
def _save_uploads(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    # Rows this flush deletes are left to _row_deleted: session.deleted does not hold the
    # orphans a delete-orphan cascade finds inside the flush, and an upload assigned to a row
    # that is being deleted is never stored.
    saved_now: dict[InstanceState[Any], list[Released]] = {}
    session.info[_SAVED_NOW] = saved_now
    uploads: list[tuple[InstanceState[Any], str, Any, StoreType, StoreState]] = []
    pending: list[Pending] = []  # FileType's
    named: set[tuple[str, str]] = set()  # (storage, path) of the records FileType values hold
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
        pending += changed_records(session, row, named)
    keep_named(session, named)
    if not uploads and not pending:
        return
    _refuse_shared_providers(
        [(row, key, value) for row, key, value, _, _ in uploads]
        + [(p.row, p.key, p.value) for p in pending]
    )
    records = files(session)
    for row, key, value, type_, store in uploads:
        provider = _provider(value) or store.provider_class(
            value, type_.location, validate=type_.validate
        )
        run(store, provider.save)
        records.new.append(Saved(store, provider))
        saved_now.setdefault(row, []).append(Released(store, provider.relative_path))
        setattr(row.obj(), key, store.Provider(provider.relative_path))
    for row, saved in store_pending(pending):
        records.new.append(saved)
        saved_now.setdefault(row, []).append(Released(saved.storage, saved.provider.relative_path))


def _refuse_other_storages(
    row: InstanceState[Any], key: str, store: StoreState, value: Any
) -> None:
    """A provider assigned to a column is one of the column's storage: the row would otherwise
    name a file its storage does not hold (and deleting the row would delete another file)."""
    provider = _provider(value)
    if provider is None or isinstance(provider, store.provider_class):
        return
    _raise_other_storage(f"{row.mapper.class_.__name__}.{key}", store, provider)


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
    if not (columns or file_columns(mapper)) or session is None:
        return
    released = [
        Released(type_._state(), path)
        for key, _, type_ in columns
        if (path := _held(connection.execute, row, key))
    ]
    for key, _, _ in file_columns(mapper):
        released += [
            Released(r.state(), r.path) for r in held_records(connection.execute, row, key)
        ]
    released += session.info.get(_SAVED_NOW, {}).get(row, [])
    files(session).old.extend(released)


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, flush_context: UOWTransaction) -> None:
    session.info.pop(_SAVED_NOW, None)
