"""The provider base class: everything providers share, written once.

A provider is a file: a key in a storage, or an upload to save there. :meth:`Provider.save`
cleans the name, offers the storage's backend (``backends/``) a sequence of candidate names (the
client's name first, then the manual's ``{root}_{shortuuid}{ext}`` form) and records which one
the backend claimed; every other call is the backend's, which maps its own errors. Background
uploads are a backend too (``backends/background.py`` wraps the storage's), so nothing here
knows whether a save is direct.

A provider class is bound to one storage's config and backend by :meth:`Provider.bind` at
``init_app``; two apps (or two storages) get two bound classes, each with its own paths. What a
bound class knows and does for its whole storage (config, backend, loops, ``save_request``,
``files``) is in ``_class.ProviderClass``; this module is the file.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .._paths import clean_filename, clean_key, clean_location, collision_name, content_type
from .._sources import AsyncReadable, Source, SourceFailure, to_source
from .._validate import Check, Rules, rules_of
from ..backends.base import MAX_NAMES, NoFreeName, StoredFile, no_free_name
from ..exceptions import NotFoundError, StoreError
from ._class import ProviderClass, clean_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .._uploads import BackgroundUpload

__all__ = ["NoFreeName", "Provider", "StoredFile", "clean_prefix", "no_free_name"]


def url_join(*parts: str) -> str:
    """Join URL path parts with single slashes, always starting with ``/``."""
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


class Provider(ProviderClass):
    """Stores one file, or refers to one stored earlier.

    Get the class from the extension, never instantiate the base::

        provider = store.Provider((await request.files)["afile"], location="avatars")
        url = await provider.save()                 # == provider.absolute_url

        stored = store.Provider("avatars/me.jpg")    # a str names a stored file
        async with stored.open() as f:
            head = await f.read(1024)

    :param fp: the new file (a Werkzeug or Quart ``FileStorage``, a ``pathlib.Path``, ``bytes``, a
        binary file, an iterator or async iterator of bytes), or a ``str``: the relative path of a
        file stored before (what ``relative_path`` gave, what a ``StoreType`` column holds).
    :param location: a folder below ``STORE_PATH`` to save into (``'avatars/2024'``).
    :param filename: a name to use instead of the one ``fp`` carries.
    :param checksum: compute the SHA-256 of the new file while it is saved (:attr:`sha256`),
        never by reading it again.
    :param validate: :class:`~async_store.Rules` the new file must pass, over the storage's
        (``STORE_MAX_FILE_SIZE``, ``STORE_ALLOWED_EXTENSIONS``, ``STORE_ALLOWED_TYPES``,
        ``STORE_CHECK_CONTENT``): each rule given replaces the storage's, validators add to
        them. ``False``: none, not even the storage's. Checked by :meth:`save` as the bytes
        stream in (see ``docs/validation.md``).
    :raises UnsafePathError: if ``location`` or a stored path would leave the store.
    :raises TypeError: if ``fp`` is ``None`` or of an unsupported type.
    """

    #: The storage's validation rules, made from its config on first use (storage_rules()).
    _storage_rules: ClassVar[Rules]

    # --- instances ------------------------------------------------------------------------------

    def __init__(
        self,
        fp: Any = None,
        location: str | None = None,
        *,
        filename: str | None = None,
        checksum: bool = False,
        validate: Rules | Literal[False] | None = None,
    ) -> None:
        if not hasattr(type(self), "config"):
            raise StoreError(
                f"{type(self).__name__} is not bound to an app: use store.Provider(...) (after "
                f"Store(app) or store.init_app(app)) instead of instantiating it directly."
            )
        self._source: Source | None = None
        self._background_upload: BackgroundUpload | None = None
        self._variants: dict[str, str] = {}
        self._saved = self._from_path = isinstance(fp, str)
        if isinstance(fp, str):
            key = clean_key("/".join(p for p in (clean_location(location), fp) if p))
            self._location, _, self._filename = key.rpartition("/")
        else:
            self._source = to_source(fp, filename, self.backend.chunk_size)
            if checksum:
                self._source.digest = hashlib.sha256()
            self._location = clean_location(location) if location else ""
            self._filename = clean_filename(self._source.filename)
            if validate is not False:
                rules = self.storage_rules()
                rules = rules.merged(validate) if validate is not None else rules
                if rules:
                    self._source.check = Check(rules, self._filename, self._source.filename)

    @classmethod
    def storage_rules(cls) -> Rules:
        """The validation rules of this provider's storage (its ``STORE_*`` keys)."""
        rules = cls.__dict__.get("_storage_rules")
        if rules is None:  # made once per bound class, from its checked config
            rules = rules_of(cls.config)
            cls._storage_rules = rules
        return rules

    def __repr__(self) -> str:
        state = "" if self._saved else "unsaved "
        return f"<{type(self).__name__} {state}{self.relative_path!r}>"

    @property
    def filename(self) -> str:
        """The file's name: the cleaned client name before :meth:`save`, the final one after."""
        return self._filename

    @property
    def client_filename(self) -> str | None:
        """The name the upload came with (``FileStorage.filename``, a path's name, or
        ``filename=``) before it was cleaned: ``'Contract (final).pdf'``; None when it had none,
        and for a provider of a stored path."""
        return self._source.filename if self._source is not None else None

    @property
    def location(self) -> str:
        """The folder below ``STORE_PATH`` (``''`` for the top)."""
        return self._location

    @property
    def relative_path(self) -> str:
        """``location/filename``: what to keep in a database to find the file again."""
        return f"{self._location}/{self._filename}" if self._location else self._filename

    @property
    def absolute_path(self) -> str:
        """The full path on disk, or the full key in a bucket.

        :raises StoreError: before :meth:`save`: until then the name is not final, and another
            file may be stored under it.
        """
        self._require_saved()
        return self._absolute_path(self.relative_path)

    @property
    def relative_url(self) -> str:
        """The URL without the domain: ``/uploads/avatars/me.jpg``.

        :raises StoreError: before :meth:`save` (a forgotten ``await``), as :attr:`absolute_path`.
        """
        self._require_saved()
        return self.backend.url(self.relative_path, relative=True)

    @property
    def absolute_url(self) -> str:
        """``STORE_DOMAIN`` + :attr:`relative_url`; just the relative URL without a domain.

        :raises StoreError: before :meth:`save` (a forgotten ``await``), as :attr:`absolute_path`.
        """
        self._require_saved()
        return self.backend.url(self.relative_path)

    def url_join(self, *parts: str) -> str:
        """Join URL path parts (the seed's helper)."""
        return url_join(*parts)

    @property
    def size(self) -> int | None:
        """The bytes :meth:`save` stored, counted as they streamed in; None before the save,
        and for a provider made from a stored path (:meth:`info` asks the backend)."""
        source = self._source
        return source.bytes_read if source is not None and self._saved else None

    @property
    def content_type(self) -> str:
        """The file's MIME type: the one found in its bytes when a check sniffed them (the
        rules ``types``, ``check_content`` or validators), else the one its name gives."""
        source = self._source
        detected = source.content_type if source is not None else None
        return detected or content_type(self._filename)

    @property
    def sha256(self) -> str | None:
        """The SHA-256 (hex) of the bytes :meth:`save` stored, computed as they streamed in,
        when the provider was made with ``checksum=True``; else None."""
        source = self._source
        if source is None or source.digest is None or not self._saved:
            return None
        return str(source.digest.hexdigest())

    async def info(self) -> StoredFile:
        """What the backend knows of the stored file: its size, modification time, content
        type, and SHA-256 where the backend keeps one (an S3 object stored with a checksum).

        :raises NotFoundError: if nothing is stored at :attr:`relative_path`.
        """
        self._require_saved()
        return await self.backend.stat(self.relative_path)

    @property
    def variants(self) -> dict[str, str]:
        """The paths of the image variants :func:`~async_store.make_variants` made of this file,
        by the variant's name (``{'thumb': 'demo/_variants/cat.jpg/thumb.webp'}``); empty until
        then, and for a file that is no image. A tus upload's provider has its storage's
        (``STORE_IMAGE_VARIANTS``). They follow the file: its record (a ``FileType`` column it
        is assigned to) lists them, and :meth:`delete` deletes them with it. A copy: changing
        it changes nothing."""
        return dict(self._variants)

    def _add_variants(self, made: dict[str, str]) -> None:
        """What ``make_variants`` made of this saved file (its one writer)."""
        self._variants = {**self._variants, **made}

    @property
    def saved(self) -> bool:
        """True once the file is stored (always, for a provider made from a stored path)."""
        return self._saved

    def _candidates(self) -> Iterator[str]:
        yield self._filename
        for _ in range(MAX_NAMES):
            yield collision_name(self._filename)

    async def save(self) -> str:
        """Store the file under a name no other file has, and return its :attr:`absolute_url`.

        The file is streamed, never held in memory whole; nothing is visible at the final name
        until the whole file is there, and a failed or cancelled save leaves nothing behind.
        The client's (cleaned) name is kept when free, otherwise the file gets the form
        ``{root}_{shortuuid}{ext}``; :attr:`filename` tells which.

        With ``STORE_BACKGROUND`` on, it returns once the file is spooled to local disk, name
        and URL already final; the transfer runs in the background (see :meth:`wait`).

        :raises StoreError: if this provider has no new file (already saved, or made from a path).
        :raises BadUploadError: refused by the validation rules, as soon as they were broken
            (``FileTooLargeError``, ``DisallowedTypeError``, ``ContentMismatchError``,
            ``InvalidFileError``): nothing is stored, nothing is left.
        :raises ProviderError: if the backend fails (disk full, permission denied, …).
        """
        source = self._unsaved_source()
        try:
            # The rules (if any) on what is known before a byte is written: nothing to clean up.
            if source.check is not None:
                await source.prime(self.backend.chunk_size)
            written = await self.backend.save(self._location, self._candidates(), source)
        except SourceFailure as failure:  # an error of the upload's: raised as itself
            raise failure.error from failure.error.__cause__
        self._filename, self._background_upload = written.name, written.upload
        self._saved = True
        return self.backend.url(self.relative_path)  # absolute_url, known saved

    def save_blocking(self) -> str | None:
        """:meth:`save` in the calling thread, with no event loop, when this provider can: a
        blocking upload (a ``FileStorage``, bytes, a path, a file) and a backend that writes
        blocking (local disk, memory). Returns the URL, or None, having read nothing, when it
        cannot: then ``await save()``. The sync shim's ``save()`` tries it first.

        :raises StoreError: as :meth:`save`.
        """
        source = self._source
        if not (self.backend.writes_blocking and source is not None and source.is_blocking):
            return None
        if source.check is not None and source.check.has_validators:
            return None  # they may be async: a loop runs them
        source = self._unsaved_source()
        try:
            if source.check is not None:
                source.prime_blocking(self.backend.chunk_size)
            self._filename = self.backend.write_blocking(self._location, self._candidates(), source)
        except SourceFailure as failure:  # as in save()
            raise failure.error from failure.error.__cause__
        self._saved = True
        return self.backend.url(self.relative_path)

    def _unsaved_source(self) -> Source:
        """The upload :meth:`save` stores, or a :class:`StoreError` saying why there is none."""
        if self._from_path:
            raise StoreError(
                f"{self!r} has nothing to save: a str names a file stored before (its "
                f"relative_path), it is not content. To store a file from disk pass "
                f"pathlib.Path({self.relative_path!r}); to store text pass bytes (text.encode())."
            )
        if self._saved:
            raise StoreError(f"{self!r} has nothing to save: save() stored it already")
        source = self._source
        if source is None or source.used:
            raise StoreError(f"{self!r}: an earlier save failed after reading the upload")
        return source

    async def exists(self, filename: str | None = None) -> bool:
        """Whether a file is stored as ``filename`` in this provider's location (default: its own).

        :raises UnsafePathError: if ``filename`` is not a plain relative name.
        """
        key = self.relative_path
        if filename is not None:
            key = clean_key(f"{self._location}/{filename}" if self._location else filename)
        return await self.backend.exists(key)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncReadable]:
        """Open the stored file for streamed reading: ``async with p.open() as f: await f.read(n)``.

        :raises NotFoundError: if nothing is stored at :attr:`relative_path`.
        """
        self._require_saved()
        async with self.backend.open(self.relative_path) as f:
            yield f

    async def delete(self, *, missing_ok: bool = False) -> None:
        """Delete the stored file, and the image variants it has (:attr:`variants`): a
        thumbnail never outlives its original.

        :param missing_ok: do not raise when the file is already gone (a variant already
            gone never raises).
        :raises NotFoundError: if nothing is stored there (unless ``missing_ok``).
        """
        self._require_saved()
        try:
            # With background uploads, a file still spooled (by this provider's save or any
            # earlier one) has its upload cancelled instead: it never reaches the store.
            await self.backend.delete(self.relative_path)
        except NotFoundError:
            if not missing_ok:
                await self._delete_variants()
                raise
        await self._delete_variants()

    async def _delete_variants(self) -> None:
        for path in self._variants.values():
            with contextlib.suppress(NotFoundError):
                await self.backend.delete(path)
        self._variants = {}

    @property
    def upload(self) -> BackgroundUpload | None:
        """The background upload this provider's :meth:`save` started; for a provider of a
        path (a loaded column, a file record), the upload of that path this process still has
        under way. None for a direct save, or once a path's upload has ended."""
        if self._background_upload is None and self._saved:
            return self.backend.pending(self.relative_path)
        return self._background_upload

    @property
    def status(self) -> str:
        """``'unsaved'``, ``'stored'``, or a background upload's ``'pending'``, ``'delivered'``,
        ``'failed'`` or ``'discarded'`` (deleted before it was delivered)."""
        upload = self.upload
        if upload is not None:
            return upload.status
        return "stored" if self._saved else "unsaved"

    async def wait(self) -> None:
        """Wait until a background upload is delivered (see :attr:`upload`: a provider of a
        path waits for that path's upload too); returns at once for a direct save. Bound it
        with ``anyio.fail_after`` or ``asyncio.timeout``.

        :raises UploadError: if the background upload failed (it stays spooled for retry).
        """
        upload = self.upload
        if upload is not None:
            await upload.wait()

    async def url(
        self,
        expires: int | None = None,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A URL to fetch the file: :attr:`absolute_url`, or, for ``expires`` seconds on a
        backend that signs, a signed URL, which may carry response overrides. S3: a presigned
        GET, SigV4, for the host of :attr:`absolute_url` without ``STORE_DOMAIN``. Local:
        :attr:`absolute_url` with an expiry and an HMAC of the app's ``SECRET_KEY``, which the
        serving route checks (needed with ``STORE_SERVE_SIGNED_ONLY``). A file of an active type
        (HTML, SVG, XML, scripts) is downloaded through a signed URL, never shown.

        :param expires: seconds a signed URL stays valid (S3: at most 604800, SigV4's limit;
            local: at most a year).
        :param download_name: (signed URLs) download under this name, as an attachment.
        :param content_type: (signed URLs) the ``Content-Type`` to answer with.
        :raises ValueError: for ``expires`` out of range, a bad override, or the overrides
            without ``expires``.
        :raises NotConfiguredError: (local) naming ``SECRET_KEY`` when the app has none.
        :raises StoreError: (local) when the storage's route is off (``STORE_SERVE_FILES``), or
            when the backend cannot sign links at all (the memory backend).
        """
        if expires is None:
            if download_name is not None or content_type is not None:
                raise ValueError(
                    "download_name= and content_type= need expires=: only a signed URL can "
                    "carry them"
                )
            return self.absolute_url
        if not self.backend.signs:
            # A permanent URL where an expiring one was asked for would outlive its purpose.
            raise StoreError(
                f"{type(self.backend).__name__} does not sign links, so url(expires=...) cannot "
                f"give an expiring one for {self.relative_path!r}; use url() for its permanent URL"
            )
        self._require_saved()
        return await self.backend.sign(
            self.relative_path, expires, download_name=download_name, content_type=content_type
        )

    def _require_saved(self) -> None:
        if not self._saved:
            raise StoreError(
                f"{self!r} is not saved yet: await save() first (its name is final only then, "
                f"and another file may be stored under {self.relative_path!r})"
            )

    def _absolute_path(self, key: str) -> str:
        return self.backend.absolute_path(key)
