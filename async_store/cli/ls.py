"""``store ls [PREFIX]``: the stored files, with size and date."""

from __future__ import annotations

import os

import click

from .._storages import DEFAULT
from ..exceptions import StoreError
from ._app import human_size, keys_of, load_state, pick_storage, run, storage_option


@click.command()
@click.argument("prefix", default="")
@click.option("-h", "--human", is_flag=True, help="Sizes in KiB, MiB, … instead of bytes.")
@storage_option("The storage to list (default: 'default', the one of the STORE_* keys).")
@click.pass_context
def ls(ctx: click.Context, prefix: str, human: bool, storage: str | None) -> None:
    """List stored files whose path starts with PREFIX ('avatars/' for a folder).

    One line per file: size, modification time (UTC) and the relative path, which is what
    store.Provider(path) (store['NAME'].Provider(path) for the storage NAME) takes and a
    StoreType column holds. A last line counts them.
    """
    state = pick_storage(load_state(ctx), storage)
    provider = state.provider_class
    if provider.config_backend == "local" and not os.path.isdir(state.config.path):
        # A local store is created by its first save: a missing folder is a store that has
        # never stored anything, or a mistyped STORE_PATH. Say which path, create nothing.
        where = "" if state.name == DEFAULT else f"STORE_STORAGES[{state.name!r}]: "
        raise click.ClickException(
            keys_of(
                state,
                f"{where}STORE_PATH {state.config.path!r} does not exist: nothing has been "
                f"stored there yet, or STORE_PATH is mistyped",
            )
        )

    async def listing() -> tuple[int, int]:
        count = total = 0
        async for file in provider.files(prefix):
            size = human_size(file.size) if human else str(file.size)
            click.echo(f"{size:>12}  {file.modified:%Y-%m-%d %H:%M:%S}  {file.path}")
            count, total = count + 1, total + file.size
        return count, total

    try:
        count, total = run([provider], listing)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{count} file{'' if count == 1 else 's'}, {human_size(total)}")
