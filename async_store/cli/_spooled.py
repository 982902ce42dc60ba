"""Background uploads still spooled, as the commands that read stored files see them.

With ``STORE_BACKGROUND`` on, a saved file is in the spool until it is delivered, and the
storage has nothing under its path meanwhile: ``migrate`` does not copy it, and ``backfill``
cannot read it, yet it is not missing. Both say so, and how to deliver it first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
import click

from .._storages import DEFAULT
from ..backends.background import background_of

if TYPE_CHECKING:
    from ..extension import StoreState

__all__ = ["drain_command", "is_spooled", "warn_spooled"]


def drain_command(state: StoreState) -> str:
    """The command that delivers ``state``'s spooled uploads."""
    return "store drain" if state.name == DEFAULT else f"store drain --storage {state.name}"


def warn_spooled(state: StoreState, consequence: str) -> None:
    """Warn if background uploads of ``state`` are still spooled: they ``consequence`` ("are
    not copied")."""
    background = background_of(state.provider_class.backend)
    if background is not None and (pending := background.spool.job_ids()):
        click.echo(
            f"warning: {len(pending)} background uploads are still spooled and {consequence}; "
            f"run '{drain_command(state)}' first"
        )


async def is_spooled(state: StoreState, key: str) -> bool:
    """Whether the file at ``key`` is a background upload still waiting for delivery (its
    name is reserved for a spooled job)."""
    background = background_of(state.provider_class.backend)
    if background is None:
        return False
    spool = background.spool
    return await anyio.to_thread.run_sync(spool.reserved_job, background.target, key) is not None
