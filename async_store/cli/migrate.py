"""``store migrate --to …``: copy every stored file to another provider, resumably.

Each file keeps its relative path, so database columns (``StoreType``) stay valid. A copy is
published the way a save is (a temp file and an atomic rename, or one S3 PUT / a completed
multipart upload), under exactly that path and never over another file: a run that is killed
leaves no partial file behind, and the next run skips what is already there with the same size
and SHA-256, so it resumes where the last one stopped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import click

from .._sources import Source, SourceFailure
from ..backends.background import direct
from ..config import parse_value
from ..exceptions import StoreError
from ..providers.base import NoFreeName
from ._app import (
    human_size,
    load_state,
    pick_storage,
    progress_bar,
    run,
    storage_option,
    store_for_config,
)
from ._spooled import warn_spooled

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ..config import StoreConfig
    from ..extension import StoreState
    from ..providers.base import Provider, StoredFile

__all__ = ["Migration", "Tally", "migrate", "target_config"]


@dataclass
class Tally:
    """What a migration did so far."""

    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    conflicts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Migration:
    """Copies files from one bound provider class to another, ``jobs`` at a time."""

    def __init__(
        self,
        source: type[Provider],
        target: type[Provider],
        *,
        jobs: int = 4,
        on_bytes: Callable[[int], object] = lambda n: None,
    ) -> None:
        self.source = source
        self.target = target
        #: Where copies are written: the target's own backend, never its spool.
        self.writer = direct(target.backend)
        self.jobs = jobs
        self.on_bytes = on_bytes
        self.chunk_size = source.config.chunk_size
        self.tally = Tally()

    async def run(self, files: list[StoredFile], existing: dict[str, StoredFile]) -> Tally:
        limiter = anyio.CapacityLimiter(self.jobs)

        async def one(file: StoredFile) -> None:
            async with limiter:
                await self.migrate_one(file, existing.get(file.path))

        async with anyio.create_task_group() as tg:
            for file in files:
                tg.start_soon(one, file)
        return self.tally

    async def migrate_one(self, file: StoredFile, there: StoredFile | None) -> None:
        try:
            if there is None:
                try:
                    await self._copy(file)
                    self.tally.copied += 1
                    self.tally.copied_bytes += file.size
                    return
                except NoFreeName:
                    pass  # written meanwhile (another run?): same content or a conflict
            if await self._same(file, there):
                self.tally.skipped += 1
                self.on_bytes(file.size)
            else:
                self.tally.conflicts.append(file.path)
        except StoreError as exc:
            self.tally.failed.append(f"{file.path}: {exc}")

    async def _copy(self, file: StoredFile) -> None:
        location, _, name = file.path.rpartition("/")
        # The type it is served with goes along: the one its bytes showed when it was stored
        # (a local file's xattr, an S3 object's Content-Type), not a guess from its name.
        kept = file.content_type or (await self.source(file.path).info()).content_type
        async with self.source(file.path).open() as f:

            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await f.read(self.chunk_size):
                    self.on_bytes(len(chunk))
                    yield chunk

            try:
                # This exact name or NoFreeName, never another.
                source = Source(name, chunks=chunks())
                source.content_type = kept
                await self.writer.write(location, iter([name]), source)
            except SourceFailure as failure:
                raise failure.error from failure.error.__cause__

    async def _same(self, file: StoredFile, there: StoredFile | None) -> bool:
        if there is not None and there.size != file.size:
            return False
        digests: dict[str, str] = {}

        async def digest(key: str, provider: Provider) -> None:
            sha = hashlib.sha256()
            async with provider.open() as f:
                while chunk := await f.read(self.chunk_size):
                    sha.update(chunk)
            digests[key] = sha.hexdigest()

        async with anyio.create_task_group() as tg:
            tg.start_soon(digest, "source", self.source(file.path))
            tg.start_soon(digest, "target", self.target(file.path))
        return digests["source"] == digests["target"]


def _place(provider: type[Provider]) -> tuple[str, str]:
    """Where a provider's files are: its backend's identity (kind, bucket or folder, prefix),
    and the S3 endpoint it is reached at; one bucket name on two servers is two places."""
    endpoint = str(provider.config.get("STORE_S3_ENDPOINT_URL") or "").rstrip("/")
    return provider.backend.identity, endpoint


def target_config(to: str, options: tuple[str, ...], source: StoreConfig) -> dict[str, Any]:
    """The destination's ``STORE_*`` config from ``--to`` and ``--to-config`` options."""
    parts = urlsplit(to)
    config: dict[str, Any] = {"STORE_CHUNK_SIZE": source.chunk_size}
    if parts.scheme == "s3":
        if not parts.netloc:
            raise click.BadParameter("give the bucket: s3://BUCKET[/PREFIX]", param_hint="--to")
        if "STORE_S3_BUCKET" in source:  # S3 to S3: the same server and credentials by default
            config.update({k: v for k, v in source.items() if k.startswith("STORE_S3_")})
        config.update(
            STORE_PROVIDER="s3", STORE_S3_BUCKET=parts.netloc, STORE_PATH=parts.path.strip("/")
        )
    elif parts.scheme in ("", "file"):
        path = parts.path if parts.scheme == "file" else to
        config.update(STORE_PROVIDER="local", STORE_PATH=os.path.abspath(path))
    else:
        raise click.BadParameter("use s3://BUCKET[/PREFIX] or a folder", param_hint="--to")
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.startswith("STORE_"):
            raise click.BadParameter(f"{option!r} is not STORE_KEY=VALUE", param_hint="--to-config")
        config[key] = parse_value(key, value)
    # Copies are written straight to the destination, never through a spool.
    config.update(STORE_BACKGROUND=False, STORE_SERVE_FILES=False)
    return config


@click.command()
@click.option(
    "--to",
    "to",
    metavar="TARGET",
    help="Where to copy to: s3://BUCKET[/PREFIX] or a local folder.",
)
@click.option(
    "--to-config",
    "to_config",
    multiple=True,
    metavar="STORE_KEY=VALUE",
    help="Another STORE_* key of the --to destination (repeat it), such as "
    "STORE_S3_ENDPOINT_URL=http://127.0.0.1:8333 or STORE_S3_REGION=eu-west-1.",
)
@click.option(
    "--to-storage",
    "to_storage",
    metavar="NAME",
    help="Copy to another storage of the app instead (a STORE_STORAGES name, or 'default').",
)
@storage_option("The storage to copy from (default: 'default', the one of the STORE_* keys).")
@click.option("--prefix", default="", help="Only the files whose path starts with this.")
@click.option(
    "--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="Files copied at once."
)
@click.pass_context
def migrate(
    ctx: click.Context,
    to: str | None,
    to_config: tuple[str, ...],
    to_storage: str | None,
    storage: str | None,
    prefix: str,
    jobs: int,
) -> None:
    """Copy every stored file to another provider (local disk to S3, S3 to local, …) with
    --to, or to another storage of the app with --to-storage.

    Every file keeps its relative path, so StoreType columns and other saved paths need no
    rewrite: once it is done, point STORE_PROVIDER / STORE_PATH / STORE_S3_* at the destination
    (or the columns at the other storage). Files already there with the same size and SHA-256
    are skipped, so an interrupted run resumes when started again; a file there with other
    content is never overwritten (it is reported as a conflict). Each copy appears at its path
    only once complete.

    S3 credentials of a --to destination come from --to-config STORE_S3_ACCESS_KEY=… and
    STORE_S3_SECRET_KEY=…, else from boto's credential chain; from S3 to S3 the source's
    STORE_S3_* keys are the default.
    """
    if (to is None) == (to_storage is None):
        raise click.UsageError("give where to copy to: --to TARGET or --to-storage NAME (one)")
    if to_storage is not None and to_config:
        raise click.UsageError(
            "--to-config is for --to: the keys of a storage are set in the app's config"
        )
    state = load_state(ctx)
    from_state = pick_storage(state, storage)
    source = from_state.provider_class
    if to_storage is not None:
        target, where = _storage_target(from_state, to_storage), f"the storage {to_storage!r}"
    else:
        assert to is not None
        try:
            config = target_config(to, to_config, from_state.config)
            target = store_for_config(config).provider_class
        except StoreError as exc:
            raise click.ClickException(f"the destination's configuration is wrong: {exc}") from exc
        where = to
        if _place(source) == _place(target):
            raise click.UsageError("the destination is the store itself")
    warn_spooled(from_state, "are not copied")  # not stored yet
    bar = None
    migration = Migration(source, target, jobs=jobs, on_bytes=lambda n: bar and bar.update(n))

    async def main() -> Tally:
        nonlocal bar
        files = [f async for f in source.files(prefix)]
        existing = {f.path: f async for f in target.files(prefix)}
        bar = progress_bar(sum(f.size for f in files), f"{len(files)} files")
        try:
            return await migration.run(files, existing)
        finally:
            bar.close()

    tally = migration.tally
    try:
        run([source, target], main)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo(f"interrupted after copying {tally.copied} files: run it again to resume")
        raise SystemExit(130) from None
    _summary(tally, where, to_storage)
    if tally.conflicts or tally.failed:
        raise SystemExit(1)


def _storage_target(source: StoreState, name: str) -> type[Provider]:
    """The provider class of the app's storage ``name``, which is not ``source`` itself.

    :raises click.UsageError: for an unknown name (listing the storages), the source storage, or
        a storage that keeps its files where the source does.
    """
    try:
        target = source.storage(name)
    except StoreError as exc:
        raise click.BadParameter(str(exc), param_hint="--to-storage") from None
    if target is source:
        raise click.UsageError(
            f"--to-storage {name!r} is the storage the files are copied from: name another one "
            f"(or pick the source with --storage)"
        )
    if _place(source.provider_class) == _place(target.provider_class):
        raise click.UsageError(
            f"the storages {source.name!r} and {name!r} keep their files in the same place "
            f"({source.provider_class.backend.identity}): the destination is the store itself"
        )
    return target.provider_class


def _summary(tally: Tally, to: str, to_storage: str | None) -> None:
    click.echo(
        f"copied {tally.copied} files ({human_size(tally.copied_bytes)}) to {to}, skipped "
        f"{tally.skipped} already there, {len(tally.conflicts)} conflicts, "
        f"{len(tally.failed)} failed"
    )
    for path in tally.conflicts:
        click.echo(f"conflict: {path} is there with other content (left as it is)")
    for line in tally.failed:
        click.echo(f"failed: {line}")
    if tally.conflicts or tally.failed:
        return
    if to_storage is None:
        click.echo(
            "Relative paths are unchanged, so StoreType columns need no rewrite: point the "
            "app's STORE_* config at the destination."
        )
    else:
        click.echo(
            f"Relative paths are unchanged, so StoreType columns need no rewrite: point them at "
            f"the storage (StoreType(storage={to_storage!r}))."
        )
