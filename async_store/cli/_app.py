"""Where the CLI finds its store: the Flask or Quart app, or the environment.

Under ``flask store …`` and ``quart store …`` the framework's ``ScriptInfo`` loads the app (its
``--app`` option, ``FLASK_APP``/``QUART_APP``). ``python -m async_store`` takes ``--app
module:app`` itself, or, without it, builds the config from ``STORE_*`` environment variables.
Either way the config goes through ``Store.init_app``: checked once, the same way an app is.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import click

from .._storages import DEFAULT
from ..config import config_from_env
from ..exceptions import NotConfiguredError, StoreError, first_error
from ..extension import EXTENSION_KEY, Store, StoreState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from flask.sansio.app import App

    from ..providers.base import Provider

__all__ = [
    "ConfigApp",
    "Loader",
    "human_size",
    "keys_of",
    "load_state",
    "pick_storage",
    "progress_bar",
    "run",
    "storage_option",
    "store_for_config",
]

T = TypeVar("T")
F = TypeVar("F", bound="Callable[..., Any]")


class ConfigApp:
    """The little of an app ``Store.init_app`` uses, for a store configured without one."""

    def __init__(self, config: Mapping[str, Any], root_path: str | None = None) -> None:
        self.root_path = root_path or os.getcwd()
        self.instance_path = os.path.join(self.root_path, "instance")
        # No web server here: nothing to serve, for any storage.
        self.config: dict[str, Any] = {**config, "STORE_SERVE_FILES": False}
        named = config.get("STORE_STORAGES")
        if isinstance(named, dict):
            self.config["STORE_STORAGES"] = {
                name: _unserved(keys) if isinstance(keys, dict) else keys
                for name, keys in named.items()
            }
        self.extensions: dict[str, Any] = {}


def _unserved(keys: Mapping[str, Any]) -> dict[str, Any]:
    """A named storage's keys, its SERVE_FILES (by any of its names) set to False."""
    served = ("SERVE", "SERVE_FILES", "STORE_SERVE", "STORE_SERVE_FILES")
    return {**{k: v for k, v in keys.items() if k not in served}, "SERVE_FILES": False}


def store_for_config(config: Mapping[str, Any]) -> StoreState:
    """A store set up from ``STORE_*`` keys alone (checked by ``init_app``).

    :raises NotConfiguredError: naming the key, if the config is wrong.
    """
    app = cast("App", ConfigApp(config))
    return Store(app).state(app)


def _import_app(path: str) -> Any:
    """``module:name``, ``module:factory()`` or ``module`` (its ``app``/``create_app``)."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as flask and quart do: the app is usually here
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"--app {path!r}: cannot import {module_name!r} ({exc})") from exc
    name = attr.removesuffix("()") or ("app" if hasattr(module, "app") else "create_app")
    found = getattr(module, name, None)
    if found is None:
        raise click.UsageError(f"--app {path!r}: {module_name!r} has no {name!r}")
    if callable(found) and not hasattr(found, "extensions"):
        found = found()  # an application factory
    return found


class Loader:
    """``ctx.obj`` of ``python -m async_store``: loads the app like Flask's ``ScriptInfo``,
    once (a command that asks again, as ``backfill`` does for the app's database, gets the same
    app, not a second one from the factory)."""

    def __init__(self, app_path: str | None, environ: Mapping[str, str]) -> None:
        self.app_path = app_path
        self.environ = environ
        self._app: Any = None
        self._state: StoreState | None = None

    def load_app(self) -> Any:
        if self._app is None:
            self._app = self._load()
        return self._app

    def _load(self) -> Any:
        if self.app_path:
            return _import_app(self.app_path)
        config = config_from_env(self.environ)
        if not config:
            raise click.UsageError(
                "no store configured: pass --app module:app, or set STORE_* environment "
                "variables (STORE_PROVIDER, STORE_PATH, STORE_S3_BUCKET, …)"
            )
        if isinstance(config.get("STORE_STORAGES"), str):  # not JSON: parse_value kept the text
            raise click.UsageError(
                "the environment variable STORE_STORAGES must be a JSON object of storage name "
                'to its keys, such as {"documents": {"PROVIDER": "s3", "S3_BUCKET": "docs"}}'
            )
        return ConfigApp(config)

    def close(self) -> None:
        if self._state is not None:
            self._state.store.close()


def load_state(ctx: click.Context) -> StoreState:
    """The store of the app the command runs for.

    :raises click.ClickException: when the app has no Store, or (``python -m``) the config from
        the environment is wrong; the message names the key.
    """
    info = ctx.find_root().obj
    load: Callable[[], Any] | None = getattr(info, "load_app", None)
    if load is None:
        raise click.UsageError("no app: run it as 'flask store', 'quart store' or python -m")
    try:
        app = load()
        if isinstance(app, ConfigApp) and EXTENSION_KEY not in app.extensions:
            Store(cast("App", app))
    except NotConfiguredError as exc:
        raise click.ClickException(f"the configuration is wrong: {exc}") from exc
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, StoreState):
        raise click.ClickException(
            f"{app!r} has no Store: call Store(app) or store.init_app(app) when it is created"
        )
    if isinstance(info, Loader):
        info._state = state
    return state


def storage_option(help: str) -> Callable[[F], F]:
    """The ``--storage NAME`` option of a command, ``help`` saying what it picks."""
    return click.option("--storage", "storage", metavar="NAME", default=None, help=help)


def pick_storage(state: StoreState, name: str | None) -> StoreState:
    """The storage ``--storage`` names (the default one without it).

    :raises click.BadParameter: listing the app's storages, when it has none of that name.
    """
    try:
        return state.storage(name or DEFAULT)
    except StoreError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage") from None


def keys_of(state: StoreState, text: str) -> str:
    """``text`` with its ``STORE_*`` keys named the way ``state``'s storage sets them: as they
    are for the default storage, without ``STORE_`` in a ``STORE_STORAGES`` entry (``PATH``)."""
    if state.name == DEFAULT:
        return text
    return re.sub(r"\bSTORE_(?!STORAGES)([A-Z0-9_]+)", r"\1", text)


def run(providers: Sequence[type[Provider]], func: Callable[[], Awaitable[T]]) -> T:
    """``await func()`` in a new event loop, each provider keeping one client for it.

    SIGTERM (``docker stop``, systemd) cancels it as Ctrl-C does, so saves in progress clean
    up after themselves; both raise :class:`KeyboardInterrupt`.
    """

    async def main() -> T:
        async with contextlib.AsyncExitStack() as stack:
            for provider in providers:
                await provider.startup()
                stack.push_async_callback(provider.shutdown)
            return await _cancelled_by_sigterm(func)

    return anyio.run(main)


async def _cancelled_by_sigterm(func: Callable[[], Awaitable[T]]) -> T:
    if threading.current_thread() is not threading.main_thread():
        return await func()  # signal handlers can only be set in the main thread
    result: list[T] = []
    try:
        async with anyio.create_task_group() as tg:

            async def on_sigterm() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()

            async def work() -> None:
                result.append(await func())
                tg.cancel_scope.cancel()

            tg.start_soon(on_sigterm)
            tg.start_soon(work)
    except BaseExceptionGroup as group:
        error = first_error(group)  # func's own error, as itself
        raise error from error.__cause__
    if not result:  # cancelled by SIGTERM
        raise KeyboardInterrupt
    return result[0]


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def progress_bar(total: int, description: str) -> Any:
    """A tqdm bar counting bytes, on stderr."""
    try:
        from tqdm import tqdm
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise click.ClickException(
            "the progress bar needs tqdm: pip install 'async_store[cli]'"
        ) from exc
    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024)
