"""The command line: ``flask store …``, ``quart store …`` and ``python -m async_store …``.

``Store.init_app`` adds the ``store`` group to the app's ``cli`` (``_cli_hook``, which imports
this package only when a command runs), so Flask and Quart list it for every app that has a
Store. ``python -m async_store`` runs the same commands for ``--app
module:app``, or for a store configured by ``STORE_*`` environment variables alone.
"""

from __future__ import annotations

import os

import click

from ._app import Loader
from .backfill import backfill
from .check import check
from .cleanup import cleanup
from .drain import drain
from .ls import ls
from .migrate import migrate

__all__ = ["main", "store"]

_COMMANDS = (check, ls, migrate, drain, backfill, cleanup)


@click.group(name="store")
def store() -> None:
    """Check, list, migrate and deliver the files of the app's storages, backfill the records
    of FileType columns, and clean up unconfirmed direct uploads (async_store)."""


@click.group(name="python -m async_store")
@click.option(
    "--app",
    "app_path",
    metavar="MODULE:APP",
    help="The Flask or Quart app with the Store ('module:app', 'module:create_app()'). "
    "Without it, the store is configured by STORE_* environment variables.",
)
@click.pass_context
def main(ctx: click.Context, app_path: str | None) -> None:
    """Check, list, migrate and deliver the files of an async_store store, backfill the
    records of FileType columns, and clean up unconfirmed direct uploads.

    The store is the one of --app, or else the one STORE_* environment variables describe
    (values are JSON where they parse: STORE_CHUNK_SIZE=65536, STORE_BACKGROUND=true;
    names, paths, URLs and credentials are taken as they are). STORE_STORAGES, a JSON
    object, names more storages: STORE_STORAGES='{"exports": {"PATH": "/srv/exports"}}'.
    Every command takes --storage NAME.
    """
    loader = Loader(app_path, os.environ)
    ctx.obj = loader
    ctx.call_on_close(loader.close)


for _command in _COMMANDS:
    store.add_command(_command)
    main.add_command(_command)
