"""The ``Store`` extension: one object, any number of Quart or Flask apps.

``Store(app)`` or ``store.init_app(app)`` reads the app's ``STORE_*`` config once, checks it,
binds the configured provider class to it and keeps the result in ``app.extensions['store']``:
one :class:`StoreState` per storage (the ``default`` one of the ``STORE_*`` keys, and those
``STORE_STORAGES`` names). ``store.Provider`` then looks up the *current* app's state on every
access, so two apps with different config each get their own provider class and paths, and
``store['documents'].Provider`` is another storage's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, cast, overload

from ._app_config import read_storages
from ._background import Background
from ._cli_hook import register_commands
from ._limits import install as describe_413s
from ._paths import load_mimetypes
from ._storages import DEFAULT
from .backends.background import BackgroundBackend, background_of
from .config import Folders, defaults
from .exceptions import NotConfiguredError, StoreError
from .providers import get_provider_class
from .serve import register_route
from .sync import PortalOwner
from .sync import SyncProvider as _SyncProvider

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:  # TypeVar(default=...): PEP 696
    from typing_extensions import TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask
    from flask.sansio.app import App
    from quart import Quart

    from ._validate import Rules
    from .backends.base import Backend
    from .config import StoreConfig
    from .direct import DirectUploads
from .providers.base import Provider as _Provider

__all__ = ["AsyncStore", "Store", "StoreState", "SyncStore", "store_provider"]

#: What ``store.Provider`` is: the async provider class for a Quart app's Store, the sync shim's
#: for a Flask app's; either, for a ``Store()`` made before its app (annotate it:
#: ``store: AsyncStore = Store()``).
P = TypeVar(
    "P",
    bound="type[_Provider] | type[_SyncProvider]",
    default="type[_Provider] | type[_SyncProvider]",
    covariant=True,
)

EXTENSION_KEY = "store"


def _is_async_app(app: App) -> bool:
    quart = sys.modules.get("quart")
    return quart is not None and isinstance(app, quart.Quart)


def _current_app() -> App | None:
    # Quart and Flask keep separate app contexts; look in whichever is loaded.
    for name in ("quart", "flask"):
        module = sys.modules.get(name)
        if module is not None and module.has_app_context():
            return module.current_app._get_current_object()  # type: ignore[no-any-return]
    return None


@dataclass(eq=False)
class StoreState(Generic[P]):
    """What ``init_app`` set up for one storage of an app: the default storage's is in
    ``app.extensions['store']``, every storage's in its :attr:`storages`."""

    store: Store
    config: StoreConfig
    #: The async provider class bound to this storage's config.
    provider_class: type[_Provider]
    #: The sync shim class over :attr:`provider_class`.
    sync_provider_class: type[_SyncProvider]
    #: True for Quart apps: ``store.Provider`` is then the async class.
    is_async: bool
    #: The storage's name: ``'default'`` for the ``STORE_*`` keys, else its ``STORE_STORAGES``
    #: key.
    name: str = DEFAULT
    #: The app's storages by name, this one included.
    storages: dict[str, StoreState[P]] = field(default_factory=dict, repr=False)
    #: Its direct uploads, once :meth:`Store.direct_uploads` mounted them.
    direct_uploads: DirectUploads | None = field(default=None, repr=False)

    async def startup(self) -> None:
        """Run in a long-lived loop before it stores files (Quart's before_serving): the
        backend's clients for it (and its background deliveries)."""
        await self.provider_class.startup()

    async def shutdown(self) -> None:
        """Run in that loop before it ends: drain background uploads, close clients."""
        await self.provider_class.shutdown()

    @property
    def background(self) -> Background | None:
        """The storage's background uploads (spool, deliveries), if ``STORE_BACKGROUND`` is on."""
        backend = getattr(self.provider_class, "backend", None)
        return background_of(backend) if backend is not None else None

    @cached_property
    def Provider(self) -> P:
        """This storage's provider class: async in Quart, the sync shim in Flask."""
        return cast("P", self.provider_class if self.is_async else self.sync_provider_class)

    @property
    def AsyncProvider(self) -> type[_Provider]:
        """This storage's async provider class, in Quart and Flask ``async def`` views."""
        return self.provider_class

    @property
    def SyncProvider(self) -> type[_SyncProvider]:
        """This storage's sync shim class."""
        return self.sync_provider_class

    def save_request(self, request: Any = None, **options: Any) -> Any:
        """``Provider.save_request(...)`` into this storage (awaitable in Quart, blocking in
        Flask)."""
        return self.Provider.save_request(request, **options)

    def confirm(self, key: str, location: str = "", validate: Rules | None = None) -> Any:
        """Store a finished direct upload (the ``key`` its endpoints handed the client) under
        its name in ``location``, never over another file, and give its :class:`FileRecord`:
        awaitable in Quart, blocking in Flask. The storage's validation rules apply (and
        ``validate``'s over them), as for a save. See ``DirectUploads.confirm``.

        :raises StoreError: when :meth:`Store.direct_uploads` did not mount them for this storage.
        """
        uploads = self.direct_uploads
        if uploads is None:
            raise StoreError(
                f"the storage {self.name!r} has no direct uploads: mount them with "
                f"store.direct_uploads(app, storage={self.name!r}) first"
            )
        if self.is_async:
            return uploads.confirm(key, location, validate)
        return self.sync_provider_class.run(uploads.confirm, key, location, validate)

    def storage(self, name: str) -> StoreState[P]:
        """Another storage of the same app.

        :raises StoreError: naming the storages there are, when none is called ``name``.
        """
        found = self.storages.get(name)
        if found is None:
            known = ", ".join(map(repr, self.storages))
            raise StoreError(
                f"no storage named {name!r}: this app has {known} (add it to STORE_STORAGES)"
            )
        return found


class Store(Generic[P]):
    """The async_store extension for Quart and Flask.

    ::

        store = Store(app)             # or: store = Store(); store.init_app(app) in a factory

        provider = store.Provider(upload)       # async in Quart, the sync shim in Flask
        provider = store.AsyncProvider(upload)  # async anywhere (Flask async def views too)

    :param app: an app to set up now; omit it and call :meth:`init_app` later.

    Typed: ``Store(quart_app).Provider`` is the async provider class, ``Store(flask_app)``'s
    the sync shim's; a ``Store()`` made before its app says which in its annotation
    (``store: AsyncStore = Store()``, or ``SyncStore``).
    """

    @overload
    def __init__(self: Store[type[_Provider]], app: Quart) -> None: ...
    @overload
    def __init__(self: Store[type[_SyncProvider]], app: Flask) -> None: ...
    @overload
    def __init__(self, app: App | None = None) -> None: ...

    def __init__(self, app: App | None = None) -> None:
        self._states: list[StoreState[Any]] = []
        self._portal = PortalOwner(self._start_sync_loop, self._stop_sync_loop)
        self._default_app: App | None = None
        if app is not None:
            self.init_app(app)
            self._default_app = app

    def init_app(self, app: App) -> None:
        """Read and check the app's ``STORE_*`` config and register what the provider needs.

        :raises NotConfiguredError: naming the key and the fix, if the config is missing or wrong.
        :raises StoreError: if a Store is already registered on ``app``.
        """
        if EXTENSION_KEY in app.extensions:
            raise StoreError(
                "A Store is already registered on this app: call init_app once per app, and "
                "use the same Store object everywhere (store.Provider follows the current app)."
            )
        read = read_storages(app)
        load_mimetypes()
        for key, value in read[0].given.items():  # the app shows what is in force
            app.config.setdefault(key, value)
        is_async = _is_async_app(app)
        storages: dict[str, StoreState[Any]] = {}
        for spec, provider_class, config, _ in read:
            bound = provider_class.bind(config, self._backend(app, provider_class, config))
            storages[spec.name] = StoreState(
                store=self,
                config=config,
                provider_class=bound,
                sync_provider_class=_SyncProvider.bind(bound, self._portal),
                is_async=is_async,
                name=spec.name,
                storages=storages,
            )
        state = storages[DEFAULT]
        app.extensions[EXTENSION_KEY] = state
        self._states.extend(storages.values())
        if not is_async and app.config.get("MAX_CONTENT_LENGTH") is None:
            # Flask accepts bodies of any size by default, and request.files spools whatever a
            # client sends to the temp folder: one request could fill the disk. Quart refuses
            # over 16 MiB unless told otherwise; a Flask app gets the same. (In Quart, None can
            # only be the app's own choice: left alone.)
            app.config["MAX_CONTENT_LENGTH"] = state.config["STORE_MAX_CONTENT_LENGTH"]
        # A 413 names the limit (MAX_CONTENT_LENGTH …), for request.files as for save_request.
        describe_413s(app, is_async)
        if is_async:
            from ._quart import install

            install(app)  # type: ignore[arg-type]  # flow control for save_request
            # Quart's serving loop is long-lived: clients and background uploads live in it.
            for each in storages.values():
                app.before_serving(each.startup)  # type: ignore[attr-defined]
                app.after_serving(each.shutdown)  # type: ignore[attr-defined]
        elif any(each.background for each in storages.values()):
            # A Flask app has no serving hook: start the shim's loop now, so what an earlier
            # run left spooled is delivered at start, not at the first request.
            self._start_fallback_loop()
        for each in storages.values():
            if each.config["STORE_SERVE_FILES"] and each.provider_class.register_route:
                register_route(app, each)
        register_commands(app)  # flask store …, quart store …

    def _backend(self, app: App, provider_class: type[_Provider], config: StoreConfig) -> Backend:
        """A storage's backend: its provider's kind, wrapped for background uploads."""
        if provider_class.backend_class is None:
            raise NotConfiguredError(
                f"{provider_class.__name__} (STORE_PROVIDER) has no backend: a provider stores "
                f"through a Backend object, named by its backend_class (see the README's "
                f"'Backends'): class {provider_class.__name__}(Provider): "
                f"backend_class = MyBackend."
            )
        backend = provider_class.backend_class(config)
        if not config["STORE_BACKGROUND"]:
            return backend
        config["STORE_SPOOL_PATH"] = os.path.join(app.root_path, config["STORE_SPOOL_PATH"])
        background = Background(config, backend, self._start_fallback_loop)
        return BackgroundBackend(backend, background)

    # --- the seed's helpers, kept ---------------------------------------------------------------

    def check_config(self, app: App) -> None:
        """Check the app's config exactly as :meth:`init_app` does, changing nothing: no key
        written, no folder created (the seed's helper).

        :raises NotConfiguredError: naming the key, its value and what is allowed.
        """
        read_storages(app)

    def provider(self, app: App) -> type[_Provider]:
        """The (unbound) provider class ``STORE_PROVIDER`` names for ``app``."""
        return get_provider_class(app.config.get("STORE_PROVIDER", "local"))

    def set_provider_defaults(
        self, app: App, provider_class: type[_Provider] | None = None
    ) -> None:
        """Write the provider's config defaults into ``app.config`` (the seed's helper)."""
        provider_class = provider_class or self.provider(app)
        folders = Folders(app.root_path, app.instance_path, provider_class.config_backend)
        for key, value in defaults(folders).items():
            app.config.setdefault(key, value)
        provider_class.app_defaults(app)

    # --- per-app lookups --------------------------------------------------------------------------

    def state(self, app: App | None = None, storage: str = DEFAULT) -> StoreState[P]:
        """The :class:`StoreState` of a storage (default: the ``STORE_*`` keys' one) of
        ``app``, else of the current app, else of ``Store(app)``'s.

        :raises StoreError: outside an app context when no app was given to the constructor,
            or when the app has no storage of that name.
        """
        app = app or _current_app() or self._default_app
        if app is None:
            raise StoreError(
                "No app: use the Store inside a request or app context (with app.app_context()), "
                "or create it with Store(app)."
            )
        state: StoreState[P] | None = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, StoreState) or state.store is not self:
            raise StoreError(f"This Store is not registered on {app!r}: call store.init_app(app).")
        return state if storage == DEFAULT else state.storage(storage)

    def __getitem__(self, storage: str) -> StoreState[P]:
        """A storage of the current app: ``store['documents'].Provider(upload)``.

        :raises StoreError: when the app has no storage of that name.
        """
        return self.state(storage=storage)

    @property
    def Provider(self) -> P:
        """The current app's provider class: async in Quart, the sync shim in Flask."""
        return self.state().Provider

    @property
    def AsyncProvider(self) -> type[_Provider]:
        """The current app's async provider class, for Quart and for Flask ``async def`` views."""
        return self.state().provider_class

    @property
    def SyncProvider(self) -> type[_SyncProvider]:
        """The current app's sync shim class, in Flask and in Quart's sync code alike."""
        return self.state().sync_provider_class

    def direct_uploads(
        self,
        app: App,
        storage: str = DEFAULT,
        *,
        url_prefix: str = "/direct-uploads",
        authorize: Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> Any:
        """Mount direct-to-bucket uploads into the S3 storage ``storage`` on ``app``: the
        endpoints Uppy's ``@uppy/aws-s3`` plugin calls (its ``endpoint`` is ``url_prefix``),
        within the storage's ``STORE_DIRECT_*`` limits; then ``store[storage].confirm(key)``
        stores what arrived. The registered blueprint is returned.

        :param authorize: ``authorize(request)`` (sync, or async in Quart) decides who may
            upload: falsy is a 403. Without it, anyone who can reach the endpoints may.
        :raises NotConfiguredError: when the storage is not on S3, or the app has no
            ``SECRET_KEY`` (the staged keys are signed with it).
        """
        from .direct import mount

        state = self.state(app, storage)
        blueprint_name = name or (
            "store_direct" if storage == DEFAULT else f"store_direct_{storage}"
        )
        return mount(app, state, url_prefix=url_prefix, authorize=authorize, name=blueprint_name)

    def save_request(self, request: Any = None, **options: Any) -> Any:
        """``store.Provider.save_request(...)``: store every file of a multipart request as it
        arrives (awaitable in Quart, blocking in Flask; see :meth:`Provider.save_request`)."""
        return self.Provider.save_request(request, **options)

    async def _start_sync_loop(self) -> None:
        for state in list(self._states):
            await state.startup()

    async def _stop_sync_loop(self) -> None:
        for state in list(self._states):
            await state.shutdown()

    def _start_fallback_loop(self) -> None:
        self._portal.portal  # noqa: B018 - starting it runs every state's startup there

    def close(self) -> None:
        """Stop the sync shim's event-loop thread (it also stops at interpreter exit)."""
        self._portal.close()


#: A Store of a Quart app (``store.Provider`` is async), for a ``Store()`` made before its app.
AsyncStore = Store[type[_Provider]]
#: A Store of a Flask app (``store.Provider`` is the sync shim).
SyncStore = Store[type[_SyncProvider]]


def current_state(who: str, storage: str = DEFAULT) -> StoreState[Any]:
    """The :class:`StoreState` of a storage of the current app, whichever Store registered it.

    :raises StoreError: naming ``who`` when there is no app context or the app has no Store.
    """
    app = _current_app()
    state: StoreState[Any] | None = app.extensions.get(EXTENSION_KEY) if app is not None else None
    if not isinstance(state, StoreState):
        raise StoreError(
            f"{who} needs an app context of an app with a Store, to know where files live: "
            f"use it inside a request, or inside 'with app.app_context()'."
        )
    return state if storage == DEFAULT else state.storage(storage)


def store_provider() -> Any:
    """The current app's provider class (the seed's ``flask_store.store_provider()``)."""
    return current_state("store_provider()").Provider
