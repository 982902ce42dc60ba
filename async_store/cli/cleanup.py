"""``store cleanup``: remove the direct uploads never confirmed."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click

from ..backends._staged import cleanup_staged
from ..backends.background import direct
from ..exceptions import StoreError
from ._app import keys_of, load_state, pick_storage, run, storage_option

if TYPE_CHECKING:
    from ..backends.s3 import S3Backend


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
    """Remove the direct-to-bucket and tus uploads that were abandoned in the bucket.

    A direct upload waits under the storage's '.direct/' prefix until the app confirms it; one
    older than STORE_DIRECT_MAX_AGE never will be (its key is refused by then). A tus upload
    sent in parts waits under '.tus/'; one idle longer than STORE_TUS_EXPIRES has expired. This
    removes those objects and aborts those multipart uploads, whose parts S3 bills until they
    are aborted. Run it from cron, or let a bucket lifecycle rule do it (README).
    """
    from ..direct import DirectUploads
    from ..tus._parts import STAGING as TUS_STAGING

    state = load_state(ctx)
    if storage is not None:
        chosen = [pick_storage(state, storage)]
        if direct(chosen[0].provider_class.backend).kind != "s3":
            raise click.BadParameter(
                f"the storage {storage!r} is not on S3: direct uploads go to buckets only",
                param_hint="--storage",
            )
    else:
        chosen = [
            s for s in state.storages.values() if direct(s.provider_class.backend).kind == "s3"
        ]

    async def clean() -> list[tuple[str, int, int]]:
        results = []
        for each in chosen:
            objects, uploads = await DirectUploads(each, {}).cleanup(older_than)
            # tus uploads sent in parts: idle longer than they may wait for their next PATCH.
            tus_age = float(each.config["STORE_TUS_EXPIRES"]) if older_than is None else older_than
            backend = cast("S3Backend", direct(each.provider_class.backend))
            more, parts = await cleanup_staged(backend, f"{TUS_STAGING}/", tus_age)
            results.append((each.name, objects + more, uploads + parts))
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
