"""``store backfill``'s work: a column's records filled in with the facts of their files.

A page of rows at a time: each value is parsed the way ``FileType`` reads it, each record
lacking a fact gets it from the storage the record names (``info()``, and one streamed read for
the SHA-256 unless the backend keeps one), and the page's new values are written
compare-and-set (:meth:`Database.compare_and_set`). A file still spooled by background uploads
is waiting for delivery, not missing: its row is left for the next run. Imported only when
``backfill`` runs: SQLAlchemy is an extra.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._record import FileRecord
from ..exceptions import NotFoundError, StoreError
from ._app import human_size
from ._spooled import drain_command, is_spooled
from ._sqla_target import Column

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..extension import StoreState
    from ._sqla_database import Database, Key
    from ._sqla_target import Target

__all__ = ["Backfill", "Row", "Tally", "parse_value"]

#: The facts a record lacks until backfilled (``filename``, the client's name, is lost for a
#: bare path; ``stored_at`` is filled with the file's modification time, but not waited for).
_FACTS = ("size", "content_type", "sha256")


# --- one row --------------------------------------------------------------------------------------


@dataclass
class Row:
    """A row's value as read: its primary key, the text compared on write, its records."""

    key: Key
    old: str
    #: ``"path"`` (a bare path), ``"record"`` or ``"list"``: how it is written back.
    shape: str
    records: list[FileRecord]
    #: Why the value cannot be filled in (not a record, a storage the app does not have).
    error: str | None = None


def _is_complete(record: FileRecord) -> bool:
    return all(getattr(record, fact) is not None for fact in _FACTS)


def parse_value(text: str, *, is_json: bool, storage: str) -> tuple[str, list[FileRecord]]:
    """(its shape, its records) of a column's value as text, the way ``FileType`` reads it:
    a record's JSON object, a list of them, or a bare path (what ``StoreType`` wrote; in a
    JSON column, a JSON string).

    :raises StoreError: for JSON that is no record.
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = text  # not JSON: a bare path
    if is_json:
        if data is None:
            return "record", []
        if isinstance(data, str):
            return "path", [FileRecord.from_json(data, storage)]
    elif not (isinstance(data, dict) or _records_list(data)):
        # A cleaned name may be "[1]" or "12", never "{…}": anything else is a bare path.
        return "path", [FileRecord.from_json(text, storage)]
    if isinstance(data, list):
        return "list", [FileRecord.from_json(item, storage) for item in data]
    return "record", [FileRecord.from_json(data, storage)]


def _records_list(data: Any) -> bool:
    return isinstance(data, list) and all(
        isinstance(i, dict) and isinstance(i.get("path"), str) for i in data
    )


def _to_text(row: Row, records: Sequence[FileRecord]) -> str:
    data: Any = [r.to_json() for r in records] if row.shape == "list" else records[0].to_json()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))  # as FileType writes


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a backfill did so far."""

    #: Rows read (with a value).
    rows: int = 0
    #: Rows written (in a dry run: that would be).
    filled: int = 0
    complete: int = 0
    #: Bytes streamed for checksums (in a dry run: to stream).
    read: int = 0
    #: ``"table id=3"`` of each row the app changed between our read and our write.
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: Files still spooled by background uploads (not delivered yet): left for the next run.
    waiting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: In a dry run, one line per row that would change.
    would: list[str] = field(default_factory=list)


class Backfill:
    """Fills in one column's records, a page of rows at a time: :meth:`page` reads the next
    rows in primary-key order, :meth:`compute` gives the new value of each incomplete one, and
    :meth:`write` writes them, compare-and-set, in one transaction; :meth:`run` does it all."""

    def __init__(
        self,
        database: Database,
        column: Column,
        target: Target,
        storages: dict[str, StoreState[Any]],
        storage: str,
        *,
        batch_size: int = 100,
        jobs: int = 4,
        dry_run: bool = False,
    ) -> None:
        self.database = database
        self.column = column
        self.target = target
        self.storages = storages
        self.storage = storage
        self.batch_size = batch_size
        self.jobs = jobs
        self.dry_run = dry_run
        self.tally = Tally()

    @classmethod
    async def open(
        cls,
        database: Database,
        target: Target,
        storages: dict[str, StoreState[Any]],
        storage: str,
        **options: Any,
    ) -> Backfill:
        """:raises click.UsageError: as :meth:`Column.reflect`."""
        column = await database.read(lambda c: Column.reflect(c, target))
        return cls(database, column, target, storages, storage, **options)

    def _name(self, key: Key) -> str:
        pairs = ", ".join(f"{k}={v!r}" for k, v in zip(self.column.keys, key, strict=True))
        return f"{self.target.table} {pairs}" if len(key) == 1 else f"{self.target.table} ({pairs})"

    # --- reading ----------------------------------------------------------------------------------

    async def page(self, after: Key | None) -> list[Row]:
        """The next ``batch_size`` rows with a value, after the primary key ``after``."""
        found = await self.database.page(self.column, after, self.batch_size)
        return [self._row(key, text) for key, text in found]

    def _row(self, key: Key, text: str) -> Row:
        try:
            shape, records = parse_value(text, is_json=self.column.is_json, storage=self.storage)
        except StoreError as exc:
            return Row(key, text, "record", [], f"the value is no file record: {exc}")
        unknown = sorted({r.storage for r in records} - set(self.storages))
        if unknown:
            return Row(
                key,
                text,
                shape,
                records,
                f"it names the storage {unknown[0]!r}, which this app does not have (it has "
                f"{', '.join(map(repr, self.storages))})",
            )
        return Row(key, text, shape, records)

    # --- the files --------------------------------------------------------------------------------

    async def compute(self, rows: list[Row]) -> list[tuple[Row, str]]:
        """The new value of each row that lacks a fact (``jobs`` files at once);
        complete, missing, waiting and failed rows are counted in :attr:`tally`."""
        limiter = anyio.CapacityLimiter(self.jobs)
        updates: list[tuple[Row, str]] = []

        async def one(row: Row) -> None:
            new = await self._fill_row(row, limiter)
            if new is not None:
                updates.append((row, new))

        tally = self.tally
        lists = (tally.would, tally.missing, tally.failed, tally.waiting)
        before = [len(found) for found in lists]
        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(one, row)
        tally.rows += len(rows)
        order = {id(row): i for i, row in enumerate(rows)}
        updates.sort(key=lambda u: order[id(u[0])])
        # Files are read ``jobs`` at once: what this page reports goes in the rows' order.
        names = [f"{self._name(row.key)}: " for row in rows]

        def position(line: str) -> int:
            return next((i for i, n in enumerate(names) if line.startswith(n)), len(names))

        for found, start in zip(lists, before, strict=True):
            found[start:] = sorted(found[start:], key=position)
        return updates

    async def _fill_row(self, row: Row, limiter: anyio.CapacityLimiter) -> str | None:
        tally, name = self.tally, self._name(row.key)
        if row.error is not None:
            tally.failed.append(f"{name}: {row.error}")
            return None
        if all(_is_complete(r) for r in row.records):
            tally.complete += 1
            return None
        records, filled, waiting = list(row.records), False, False
        for i, record in enumerate(records):
            if _is_complete(record):
                continue
            async with limiter:
                try:
                    filled_in = await self._fill(record, bare=row.shape == "path")
                except _Spooled:
                    drain = drain_command(self.storages[record.storage])
                    tally.waiting.append(
                        f"{name}: {record.path!r} is still spooled for the storage "
                        f"{record.storage!r} ('{drain}' delivers it)"
                    )
                    waiting = True
                except NotFoundError:
                    tally.missing.append(
                        f"{name}: {record.path!r} is not in the storage {record.storage!r}"
                    )
                except StoreError as exc:
                    tally.failed.append(f"{name}: {record.path!r}: {exc}")
                else:
                    records[i], filled = filled_in, True
        if waiting or not filled:
            # Every file it names is missing, or failed; or one is still on its way to the
            # storage, and the next run writes the row whole.
            return None
        if self.dry_run:
            tally.would.append(f"{name}: {_describe(records, row.records)}")
        return _to_text(row, records)

    async def _fill(self, record: FileRecord, *, bare: bool) -> FileRecord:
        """``record`` with its missing facts, from the storage it names.

        :raises _Spooled: if the file is a background upload not delivered yet.
        :raises NotFoundError: if the file is not there.
        """
        state = self.storages[record.storage]
        provider = state.provider_class(record.path)
        # Asked before the storage: a delivery releases the name only once the file landed, so
        # a file not spooled now is either stored or missing.
        if await is_spooled(state, provider.relative_path):
            raise _Spooled
        info = await provider.info()
        size = record.size if record.size is not None else info.size
        sha256 = record.sha256 or info.sha256  # an S3 object stored with its checksum has one
        if sha256 is None:
            if self.dry_run:
                self.tally.read += info.size
            else:
                sha256, size = await self._digest(provider, state.config.chunk_size)
        # A bare path's type was a guess from its name: the backend's (S3's stored
        # Content-Type) is what the file is served with.
        content_type = (None if bare else record.content_type) or info.content_type
        return dataclasses.replace(
            record,
            size=size,
            content_type=content_type or record.content_type,
            sha256=sha256,
            stored_at=record.stored_at or info.modified,
        )

    async def _digest(self, provider: Any, chunk_size: int) -> tuple[str, int]:
        """The SHA-256 and size of a stored file, read once, a chunk at a time."""
        sha, size = hashlib.sha256(), 0
        async with provider.open() as f:
            while chunk := await f.read(chunk_size):
                sha.update(chunk)
                size += len(chunk)
        self.tally.read += size
        return sha.hexdigest(), size

    # --- writing ----------------------------------------------------------------------------------

    async def write(self, updates: list[tuple[Row, str]]) -> None:
        """Write the new values in one transaction, each only where the row still holds the
        value read (a row changed meanwhile is counted in ``tally.changed``, left as it is)."""
        if self.dry_run or not updates:
            self.tally.filled += len(updates)
            return
        changed = await self.database.compare_and_set(
            self.column, [(row.key, row.old, new) for row, new in updates]
        )
        self.tally.filled += len(updates) - len(changed)
        self.tally.changed.extend(map(self._name, changed))

    async def run(self, on_page: Callable[[Tally, int], object] = lambda t, n: None) -> Tally:
        """Every page, each written before the next is read; ``on_page(tally, total)`` after
        each one's commit."""
        total = await self.database.count(self.column)
        after: Key | None = None
        while rows := await self.page(after):
            after = rows[-1].key
            await self.write(await self.compute(rows))
            on_page(self.tally, total)
        return self.tally


class _Spooled(Exception):
    """A file not stored yet: a background upload still in the spool."""


def _describe(new: list[FileRecord], old: list[FileRecord]) -> str:
    parts = []
    for n, o in zip(new, old, strict=True):
        if n != o:
            size = human_size(n.size) if n.size is not None else "?"
            parts.append(f"{n.path} ({size}, {n.content_type})")
    return ", ".join(parts)
