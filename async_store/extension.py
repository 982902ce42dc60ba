"""The ``Store`` extension: one object, any number of Quart or Flask apps.

``Store(app)`` or ``store.init_app(app)`` reads the app's ``STORE_*`` config once, checks it,
binds the configured provider class to it and keeps the result in ``app.extensions['store']``.
``store.Provider`` then looks up the *current* app's state on every access, so two apps with
different config each get their own provider class and paths.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._background import Background
from ._cli_hook import register_commands
from ._limits import install as describe_413s
from ._paths import load_mimetypes
from .config import Folders, defaults, read_config
from .exceptions import StoreError
from .providers import get_provider_class
from .serve import register_route
from .sync import PortalOwner
from .sync import SyncProvider as _SyncProvider

if TYPE_CHECKING:
    from flask.sansio.app import App

    from .config import StoreConfig
    from .providers.base import Provider as _Provider

__all__ = ["Store", "StoreState", "store_provider"]

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
class StoreState:
    """What ``init_app`` set up for one app; found in ``app.extensions['store']``."""

    store: Store
    config: StoreConfig
    #: The async provider class bound to this app's config.
    provider_class: type[_Provider]
    #: The sync shim class over :attr:`provider_class`.
    sync_provider_class: type[_SyncProvider]
    #: True for Quart apps: ``store.Provider`` is then the async class.
    is_async: bool

    async def startup(self) -> None:
        """Run in a long-lived loop before it stores files (Quart's before_serving)."""
        await self.provider_class.startup()
        if self.provider_class._background is not None:
            await self.provider_class._background.startup()

    async def shutdown(self) -> None:
        """Run in that loop before it ends: drain background uploads, close clients."""
        if self.provider_class._background is not None:
            await self.provider_class._background.shutdown()
        await self.provider_class.shutdown()

    @property
    def Provider(self) -> type[_Provider] | type[_SyncProvider]:
        return self.provider_class if self.is_async else self.sync_provider_class


class Store:
    """The async_store extension for Quart and Flask.

    ::

        store = Store(app)             # or: store = Store(); store.init_app(app) in a factory

        provider = store.Provider(upload)       # async in Quart, the sync shim in Flask
        provider = store.AsyncProvider(upload)  # async anywhere (Flask async def views too)

    :param app: an app to set up now; omit it and call :meth:`init_app` later.
    """

    def __init__(self, app: App | None = None) -> None:
        self._states: list[StoreState] = []
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
        provider_class, config, given = self._read_config(app)
        load_mimetypes()
        for key, value in given.items():  # the app shows what is in force
            app.config.setdefault(key, value)
        bound = provider_class.bind(config)
        if config["STORE_BACKGROUND"]:
            config["STORE_SPOOL_PATH"] = os.path.join(app.root_path, config["STORE_SPOOL_PATH"])
            bound._background = Background(config, bound, self._start_fallback_loop)
        state = StoreState(
            store=self,
            config=config,
            provider_class=bound,
            sync_provider_class=_SyncProvider.bind(bound, self._portal),
            is_async=_is_async_app(app),
        )
        app.extensions[EXTENSION_KEY] = state
        self._states.append(state)
        if not state.is_async and app.config.get("MAX_CONTENT_LENGTH") is None:
            # Flask accepts bodies of any size by default, and request.files spools whatever a
            # client sends to the temp folder: one request could fill the disk. Quart refuses
            # over 16 MiB unless told otherwise; a Flask app gets the same. (In Quart, None can
            # only be the app's own choice: left alone.)
            app.config["MAX_CONTENT_LENGTH"] = config["STORE_MAX_CONTENT_LENGTH"]
        # A 413 names the limit (MAX_CONTENT_LENGTH …), for request.files as for save_request.
        describe_413s(app, state.is_async)
        if state.is_async:
            from ._quart import install

            install(app)  # type: ignore[arg-type]  # flow control for save_request
            # Quart's serving loop is long-lived: clients and background uploads live in it.
            app.before_serving(state.startup)  # type: ignore[attr-defined]
            app.after_serving(state.shutdown)  # type: ignore[attr-defined]
        elif bound._background is not None:
            # A Flask app has no serving hook: start the shim's loop now, so what an earlier
            # run left spooled is delivered at start, not at the first request.
            self._start_fallback_loop()
        if config["STORE_SERVE_FILES"] and provider_class.register_route:
            register_route(app, state)
        register_commands(app)  # flask store …, quart store …

    # --- the seed's helpers, kept ---------------------------------------------------------------

    def check_config(self, app: App) -> None:
        """Check the app's config exactly as :meth:`init_app` does, changing nothing: no key
        written, no folder created (the seed's helper).

        :raises NotConfiguredError: naming the key, its value and what is allowed.
        """
        self._read_config(app)

    def _read_config(self, app: App) -> tuple[type[_Provider], StoreConfig, dict[str, Any]]:
        """The provider class, the checked config, and the config with every default filled
        in (what init_app writes back); no side effects."""
        provider_class = self.provider(app)
        folders = Folders(app.root_path, app.instance_path, provider_class.config_backend)
        scratch = _Scratch(app, dict(app.config))
        provider_class.app_defaults(scratch)  # type: ignore[arg-type]  # its defaults first
        given = {**defaults(folders), **scratch.config}
        extra = (*provider_class.REQUIRED_CONFIGURATION, *provider_class.config_keys)
        config = read_config(given, folders, extra)
        provider_class.check_config(config)
        return provider_class, config, given

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

    def state(self, app: App | None = None) -> StoreState:
        """The :class:`StoreState` of ``app``, else of the current app, else of ``Store(app)``'s.

        :raises StoreError: outside an app context when no app was given to the constructor.
        """
        app = app or _current_app() or self._default_app
        if app is None:
            raise StoreError(
                "No app: use the Store inside a request or app context (with app.app_context()), "
                "or create it with Store(app)."
            )
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, StoreState) or state.store is not self:
            raise StoreError(f"This Store is not registered on {app!r}: call store.init_app(app).")
        return state

    @property
    def Provider(self) -> Any:
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


class _Scratch:
    """An app's folders and a copy of its config, for provider hooks that set defaults
    (``app_defaults``) without touching the app itself."""

    def __init__(self, app: App, config: dict[str, Any]) -> None:
        self.config = config
        self.root_path = app.root_path
        self.instance_path = app.instance_path


def current_state(who: str) -> StoreState:
    """The :class:`StoreState` of the current app, whichever Store registered it.

    :raises StoreError: naming ``who`` when there is no app context or the app has no Store.
    """
    app = _current_app()
    state = app.extensions.get(EXTENSION_KEY) if app is not None else None
    if not isinstance(state, StoreState):
        raise StoreError(
            f"{who} needs an app context of an app with a Store, to know where files live: "
            f"use it inside a request, or inside 'with app.app_context()'."
        )
    return state


def store_provider() -> Any:
    """The current app's provider class (the seed's ``flask_store.store_provider()``)."""
    return current_state("store_provider()").Provider
