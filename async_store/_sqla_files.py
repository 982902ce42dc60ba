"""What a Session's transactions did to stored files, and what becomes of them when each ends.

``StoreType``'s hooks (``sqla.py``) record, per transaction, the files it *saved* and the paths
it *released* (replaced by another value, or whose row it deleted), each with the storage of the
column it was in: an app's storages may all hold a ``docs/a.txt``, and only the one the row
named is deleted.

* a transaction that does not commit (rollback, failed commit, closed session, rolled-back
  savepoint) deletes the files it saved;
* the outermost transaction's commit deletes the paths released, never earlier: until then a
  rollback may bring the row back.

A released savepoint hands its records to its parent, and takes them back if SQLAlchemy then
reports it rolled back (it ends a savepoint before it reports the rollback).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import concurrency

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .extension import StoreState
    from .providers.base import Provider

__all__ = ["Files", "Released", "Saved", "files", "run"]

log = logging.getLogger("async_store.sqla")
T = TypeVar("T")
# SQLAlchemy 2.1 renamed await_only to await_ (the old name goes in 2.2).
_await: Callable[[Awaitable[Any]], Any] = getattr(concurrency, "await_", None) or (
    concurrency.await_only
)
_FILES = "async_store_files"
_HANDED = "async_store_handed"


def run(store: StoreState, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async provider call from a session hook: awaited in AsyncSession's greenlet,
    on the sync shim's loop for a plain Session."""
    if concurrency.in_greenlet():
        return _await(func(*args))  # type: ignore[no-any-return]
    return store.store._portal.call(func, *args)


class Saved(NamedTuple):
    """A file a transaction saved, and the storage it saved it into."""

    storage: StoreState
    provider: Provider


class Released(NamedTuple):
    """A path a transaction released, in the storage of the column that held it."""

    storage: StoreState
    path: str


@dataclass
class Files:
    """Files a transaction saved (deleted if it does not commit) and the paths it released
    (deleted once it commits)."""

    new: list[Saved] = field(default_factory=list)
    old: list[Released] = field(default_factory=list)


def files(session: Session, transaction: SessionTransaction | None = None) -> Files:
    """The records of ``transaction`` (default: the innermost savepoint, or the transaction)."""
    tx = transaction or session.get_nested_transaction() or session.get_transaction()
    by_tx: dict[SessionTransaction, Files] = session.info.setdefault(_FILES, {})
    return by_tx.setdefault(tx, Files())  # type: ignore[arg-type]


def _pop(session: Session, transaction: SessionTransaction) -> Files | None:
    by_tx: dict[SessionTransaction, Files] = session.info.get(_FILES, {})
    return by_tx.pop(transaction, None)


def _delete(saved: list[Saved], why: str) -> None:
    for store, provider in saved:
        try:
            run(store, lambda p=provider: p.delete(missing_ok=True))
        except Exception:  # the transaction's outcome stands; a leftover file is logged
            log.exception(
                "could not delete %r from the storage %r (%s)",
                provider.relative_path,
                store.name,
                why,
            )


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    handed: dict[SessionTransaction, tuple[Files, Files]] = session.info.get(_HANDED, {})
    records = _pop(session, previous_transaction)
    if previous_transaction in handed:
        parent, records = handed.pop(previous_transaction)
        parent.new = [p for p in parent.new if p not in records.new]
        for released in records.old:  # one each: the parent may have released it too
            with contextlib.suppress(ValueError):
                parent.old.remove(released)
    if records is not None:
        _delete(records.new, "its transaction was rolled back")


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop(_HANDED, None)
    records = _pop(session, session.get_transaction())  # type: ignore[arg-type]
    if records is None or not records.old:
        return
    # A path saved in this transaction and released again is deleted through the provider
    # that saved it: with background uploads, that one can still cancel its pending job.
    saved = {Released(s.storage, s.provider.relative_path): s for s in records.new}
    doomed = []
    for released in dict.fromkeys(records.old):  # once each, in order
        storage, path = released
        doomed.append(saved.get(released) or Saved(storage, storage.provider_class(path)))
    _delete(doomed, "replaced or its row deleted")


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    records = _pop(session, transaction)
    if records is None:
        return
    if transaction.parent is not None:
        # A released savepoint (or a flush's inner transaction): its fate is its parent's,
        # unless after_soft_rollback comes next (it does, right after, for a rollback).
        parent = files(session, transaction.parent)
        parent.new += records.new
        parent.old += records.old
        session.info.setdefault(_HANDED, {})[transaction] = (parent, records)
    else:
        # The outermost transaction ended without a commit (closed session, failed commit).
        _delete(records.new, "its transaction ended without a commit")
