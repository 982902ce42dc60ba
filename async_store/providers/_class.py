"""The class-level half of a provider: what a bound provider class knows of its storage (its
config, its backend, the event loops it serves) and what it does for the whole storage
(:meth:`~ProviderClass.save_request`, :meth:`~ProviderClass.files`).

:class:`~async_store.providers.base.Provider` (the file) derives from it; ``Provider.bind``
makes the per-storage subclass ``store.Provider`` is.
"""

from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

from .. import _ingest
from .._paths import clean_key
from ..exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Collection, Mapping
    from typing import Literal

    from flask.sansio.app import App

    from .._ingest import StoredForm
    from .._validate import Rules
    from ..backends.base import Backend, StoredFile
    from ..config import StoreConfig
    from .base import Provider

__all__ = ["ProviderClass", "clean_prefix"]


def clean_prefix(prefix: str) -> str:
    """Check a listing prefix (``'avatars/'``, ``'avatars/2024'``, ``''``) like a stored path.

    :raises UnsafePathError: for ``..``, hidden segments, backslashes and the like.
    """
    prefix = prefix.lstrip("/")
    stem = prefix.rstrip("/")
    return clean_key(stem) + prefix[len(stem) :][:1] if stem else ""


class ProviderClass(ABC):
    """A provider class's storage: config, backend and the storage-wide calls (see
    :class:`~async_store.providers.base.Provider`, which derives from it)."""

    #: Config keys that must be set (not None, not empty) for ``init_app`` to succeed.
    REQUIRED_CONFIGURATION: ClassVar[tuple[str, ...]] = ()
    #: Which keys of the config table (``async_store.config.SETTINGS``) apply besides the
    #: shared ones: ``"local"``, ``"s3"``, or None for a provider with keys of its own.
    config_backend: ClassVar[str | None] = None
    #: Other ``STORE_*`` keys this provider reads (not warned about as unknown).
    config_keys: ClassVar[tuple[str, ...]] = ()
    #: Whether the extension registers the file-serving route for this provider.
    register_route: ClassVar[bool] = False
    #: Whether saving needs the long-lived event loop the provider's clients live in (an S3
    #: session does). A provider without such clients sets it False: the sync shim then runs
    #: its saves in the calling thread, with no handoff to the shim's loop thread.
    loop_bound: ClassVar[bool] = True
    #: The app's ``STORE_*`` config; set on the per-app subclass :meth:`bind` makes.
    config: ClassVar[StoreConfig]
    #: The backend class a bound provider makes its :attr:`backend` from.
    backend_class: ClassVar[type[Backend] | None] = None
    #: The storage's backend (the I/O; the background wrapper with ``STORE_BACKGROUND``); set
    #: on the per-storage subclass :meth:`bind` makes.
    backend: ClassVar[Backend]

    # --- configuration, at init_app -----------------------------------------------------------

    @classmethod
    def app_defaults(cls, app: App) -> None:
        """Set this provider's config defaults on ``app.config`` (with ``setdefault``)."""
        return None  # an optional hook: the shared defaults live in async_store.config

    @classmethod
    def check_config(cls, config: StoreConfig) -> None:
        """Check the app's config; raise :class:`NotConfiguredError` naming the key and the fix.

        The base checks :attr:`REQUIRED_CONFIGURATION`; subclasses add their own checks and may
        normalise values (the local provider makes ``STORE_PATH`` absolute). Checks only:
        ``Store.check_config`` runs it too, so it creates no folder and opens no connection.
        """
        for key in cls.REQUIRED_CONFIGURATION:
            if config.get(key) in (None, ""):
                raise NotConfiguredError(
                    f"{key} is required by {cls.__name__}: set app.config[{key!r}] before "
                    f"calling Store(app) or store.init_app(app)."
                )

    @classmethod
    def bind(cls, config: StoreConfig, backend: Backend) -> type[Self]:
        """Return a subclass of this provider bound to one storage's ``config`` and
        ``backend`` (``init_app`` makes it from :attr:`backend_class`)."""
        namespace: dict[str, Any] = {
            "config": config,
            "backend": backend,
            "loop_bound": backend.loop_bound,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        return type(cls.__name__, (cls,), namespace)

    @classmethod
    async def startup(cls) -> None:
        """Called in a long-lived event loop before it stores files: Quart's serving loop, or
        the sync shim's loop. Providers with loop-bound clients keep one for that loop."""
        await cls.backend.enter_loop()

    @classmethod
    async def shutdown(cls) -> None:
        """Called in that loop before it ends: close its clients."""
        await cls.backend.leave_loop()

    @classmethod
    async def save_request(
        cls,
        request: Any = None,
        *,
        fields: Collection[str] | None = None,
        location: str | None = None,
        max_size: int | None = None,
        max_file_size: int | None = None,
        max_parts: int | None = None,
        max_field_size: int | None = None,
        checksum: bool = False,
        validate: Rules | Literal[False] | Mapping[str, Rules | Literal[False]] | None = None,
    ) -> StoredForm[Self]:
        """Store every file of a ``multipart/form-data`` request as its body arrives.

        Faster than ``request.files`` and lighter on memory and disk: each file is parsed out of
        the body and streamed straight into the store, never spooled to a temp file first::

            stored = await store.Provider.save_request(fields=["avatar"], location="avatars")
            url = stored.files["avatar"].absolute_url
            caption = stored.form.get("caption")

        All or nothing: if anything fails, the files already stored are deleted and nothing is
        left half-written. Call it *instead of* reading ``request.files`` / ``request.form``.

        :param request: the request (default: the current one, Quart's or Flask's).
        :param fields: the file fields to store; a file in any other field is refused (400).
            ``None`` stores every file. Text fields are always collected.
        :param location: the folder to store the files in, as for ``Provider(location=...)``.
        :param max_size: the most bytes the whole body may have; default the app's
            ``MAX_CONTENT_LENGTH`` (Quart and Flask enforce that one themselves too).
        :param max_file_size: the most bytes each file may have (default: no limit of its own).
        :param max_parts: the most parts (files and text fields); default ``MAX_FORM_PARTS``
            or 1000.
        :param max_field_size: the most bytes a text field may have (they are held in memory);
            default ``MAX_FORM_MEMORY_SIZE`` or 500,000.
        :param checksum: compute each file's SHA-256 as it streams in (``provider.sha256``;
            a ``FileType`` record keeps it), as ``Provider(..., checksum=True)`` does.
        :param validate: :class:`~async_store.Rules` every file must pass, over the storage's,
            as ``Provider(..., validate=...)``; or a dict of them by field name
            (``{"avatar": Rules(types=["image/*"])}``; a field not in it gets the storage's).
            A file that breaks one stops the read of the body at once; the files stored
            before it are deleted.
        :raises BadUploadError: (a 400) not multipart, malformed, cut short, unexpected field;
            its subclasses for a file the rules refuse (413, 415, 422).
        :raises UploadTooLargeError: (a 413) over one of the limits.
        :raises ProviderError: if the backend fails.
        """
        stored = await _ingest.save_request(
            cast("type[Provider]", cls),
            _ingest.current_request() if request is None else request,
            fields=fields,
            location=location,
            max_size=max_size,
            max_file_size=max_file_size,
            max_parts=max_parts,
            max_field_size=max_field_size,
            checksum=checksum,
            validate=validate,
        )
        return cast("StoredForm[Self]", stored)

    @classmethod
    async def files(cls, prefix: str = "") -> AsyncGenerator[StoredFile, None]:
        """Every stored file whose relative path starts with ``prefix``, in the backend's order::

            async for file in store.Provider.files("avatars/"):
                print(file.path, file.size, file.modified)

        Temp files of saves in progress and hidden files are never listed. The order is path
        order (UTF-8 byte order) on local disk, AWS S3 and MinIO; some S3-compatible servers
        differ (SeaweedFS lists a folder's files where the folder's name sorts). It is streamed
        as the backend lists it, never collected to be sorted.

        :param prefix: a path prefix below ``STORE_PATH``, as in S3 (``'avatars/'`` is the
            folder, ``'avatars'`` also matches ``avatars.txt``); ``''`` lists everything.
        :raises UnsafePathError: if ``prefix`` would leave the store.
        :raises ProviderError: if the backend fails.
        """
        async for file in cls.backend.list(clean_prefix(prefix)):
            yield file
