"""A stored file's record: which storage holds it, where, and what it is.

What a ``FileType`` column keeps (as JSON): the storage's name and the file's path in it, its
size, content type and SHA-256 (taken while the bytes streamed in), the name the client gave
it, when it was stored, the application's own metadata, and the paths of its image variants
(``_variants``: a thumbnail, a preview; stored next to it, released with it). A record is plain
data: it is read from a row without an app; its provider (URLs, ``open()``, ``delete()``) is the
current app's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._paths import clean_key, content_type
from ._storages import DEFAULT
from .exceptions import StoreError

if TYPE_CHECKING:
    from .extension import StoreState
    from .providers.base import Provider

__all__ = ["FileRecord", "storage_named"]


def storage_named(name: str, who: str) -> StoreState:
    """The storage ``name`` of the current app, for ``who`` (named in the errors).

    :raises StoreError: outside an app context, or if the app has no such storage.
    """
    from .extension import current_state

    storages = current_state(who).storages
    found = storages.get(name)
    if found is None:
        raise StoreError(
            f"{who} names the storage {name!r}, and this app has none of that name (it has "
            f"{', '.join(map(repr, storages))}): add it to app.config['STORE_STORAGES']."
        )
    return found


@dataclass(frozen=True)
class FileRecord:
    """A stored file, as a ``FileType`` column holds it::

        doc.file.storage, doc.file.path, doc.file.size, doc.file.content_type, doc.file.sha256
        doc.file.filename                # what the client called it: 'Contract (final).pdf'
        doc.file.absolute_url            # and the rest of the provider's API, in an app
        doc.file.variant("thumb").absolute_url   # a variant: a record of its own file

    Records are immutable; ``dataclasses.replace(doc.file, metadata={...})`` assigned back
    changes the row's record and keeps the file.
    """

    #: The storage holding it: ``'default'`` (the ``STORE_*`` keys) or a ``STORE_STORAGES`` name.
    storage: str
    #: Its relative path in that storage (what ``Provider(path)`` takes).
    path: str
    #: Its size in bytes, counted as it was stored (None: not known, a record made from a bare
    #: path; ``store backfill`` fills it in).
    size: int | None = None
    #: Its MIME type.
    content_type: str | None = None
    #: The SHA-256 of its bytes (hex), computed while they streamed in.
    sha256: str | None = None
    #: The name the client gave the file (kept apart from the stored, cleaned one).
    filename: str | None = None
    #: When it was stored (UTC).
    stored_at: datetime | None = None
    #: The application's own data about the file (JSON-serialisable).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Its image variants' paths in the same storage, by the variant's name (``{'thumb':
    #: 'photos/_variants/cat.jpg/thumb.webp'}``): made by ``make_variants``, deleted with it.
    variants: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean_key(self.path)  # a record read from a database never names a path out of the store
        for path in self.variants.values():
            clean_key(path)

    @property
    def paths(self) -> list[str]:
        """Every file the record names: its own path, then its variants'."""
        return [self.path, *self.variants.values()]

    def variant(self, name: str) -> FileRecord:
        """The variant ``name`` as a record of its own (``.absolute_url``, ``.url(expires)``,
        ``.open()``: served and signed as any stored file).

        :raises KeyError: naming the variants it has, when it has none of that name.
        """
        path = self.variants.get(name)
        if path is None:
            raise KeyError(
                f"{self.path!r} has no variant {name!r} (it has {sorted(self.variants)})"
            )
        return FileRecord(self.storage, path, content_type=content_type(path))

    # --- JSON -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The record as the column stores it."""
        data = dataclasses.asdict(self)
        data["stored_at"] = self.stored_at.isoformat() if self.stored_at else None
        return data

    @classmethod
    def from_json(cls, data: Any, storage: str = DEFAULT) -> FileRecord:
        """A record from what a column holds: a record's JSON object, or a bare path (what a
        ``StoreType`` column wrote), taken as a file of ``storage``.

        :raises StoreError: for anything else.
        """
        if isinstance(data, str):
            return cls(storage, data, content_type=content_type(data))
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            raise StoreError(f"not a stored file's record: {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("storage", storage)
        if isinstance(values.get("stored_at"), str):
            values["stored_at"] = datetime.fromisoformat(values["stored_at"])
        values["metadata"] = dict(values.get("metadata") or {})
        values["variants"] = {str(k): str(v) for k, v in (values.get("variants") or {}).items()}
        return cls(**values)

    @classmethod
    def of(cls, provider: Provider, storage: str) -> FileRecord:
        """The record of a saved ``provider`` of ``storage``: what its save counted, and the
        variants made of it (:attr:`Provider.variants`)."""
        return cls(
            storage,
            provider.relative_path,
            size=provider.size,
            content_type=provider.content_type,  # found in its bytes when a rule sniffed them
            sha256=provider.sha256,
            filename=provider.client_filename,
            stored_at=datetime.now(UTC),
            variants=provider.variants,
        )

    # --- the provider API, in the current app -----------------------------------------------------

    def state(self) -> StoreState:
        """The storage holding the file, in the current app.

        :raises StoreError: outside an app context, or if the app has no such storage.
        """
        return storage_named(self.storage, f"the record of {self.path!r}")

    @property
    def provider(self) -> Any:
        """The file's provider in the current app: async in Quart, the sync shim in Flask."""
        return self.state().Provider(self.path)

    @property
    def relative_path(self) -> str:
        return self.path

    @property
    def absolute_url(self) -> str:
        return str(self.provider.absolute_url)

    @property
    def relative_url(self) -> str:
        return str(self.provider.relative_url)

    def url(self, expires: int | None = None, **options: Any) -> Any:
        """See ``Provider.url`` (awaitable in Quart, a str in Flask)."""
        return self.provider.url(expires, **options)

    def open(self) -> Any:
        """See ``Provider.open`` (``async with`` in Quart, ``with`` in Flask)."""
        return self.provider.open()

    def exists(self) -> Any:
        """See ``Provider.exists``."""
        return self.provider.exists()

    def info(self) -> Any:
        """See ``Provider.info``: what the backend knows of the file now."""
        return self.provider.info()
