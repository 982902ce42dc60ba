"""The ``store`` command group on an app's CLI (``flask store …``, ``quart store …``).

``Store.init_app`` adds it to every Flask or Quart app, but the commands themselves
(``async_store.cli``: click, tqdm, the migrate machinery) are imported only when one runs or
``--help`` lists them: the group here finds them by name. That keeps ``init_app`` light, and the
CLI, which builds on the extension, out of the extension's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask.sansio.app import App

__all__ = ["register_commands"]

_COMMANDS = "async_store.cli"


def register_commands(app: App) -> None:
    """Add the ``store`` group to ``app.cli`` (Flask's and Quart's), unless the app has one."""
    cli: Any = getattr(app, "cli", None)
    if cli is None or "store" in getattr(cli, "commands", {"store": None}):
        return
    import click  # Flask and Quart bring it

    def commands() -> click.Group:
        group: click.Group = importlib.import_module(_COMMANDS).store
        return group

    class StoreCommands(click.Group):
        """The commands of ``async_store.cli.store``, imported when first asked for."""

        def list_commands(self, ctx: click.Context) -> list[str]:
            return commands().list_commands(ctx)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            return commands().get_command(ctx, cmd_name)

        def get_short_help_str(self, limit: int = 45) -> str:
            return commands().get_short_help_str(limit)

        def get_help(self, ctx: click.Context) -> str:
            self.help = commands().help
            return super().get_help(ctx)

    cli.add_command(StoreCommands("store"))
