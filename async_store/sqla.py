"""``StoreType``: a SQLAlchemy column that holds a stored file (the seed's ``FlaskStoreType``).

::

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        file = mapped_column(StoreType(128, location="docs"))

    doc = Doc(file=(await request.files)["f"])     # any upload Provider() accepts
    session.add(doc)
    await session.commit()                          # stored; the column holds 'docs/a.txt'
    doc.file.absolute_url                           # loaded rows give a provider

The column holds the relative path (``Unicode(max_length)``), so databases written by
Flask-Store stay readable. The type itself does no I/O; session events do:

* ``before_flush`` saves uploads assigned to a ``StoreType`` attribute (inside ``AsyncSession``'s
  greenlet the async provider is awaited with SQLAlchemy's ``await_``; a plain ``Session`` goes
  through the sync shim's loop) and puts the saved provider in their place;
* a file saved in a transaction that does not commit (rollback, failed commit, closed session,
  rolled-back savepoint) is deleted when that transaction ends;
* a file replaced by another value, or whose row is deleted, is deleted only after the commit.

Loading needs an app context (the current app's Store gives the provider class). Updating other
columns never touches the file.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.types import TypeDecorator, Unicode
from sqlalchemy.util import concurrency

from ._paths import clean_key, clean_location
from .exceptions import StoreError
from .extension import StoreState, current_state
from .providers.base import Provider
from .sync import SyncProvider

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.engine import Dialect
    from sqlalchemy.orm import Mapper, UOWTransaction

__all__ = ["FlaskStoreType", "StoreType"]

log = logging.getLogger("async_store.sqla")
T = TypeVar("T")
# SQLAlchemy 2.1 renamed await_only to await_ (the old name goes in 2.2).
_await: Callable[[Awaitable[Any]], Any] = getattr(concurrency, "await_", None) or (
    concurrency.await_only
)


def _state() -> StoreState:
    return current_state("StoreType")


def _run(state: StoreState, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async provider call from a session hook: awaited in AsyncSession's greenlet,
    on the sync shim's loop for a plain Session."""
    if concurrency.in_greenlet():
        return _await(func(*args))  # type: ignore[no-any-return]
    return state.store._portal.call(func, *args)


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
            f"assigned to a mapped attribute and flushed by a Session; a Core insert or update "
            f"needs a saved provider or a relative path."
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return _state().Provider(value)

    def compare_values(self, x: Any, y: Any) -> bool:
        return _key_of(x) == _key_of(y) if _key_of(x) is not None else x is y


#: The seed's name.
FlaskStoreType = StoreType


def _key_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    provider = _provider(value)
    return provider.relative_path if provider is not None and provider.saved else None


def _is_upload(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return False
    provider = _provider(value)
    return provider is None or not provider.saved


# --- which attributes hold files ------------------------------------------------------------


_columns: weakref.WeakKeyDictionary[Mapper[Any], list[tuple[str, StoreType]]] = (
    weakref.WeakKeyDictionary()
)


def _store_columns(mapper: Mapper[Any]) -> list[tuple[str, StoreType]]:
    cached = _columns.get(mapper)
    if cached is None:
        cached = _columns[mapper] = [
            (prop.key, prop.columns[0].type)
            for prop in mapper.column_attrs
            if isinstance(prop.columns[0].type, StoreType)
        ]
    return cached


# --- files per transaction --------------------------------------------------------------------


@dataclass
class _Files:
    """Files a transaction saved (deleted if it does not commit) and files it replaced or whose
    rows it deleted (deleted once it commits)."""

    new: list[Provider] = field(default_factory=list)
    old: list[Provider] = field(default_factory=list)


def _files(session: Session, transaction: SessionTransaction | None = None) -> _Files:
    tx = transaction or session.get_nested_transaction() or session.get_transaction()
    by_tx: dict[SessionTransaction, _Files] = session.info.setdefault("async_store_files", {})
    return by_tx.setdefault(tx, _Files())  # type: ignore[arg-type]


def _pop(session: Session, transaction: SessionTransaction) -> _Files | None:
    by_tx: dict[SessionTransaction, _Files] = session.info.get("async_store_files", {})
    return by_tx.pop(transaction, None)


def _delete(providers: list[Provider], why: str) -> None:
    if not providers:
        return
    state = _state()
    for provider in providers:
        try:
            _run(state, lambda p=provider: p.delete(missing_ok=True))
        except Exception:  # the transaction's outcome stands; a leftover file is logged
            log.exception("could not delete %r (%s)", provider.relative_path, why)


def _old_value(session: Session, obj: Any, key: str) -> Any:
    """The value a persistent row had before this flush (queried if it was never loaded)."""
    state = inspect(obj)
    history = state.attrs[key].history
    if history.deleted:
        return history.deleted[0]
    if not history.added:
        return None
    mapper = state.mapper
    column = mapper.columns[key]
    identity = dict(zip([c.key for c in mapper.primary_key], state.identity or (), strict=True))
    query = select(column).where(*(mapper.columns[k] == v for k, v in identity.items()))
    return session.execute(query).scalar_one_or_none()


@event.listens_for(Session, "before_flush")
def _save_uploads(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    files: _Files | None = None
    for obj in [*session.new, *session.dirty, *session.deleted]:
        columns = _store_columns(inspect(obj).mapper)
        if not columns:
            continue
        state = _state()
        files = files or _files(session)
        deleted = obj in session.deleted
        for key, type_ in columns:
            if deleted:
                old = _provider(getattr(obj, key))
                if old is not None:
                    files.old.append(old)
                continue
            value = inspect(obj).dict.get(key)
            if obj not in session.new and inspect(obj).attrs[key].history.has_changes():
                old = _old_value(session, obj, key)
                if old is not None and _key_of(old) != _key_of(value):
                    previous = _provider(old) or state.provider_class(str(old))
                    files.old.append(previous)
            if _is_upload(value):
                provider = _provider(value) or state.provider_class(value, type_.location)
                _run(state, provider.save)
                files.new.append(provider)
                setattr(obj, key, state.Provider(provider.relative_path))


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    # SQLAlchemy ends a savepoint (after_transaction_end, below) before it reports the rollback:
    # take back what the savepoint handed to its parent.
    handed: dict[SessionTransaction, tuple[_Files, _Files]] = session.info.get(
        "async_store_handed", {}
    )
    files = _pop(session, previous_transaction)
    if previous_transaction in handed:
        parent, files = handed.pop(previous_transaction)
        parent.new = [p for p in parent.new if p not in files.new]
        parent.old = [p for p in parent.old if p not in files.old]
    if files is not None:
        _delete(files.new, "its transaction was rolled back")


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop("async_store_handed", None)
    files = _pop(session, session.get_transaction())  # type: ignore[arg-type]
    if files is not None:
        _delete(files.old, "replaced or its row deleted")


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    files = _pop(session, transaction)
    if files is None:
        return
    if transaction.parent is not None:
        # A released savepoint (or a flush's inner transaction): its fate is its parent's,
        # unless after_soft_rollback comes next (it does, right after, for a rollback).
        parent = _files(session, transaction.parent)
        parent.new += files.new
        parent.old += files.old
        session.info.setdefault("async_store_handed", {})[transaction] = (parent, files)
    else:
        # The outermost transaction ended without a commit (closed session, failed commit).
        _delete(files.new, "its transaction ended without a commit")
