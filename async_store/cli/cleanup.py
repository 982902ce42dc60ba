"""``store cleanup``: remove the direct uploads never confirmed."""

from __future__ import annotations

import click

from ..backends.background import direct
from ..backends.s3 import S3Backend
from ..exceptions import StoreError
from ._app import keys_of, load_state, pick_storage, run, storage_option


@click.command()
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Remove what was staged longer ago than this (default: STORE_DIRECT_MAX_AGE).",
)
@storage_option("The storage to clean up (default: every S3 storage of the app).")
@click.pass_context
def cleanup(ctx: click.Context, older_than: int | None, storage: str | None) -> None:
    """Remove the direct-to-bucket uploads that were never confirmed.

    A direct upload waits under the storage's '.direct/' prefix until the app confirms it; one
    older than STORE_DIRECT_MAX_AGE never will be (its key is refused by then). This removes
    those objects, and aborts the multipart uploads begun that long ago, whose parts S3 bills
    until they are aborted. Run it from cron, or let a bucket lifecycle rule do it (README).
    """
    from ..direct import DirectUploads

    state = load_state(ctx)
    if storage is not None:
        chosen = [pick_storage(state, storage)]
        if not isinstance(direct(chosen[0].provider_class.backend), S3Backend):
            raise click.BadParameter(
                f"the storage {storage!r} is not on S3: direct uploads go to buckets only",
                param_hint="--storage",
            )
    else:
        chosen = [
            s
            for s in state.storages.values()
            if isinstance(direct(s.provider_class.backend), S3Backend)
        ]

    async def clean() -> list[tuple[str, int, int]]:
        results = []
        for each in chosen:
            objects, uploads = await DirectUploads(each, {}).cleanup(older_than)
            results.append((each.name, objects, uploads))
        return results

    try:
        results = run([s.provider_class for s in chosen], clean)
    except StoreError as exc:
        where = keys_of(chosen[0], str(exc)) if len(chosen) == 1 else str(exc)
        raise click.ClickException(where) from exc
    for name, objects, uploads in results:
        click.echo(
            f"{name}: removed {objects} staged upload{'' if objects == 1 else 's'}, aborted "
            f"{uploads} multipart upload{'' if uploads == 1 else 's'} never completed"
        )
    if not results:
        click.echo("no S3 storage: nothing to clean up")
