"""How a finished tus upload becomes a stored file, and what the storage's rules say first.

A small upload (or one on local disk) is saved from its folder exactly as ``save()`` saves any
file: ``Provider(HandedOver(data), location, filename=...)``, atomic, under a free name (on
local disk the upload's data becomes the stored file by a hard link), its SHA-256
counted. On S3 a larger one went up in parts as it arrived (``_parts``) and is copied to its
name. Either way the storage's validation rules apply: the name and length at creation, the
bytes at the end; a refusal removes the upload (nothing is stored), a storage failing for now
keeps every byte for the next try.

Once stored, the file gets its storage's image variants (``STORE_IMAGE_VARIANTS``), made by
``make_variants`` before the upload is recorded as published, so the provider the app's
``on_complete`` gets lists them (``provider.variants``). An image whose variants cannot be made
(broken data, over the pixel limit: ``InvalidFileError``) is refused as a ``FileType`` column
refuses it at the flush: nothing is kept, the answer is a 422 saying why. A storage failing
while they are made costs the variants, never the upload: it is published without them (a
warning is logged; ``make_variants(provider)`` makes them later), since a tus upload may be
gigabytes the client would otherwise send again.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread

from .._paths import clean_filename
from .._source_inputs import HandedOver
from .._validate import Check
from .._variants import declared, variants_of_new_file
from ..backends.background import direct
from ..exceptions import BadUploadError, StoreError
from ._parts import S3Parts
from ._protocol import TusError

if TYPE_CHECKING:
    from ..backends.s3 import S3Backend
    from ..extension import StoreState
    from ..providers.base import Provider
    from ._state import Held

__all__ = ["Completed", "Publisher", "name_of"]

log = logging.getLogger("async_store.tus")


@dataclass(frozen=True)
class Completed:
    """An upload that this request published: for the app's ``on_complete`` hook."""

    provider: Provider
    metadata: dict[str, str]
    upload_id: str


def name_of(metadata: dict[str, str]) -> str:
    """The file's name, as the client's metadata gives it (Uppy sends ``name``)."""
    return metadata.get("filename") or metadata.get("name") or "upload"


class Publisher:
    """Stores the finished uploads of one endpoint into its storage, below ``location``."""

    def __init__(self, state: StoreState[Any], location: str | None) -> None:
        self.state = state
        self.location = location
        backend = direct(state.provider_class.backend)
        #: On S3, uploads go up in parts as they fill; elsewhere, from the local folder.
        # By kind, not by class: importing the S3 backend needs aioboto3 (the s3 extra).
        self.parts = (
            S3Parts(cast("S3Backend", backend), int(state.config["STORE_S3_PART_SIZE"]))
            if backend.kind == "s3"
            else None
        )

    def check_new(self, metadata: dict[str, str], length: int) -> None:
        """What the storage's rules can tell before a byte: the name, the size.

        :raises TusError: their refusal's status (413, 415) and message.
        """
        name = name_of(metadata)
        try:
            Check(self.state.provider_class.storage_rules(), clean_filename(name), name).before(
                length
            )
        except BadUploadError as refused:
            raise TusError(refused.code or 400, refused.description or str(refused)) from None

    async def send_parts(self, held: Held) -> None:
        """On S3, send the whole parts the upload's folder holds now."""
        if self.parts is not None:
            await self.parts.send_full_parts(held, name_of(held.info.metadata))

    async def publish(self, held: Held, *, failing: int) -> Completed:
        """Save the finished upload into the storage as any other file, then record where.

        A refusal of the storage's rules removes the upload (its status: 413, 415, 422); a
        failing storage (S3 down) answers ``failing`` with ``Retry-After`` and keeps every
        byte: the next HEAD publishes it.
        """
        info = held.info
        name = name_of(info.metadata)
        parts = self.parts
        try:
            if parts is not None and (info.extra.get("parts") or info.length > parts.part_size):
                await parts.send_full_parts(held, name)
                rules = self.state.provider_class.storage_rules()
                stored, _ = await parts.publish(held, self.location or "", name, rules)
                provider = self.state.AsyncProvider(stored)
            else:
                # Handed over: on local disk the upload's data becomes the stored file (a hard
                # link), read once for the checks and the hash, not copied.
                provider = self.state.AsyncProvider(
                    HandedOver(held.data_path), self.location, filename=name, checksum=True
                )
                await provider.save()
        except BadUploadError as refused:
            # The rules refuse the file: the upload goes, as a refused save leaves nothing.
            await self.abort(held)
            await anyio.to_thread.run_sync(held.remove)
            raise TusError(refused.code or 400, refused.description or str(refused)) from None
        except StoreError as exc:
            status = HTTPStatus(failing)
            raise TusError(
                failing,
                f"{status.value} {status.phrase}: {exc} (every byte of the upload is here: "
                f"try again)",
                {"Retry-After": "5"},
            ) from exc
        if declared(self.state):
            try:
                await variants_of_new_file(provider, self.state, log)
            except BadUploadError as refused:
                # As a FileType column's flush refuses it: the original went too, and the
                # client hears why instead of finding a file without them.
                await self.abort(held)
                await anyio.to_thread.run_sync(held.remove)
                raise TusError(refused.code or 422, refused.description or str(refused)) from None
        await anyio.to_thread.run_sync(
            held.published, provider.relative_path, provider.absolute_url
        )
        return Completed(provider, dict(info.metadata), info.id)

    async def abort(self, held: Held) -> None:
        """An upload removed before it finished: its parts in S3 go too (best effort: what
        stays is aborted by ``store cleanup``)."""
        if self.parts is not None and held.info.stored_path is None:
            with contextlib.suppress(StoreError):
                await self.parts.abort(held)
