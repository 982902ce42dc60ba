"""``store backfill TARGET``: the size, content type and SHA-256 of the files a ``FileType``
column names by path only, written into its records.

A column switched from ``StoreType`` to ``FileType`` holds bare paths, which ``FileType`` reads
as records with those facts unknown. This command reads the rows in primary-key order, a page
(``--batch-size``) at a time. For each value lacking a fact it asks the storage (``info()``) and
streams the file once for its SHA-256 (unless the backend keeps one), then writes the full
records of the page in one transaction. Each UPDATE has the value it read in its WHERE
(compare-and-set), so a row the app changed meanwhile keeps what the app wrote. Complete rows
are skipped: a run that is killed resumes where it stopped when started again.

This module is the command: its options, the storage of the bare paths, progress and the
summary. What it fills is :mod:`._sqla_target`'s, the reads and writes :mod:`._sqla_database`'s,
the filling :mod:`._backfill`'s. SQLAlchemy is an extra: those are imported when the command
runs, never with the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .._storages import DEFAULT
from ..exceptions import StoreError
from ._app import human_size, load_state, pick_storage, run, storage_option
from ._spooled import warn_spooled

if TYPE_CHECKING:
    from ..extension import StoreState
    from ._backfill import Tally
    from ._sqla_target import Target

__all__ = ["backfill"]


def _bare_storage(state: StoreState[Any], option: str | None, target: Target) -> str:
    """The storage of the column's bare paths: ``--storage``, else the model's column's.

    :raises click.UsageError: if the two differ, or, for a ``TABLE.COLUMN`` of an app with
        several storages, if ``--storage`` is not given (the same path may be in more than one:
        filling in another storage's file would name the wrong file).
    """
    if option is not None:
        picked = pick_storage(state, option).name
        if target.storage is not None and target.storage != picked:
            raise click.UsageError(
                f"{target.label} keeps its files in the storage {target.storage!r}, not "
                f"{picked!r}: leave --storage out"
            )
        return picked
    if target.storage is not None:
        return pick_storage(state, target.storage).name
    if len(state.storages) > 1:
        raise click.UsageError(
            f"this app has several storages ({', '.join(map(repr, state.storages))}): say which "
            f"one the paths of {target.label} are in with --storage NAME, or name the model's "
            f"column (module:Model.attribute)"
        )
    return DEFAULT


@click.command()
@click.argument("target", metavar="TARGET")
@click.option(
    "--database-url",
    "database_url",
    metavar="URL",
    help="The database (sqlite:///app.db, postgresql+psycopg://…, or an async driver's: "
    "sqlite+aiosqlite://…, postgresql+asyncpg://…). Default: the app's Flask-SQLAlchemy "
    "engine, or its SQLALCHEMY_DATABASE_URI.",
)
@storage_option(
    "The storage a bare path is in (default: the model column's FileType(storage=...), else "
    "'default'). A record's own storage is always its own."
)
@click.option(
    "--batch-size",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Rows read, filled and committed at a time.",
)
@click.option(
    "--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="Files read at once."
)
@click.option("--dry-run", is_flag=True, help="Say which rows would change; write nothing.")
@click.option(
    "--missing-ok", is_flag=True, help="Exit with status 0 even if some files are missing."
)
@click.pass_context
def backfill(
    ctx: click.Context,
    target: str,
    database_url: str | None,
    storage: str | None,
    batch_size: int,
    jobs: int,
    dry_run: bool,
    missing_ok: bool,
) -> None:
    """Fill in the size, content type and SHA-256 of the files a FileType column names by
    path only (what a StoreType column wrote).

    TARGET is the model's column, module:Model.attribute (myapp.models:Doc.file), whose
    FileType says the storage; or TABLE.COLUMN (docs.file) with --storage NAME for the
    paths. Each file is read once, streamed, for its SHA-256 (not at all where the backend
    keeps one, as S3 does for objects stored with a checksum); its size, content type and
    modification time come from the storage. The row's value becomes the full record, path
    and storage unchanged.

    Rows are read in primary-key order and written --batch-size at a time, each batch one
    transaction; complete rows are skipped, so a run that stopped (killed, Ctrl-C) resumes
    when started again. A row is written only if it still holds the value read: one the app
    changed meanwhile keeps the app's value (reported as changed). Missing files are named
    with their row's primary key and left as they are; the exit status is then 1, unless
    --missing-ok. With background uploads (STORE_BACKGROUND), a file still spooled is not
    missing but waiting for delivery: its row is left for the next run ('store drain'
    delivers it now).
    """
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise click.ClickException(
            "backfill needs SQLAlchemy: pip install 'async_store[sqlalchemy]'"
        ) from exc
    from ._backfill import Backfill, Tally
    from ._sqla_database import Database
    from ._sqla_target import Target

    state = load_state(ctx)
    parsed = Target.parse(target)
    bare = _bare_storage(state, storage, parsed)
    if database_url:
        database = Database.of_url(database_url)
    else:  # the app's: the one load_state loaded (ScriptInfo and our Loader load it once)
        database = Database.of_app(ctx.find_root().obj.load_app(), parsed)
    options = {"batch_size": batch_size, "jobs": jobs, "dry_run": dry_run}
    tally = Tally()

    def progress(now: Tally, total: int) -> None:
        read = f"{human_size(now.read)} {'to read' if dry_run else 'read'}"
        verb = "would fill" if dry_run else "filled"
        click.echo(
            f"{now.rows} of {total} rows: {verb} {now.filled}, {now.complete} complete, "
            f"{len(now.missing)} missing{_waiting(now)}, {len(now.changed)} changed, "
            f"{len(now.failed)} failed ({read})",
            err=True,
        )

    async def main() -> None:
        nonlocal tally
        try:
            job = await Backfill.open(database, parsed, state.storages, bare, **options)
            tally = job.tally
            await job.run(progress)
        finally:
            await database.aclose()

    warn_spooled(state.storage(bare), "cannot be read yet (their rows are left for the next run)")
    try:
        run([s.provider_class for s in state.storages.values()], main)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"the database failed: {exc}") from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo(f"interrupted after filling {tally.filled} rows: run it again to resume")
        raise SystemExit(130) from None
    _summary(tally, parsed.label, dry_run=dry_run)
    if tally.failed or (tally.missing and not missing_ok):
        raise SystemExit(1)


def _summary(tally: Tally, label: str, *, dry_run: bool) -> None:
    for line in tally.would:
        click.echo(f"would fill: {line}")
    if dry_run:
        click.echo(
            f"would fill {tally.filled} rows of {label} ({human_size(tally.read)} to read), "
            f"{tally.complete} already complete, {len(tally.missing)} files missing"
            f"{_waiting(tally)}, {len(tally.failed)} failed; nothing was written (--dry-run)"
        )
    else:
        click.echo(
            f"filled {tally.filled} rows of {label} ({human_size(tally.read)} read), skipped "
            f"{tally.complete} already complete and {len(tally.changed)} changed meanwhile, "
            f"{len(tally.missing)} files missing{_waiting(tally)}, {len(tally.failed)} failed"
        )
    for line in tally.missing:
        click.echo(f"missing: {line} (the row is left as it is)")
    for line in tally.waiting:
        click.echo(f"waiting: {line}: not delivered yet, the row is left for the next run")
    for line in tally.changed:
        click.echo(f"changed: {line} was changed by the app meanwhile (left as the app wrote it)")
    for line in tally.failed:
        click.echo(f"failed: {line}")


def _waiting(tally: Tally) -> str:
    """How many files are still on their way to the storage, if any (background uploads)."""
    return f", {len(tally.waiting)} waiting for delivery" if tally.waiting else ""
