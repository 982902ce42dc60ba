"""Image variants: made after the original is stored, saved next to it, listed in its record.

A storage declares its variants (``STORE_IMAGE_VARIANTS``, or ``variants=`` of a call); a
``FileType`` column makes them when its flush stores an upload (``_sqla_records``), and
:func:`make_variants` makes them for code without SQLAlchemy. The decoding is ``_render``'s, in
one worker thread hop; the original is read from where it already is:

* with ``STORE_BACKGROUND``, from its spool copy, before it is delivered (the file is local and
  the spooled bytes are final; its descriptor, once open, outlives a delivery that clears the
  job); the variants are spooled and delivered like any save. Once delivered, from the store;
* on local disk, from its path;
* elsewhere (S3), copied into a temporary file first: Pillow seeks, a response body does not.

Variants are ordinary stored files of the same storage, saved through the same no-overwrite
path as any upload: ``photos/cat.jpg`` gets ``photos/_variants/cat.jpg/thumb.webp``. A saved
name never starts with ``_`` (``_paths.clean_filename`` strips it), so ``_variants`` is never a
user's file; the folder is named after the original, whose name is its own in that location,
and a leftover of an earlier file only moves a variant to a collision name, never over it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._images import DEFAULT_MAX_PIXELS, Variant, variants_of
from ._record import FileRecord
from ._render import Rendered, render
from .backends.background import direct
from .exceptions import BadUploadError, StoreError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from logging import Logger

    from .extension import StoreState
    from .providers.base import Provider

__all__ = [
    "VARIANTS_FOLDER",
    "declared",
    "make_variants",
    "variant_location",
    "variants_of_new_file",
]

#: The folder, next to an original, that holds its variants (in a folder named after it).
VARIANTS_FOLDER = "_variants"
_MISSING = object()


def variant_location(path: str) -> str:
    """Where the variants of the stored file ``path`` are saved."""
    location, _, name = path.rpartition("/")
    return "/".join(p for p in (location, VARIANTS_FOLDER, name) if p)


def declared(state: StoreState[Any]) -> dict[str, Variant]:
    """The variants a storage declares (``STORE_IMAGE_VARIANTS``, checked at ``init_app``)."""
    return dict(state.config.get("STORE_IMAGE_VARIANTS") or {})


def _maybe_image(content_type: str | None) -> bool:
    return bool(content_type and content_type.startswith("image/") and "svg" not in content_type)


def _resolve(
    file: Any, storage: StoreState[Any] | None
) -> tuple[StoreState[Any], FileRecord, Provider | None]:
    """The storage, the record, and the provider (None: a record was given) of ``file``."""
    from .extension import current_state
    from .providers.base import Provider
    from .sync import SyncProvider

    if isinstance(file, SyncProvider):
        file = file.provider
    if isinstance(file, FileRecord):
        state = storage or file.state()
        if state.name != file.storage:
            raise StoreError(
                f"make_variants({file.path!r}): the record is of the storage {file.storage!r}, "
                f"not {state.name!r}"
            )
        return state, file, None
    if not isinstance(file, Provider):
        raise TypeError(f"make_variants() takes a saved provider or a FileRecord, not {file!r}")
    if not file.saved:
        raise StoreError(f"make_variants({file!r}): save() it first")
    if storage is None:
        states = current_state("make_variants()").storages.values()
        storage = next((s for s in states if isinstance(file, s.provider_class)), None)
        if storage is None:
            raise StoreError(f"make_variants({file!r}): no storage of this app holds it")
    return storage, FileRecord.of(file, storage.name), file


async def make_variants(
    file: Any,
    storage: StoreState[Any] | None = None,
    *,
    variants: Mapping[str, Variant | Mapping[str, Any]] | None = None,
) -> FileRecord:
    """Make the image variants of a stored file, save them next to it, and give its record
    with them listed (``record.variants``: name to path). A variant the record lists already is
    kept; a file that is no image gets none. Decoding runs in a worker thread. Given a
    provider, it lists them in the provider's :attr:`~async_store.Provider.variants` too, so
    that the provider's ``delete()`` deletes them and a ``FileType`` column it is assigned to
    records them.

    Flask: ``store.Provider.run(make_variants, record, store.state(app))``.

    :param file: a saved provider (async or sync) or a :class:`~async_store.sqla.FileRecord`.
    :param storage: its storage (``store.state(app, name)``); default: the record's, or the
        current app's storage whose provider it is.
    :param variants: what to make (name: :class:`Variant` or its config dict); default: the
        storage's ``STORE_IMAGE_VARIANTS``.
    :raises InvalidFileError: (422) an image over the storage's ``IMAGE_MAX_PIXELS`` (default
        Pillow's 89.5 million), or whose data is broken; no variant is kept then.
    :raises NotConfiguredError: without Pillow (``pip install async_store[images]``).
    :raises StoreError: for an unsaved provider, or a storage that does not hold it.
    """
    state, record, given = _resolve(file, storage)
    specs = variants_of(variants) if variants is not None else declared(state)
    specs = {name: v for name, v in specs.items() if name not in record.variants}
    if not specs or not _maybe_image(record.content_type):
        return record
    from ._images import require_images

    require_images("make_variants()")
    provider = state.AsyncProvider(record.path)
    limit = state.config.get("STORE_IMAGE_MAX_PIXELS") or DEFAULT_MAX_PIXELS
    rendered = await _render_from(state, provider, specs, limit, repr(record.path))
    if not rendered:
        return record
    made: dict[str, str] = {}
    location = variant_location(record.path)
    try:
        for name, (data, ext) in rendered.items():
            saved = state.AsyncProvider(data, location, filename=f"{name}.{ext}", validate=False)
            await saved.save()
            made[name] = saved.relative_path
    except BaseException:
        with anyio.CancelScope(shield=True):  # none left behind that no record names
            for path in made.values():
                await state.AsyncProvider(path).delete(missing_ok=True)
        raise
    if given is not None:
        given._add_variants(made)
    return dataclasses.replace(record, variants={**record.variants, **made})


async def variants_of_new_file(
    file: Provider | FileRecord, state: StoreState[Any], log: Logger
) -> FileRecord:
    """:func:`make_variants` for a file an upload path has just stored and handed to nobody yet
    (a finished tus upload, a direct upload's confirm).

    An image they cannot be made of is refused as a save refuses it, and a cancelled call
    ends the same way: the file just stored is deleted, since no record of it reached anyone.
    A storage failing meanwhile costs the variants, not the file: logged on ``log``, and the
    record comes back without them (``make_variants`` makes them later).

    :raises BadUploadError: (422) the image's refusal, the file gone.
    """
    path = file.path if isinstance(file, FileRecord) else file.relative_path
    try:
        return await make_variants(file, state)
    except StoreError as exc:
        if isinstance(exc, BadUploadError):
            await _discard(state, path)
            raise
        log.warning(
            "%r is stored without its image variants, the storage %r failing (%s): "
            "make_variants(...) makes them",
            path,
            state.name,
            exc,
        )
        return file if isinstance(file, FileRecord) else FileRecord.of(file, state.name)
    except BaseException:
        await _discard(state, path)
        raise


async def _discard(state: StoreState[Any], path: str) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await state.AsyncProvider(path).delete(missing_ok=True)
        except StoreError:  # the refusal (or the cancel) is what the caller hears
            pass


async def _render_from(
    state: StoreState[Any],
    provider: Provider,
    specs: dict[str, Variant],
    limit: int,
    label: str,
) -> Rendered | None:
    upload, background = provider.upload, state.background
    if upload is not None and background is not None and not upload.done:
        spooled = background.spool.data(upload.job_id)

        def from_spool() -> Any:
            try:
                data = open(spooled, "rb")  # closed below, in this thread
            except FileNotFoundError:  # delivered (or discarded) meanwhile
                return _MISSING
            with data:
                return render(data, specs, limit, label)

        result = await anyio.to_thread.run_sync(from_spool)
        if result is not _MISSING:
            return result  # type: ignore[no-any-return]
    if direct(provider.backend).kind == "local":
        path = provider.absolute_path
        return await anyio.to_thread.run_sync(render, path, specs, limit, label)
    temp = await anyio.to_thread.run_sync(tempfile.TemporaryFile)
    try:
        async with provider.open() as f:
            while chunk := await f.read(provider.backend.chunk_size):
                await anyio.to_thread.run_sync(temp.write, chunk)
        await anyio.to_thread.run_sync(temp.seek, 0, os.SEEK_SET)
        return await anyio.to_thread.run_sync(render, temp, specs, limit, label)
    finally:
        await anyio.to_thread.run_sync(temp.close)
