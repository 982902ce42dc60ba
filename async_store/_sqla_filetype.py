"""``FileType``: a column holding a stored file's record (or a list of them), as JSON.

The type does no I/O. It writes :class:`~async_store._record.FileRecord` objects as JSON
(``JSONB`` on PostgreSQL, text elsewhere) and reads them back; it also reads what a
``StoreType`` column wrote (a bare path) as a record of the column's storage, so a table can
switch column types without a data migration. The session hooks (``sqla.py``) save the uploads
assigned to it at the flush and release the files its records name: each from the storage its
record names.

``FileType(multiple=True)`` holds a list, tracked in place (``doc.scans.append(upload)`` is a
change the next flush stores).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableList
from sqlalchemy.types import TypeDecorator

from ._paths import clean_location
from ._record import FileRecord
from ._sqla_type import _is_upload, _provider, unsaved_upload
from ._storages import DEFAULT
from ._validate import Rules
from .exceptions import StoreError

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.types import TypeEngine

    from .extension import StoreState
    from .providers.base import Provider

__all__ = ["FileList", "FileType", "records_of", "uploads_in"]


def is_new(value: Any) -> bool:
    """Whether ``value`` is something a flush must store (an upload, an unsaved provider)."""
    return not isinstance(value, FileRecord) and _is_upload(value)


class FileType(TypeDecorator[Any]):
    """A column holding a stored file's record: JSON in the database, a ``FileRecord`` in
    Python (a list of them with ``multiple=True``)::

        class Doc(Base):
            file: Mapped[FileRecord | None] = mapped_column(FileType(storage="documents"))
            scans: Mapped[list[FileRecord]] = mapped_column(FileType(multiple=True), default=list)

    Assign anything ``store.Provider()`` accepts (a ``FileStorage``, a path, bytes, …) or a
    provider: the flush stores it in the column's storage, taking its size and SHA-256 as the
    bytes stream in, and puts its record in its place. A record assigned (of any storage)
    is kept as it is.

    :param storage: where new uploads go: ``'default'`` or a name of ``STORE_STORAGES``.
    :param location: the folder below the storage's ``PATH`` uploads are saved into.
    :param multiple: hold a list of files instead of one.
    :param validate: :class:`~async_store.Rules` of this column over its storage's, checked as
        each upload the flush stores streams in (a refusal fails the flush; nothing is kept).
    """

    __module__ = "async_store.sqla"

    impl = Text
    cache_ok = True

    def __new__(cls, *args: Any, **kwargs: Any) -> FileType:
        # A list column is a class of its own: the in-place tracking of ``FileList`` is
        # associated with that class (sqlalchemy.ext.mutable), not with one instance.
        if cls is FileType and (kwargs.get("multiple") or (len(args) > 2 and args[2])):
            cls = FileListType
        return super().__new__(cls)

    # Positional-or-keyword: SQLAlchemy's cache key is made of these (see StoreType).
    def __init__(
        self,
        storage: str = DEFAULT,
        location: str | None = None,
        multiple: bool = False,
        validate: Rules | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(storage, str) or not storage:
            raise TypeError(f"FileType(storage=...) takes a storage's name, not {storage!r}")
        if validate is not None and not isinstance(validate, Rules):
            raise TypeError(f"FileType(validate=...) takes Rules(...), not {validate!r}")
        self.storage = storage
        self.location = clean_location(location)
        self.multiple = multiple
        self.validate = validate

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(Text())

    # --- Python to the database ------------------------------------------------------------------

    def record(self, value: Any) -> FileRecord:
        """What one stored file of this column is as a record.

        :raises StoreError: for an upload not stored yet (the flush stores those).
        """
        if isinstance(value, FileRecord):
            return value
        if isinstance(value, str):
            return FileRecord.from_json(value, self.storage)
        provider = _provider(value)
        if provider is not None and provider.saved:
            state = storage_of(provider)
            return FileRecord.of(provider, state.name if state is not None else self.storage)
        raise unsaved_upload("FileType", value, "a record, a saved provider or a relative path")

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            data: Any = [] if self.multiple else None
        elif self.multiple:
            if not isinstance(value, (list, tuple)):
                raise StoreError(
                    f"a FileType(multiple=True) column holds a list of files, not a "
                    f"{type(value).__name__}"
                )
            data = [self.record(v).to_json() for v in value]
        else:
            data = self.record(value).to_json()
        if data is None or dialect.name == "postgresql":
            return data
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    # --- the database to Python ------------------------------------------------------------------

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        records = self.parse(value)
        if self.multiple:
            return FileList(records)
        if len(records) > 1:
            raise StoreError(f"a FileType column (not multiple=True) holds {len(records)} files")
        return records[0] if records else None

    def parse(self, value: Any) -> list[FileRecord]:
        """The records a column value holds: JSON (parsed or not), or a bare path.

        :raises StoreError: for a value that is neither.
        """
        if value is None:
            return []
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            # Anything but an object or a list of records is a bare path, as StoreType wrote
            # it: a cleaned name may be "[1]", never "{…}" (braces are not kept).
            if not isinstance(parsed, dict) and not _records_json(parsed):
                return [FileRecord.from_json(value, self.storage)]
            value = parsed
        items = value if isinstance(value, list) else [value]
        return [FileRecord.from_json(item, self.storage) for item in items]


def _records_json(parsed: Any) -> bool:
    """Whether parsed JSON is a list of records (objects with a path)."""
    return isinstance(parsed, list) and all(
        isinstance(i, dict) and isinstance(i.get("path"), str) for i in parsed
    )


class FileListType(FileType):
    """``FileType(multiple=True)``: its values are :class:`FileList`."""

    __module__ = "async_store.sqla"
    cache_ok = True


class FileList(MutableList[Any]):
    """The list a ``FileType(multiple=True)`` attribute holds: records, and uploads added since
    the last flush. Changes in place (``append``, ``remove``, ``[i] = ...``) are tracked."""


FileList.associate_with(FileListType)


def storage_of(provider: Provider) -> StoreState | None:
    """The storage ``provider`` is a provider of, in the current app (None: another app's)."""
    from .extension import current_state

    for state in current_state("a FileType column").storages.values():
        if isinstance(provider, state.provider_class):
            return state
    return None


def records_of(value: Any) -> list[FileRecord]:
    """The records a Python value of a ``FileType`` attribute holds (uploads left out)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, FileRecord)]


def uploads_in(value: Any) -> list[tuple[int | None, Any]]:
    """``(index, upload)`` for each upload the value holds (index None: the value itself)."""
    if isinstance(value, list):
        return [(i, item) for i, item in enumerate(value) if is_new(item)]
    return [(None, value)] if is_new(value) else []
