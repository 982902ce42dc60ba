"""The local provider: files on the local disk below ``STORE_PATH``, served by the app.

The I/O (temp file, atomic claim, fsync, link checks, listing) is the backend's:
:class:`~async_store.backends.local.LocalBackend`. Here: the config checks (``STORE_PATH`` a
folder this process can write to, never one that would publish the app's own files), the
seed's dotted path (``flask_store.providers.local.LocalProvider`` still names it) and
:func:`resolve_file`, which the serving route uses.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..backends.local import LocalBackend, inside, resolve_file, store_root
from ..exceptions import NotConfiguredError
from .base import Provider

if TYPE_CHECKING:
    from ..config import StoreConfig

__all__ = ["LocalProvider", "resolve_file"]


def _check_folder(path: str) -> None:
    """STORE_PATH is a writable folder, or one that a save can create (it is made at the first
    save, so a mistyped path is not created by merely starting the app or listing it)."""
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"is below the file {existing!r}"
        raise NotConfiguredError(
            f"STORE_PATH {path!r} {where}, not a folder: set STORE_PATH to a folder this "
            f"process can write to."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"cannot be created: {existing!r} is"
        raise NotConfiguredError(
            f"STORE_PATH {path!r} {what} not writable by this process; fix its permissions or "
            f"set STORE_PATH to another folder."
        )


def _check_not_published(path: str, config: StoreConfig) -> None:
    """The serving route publishes STORE_PATH: never the app's own folders."""
    for name, folder in (
        ("the app's root folder", config.root_path),
        ("the app's instance folder", config.instance_path),
        ("the current directory", os.getcwd()),
    ):
        if not folder:
            continue
        real = os.path.realpath(folder)
        if inside(path, real):
            relation = "is" if real == path else "holds"
            raise NotConfiguredError(
                f"STORE_PATH {path!r} {relation} {name} ({real!r}): the route under "
                f"STORE_URL_PREFIX would publish the app's own files (its code, its database). "
                f"Give uploads a folder of their own (the default is <instance folder>/uploads), "
                f"or set STORE_SERVE_FILES = False and serve them some other way."
            )


class LocalProvider(Provider):
    """Stores files on the local file system below ``STORE_PATH``.

    Config: ``STORE_PATH`` (default: ``uploads`` in the app's instance folder; a relative path is
    taken relative to the app's root), ``STORE_FSYNC`` (flush each file to disk before it is
    published). The extension serves the files under ``STORE_URL_PREFIX``.
    """

    backend_class = LocalBackend
    register_route = True
    config_backend = "local"

    @classmethod
    def check_config(cls, config: StoreConfig) -> None:
        super().check_config(config)
        if not config.path.strip():
            # os.path.join(root, "") is the app's own folder: its code and database, published.
            raise NotConfiguredError(
                "STORE_PATH is empty: set it to the folder uploads go to (an empty value would "
                "be the app's own folder), or leave it unset for <instance folder>/uploads."
            )
        # One realpath, once: every containment check compares against it.
        path = store_root(config)
        _check_folder(path)
        if config["STORE_SERVE_FILES"] and cls.register_route:
            _check_not_published(path, config)
        config["STORE_PATH"] = path
