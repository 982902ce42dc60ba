"""Background uploads as a backend: ``STORE_BACKGROUND`` wraps the storage's own backend.

A save is spooled to local disk under a name reserved at once (the inner backend says it is
free) and delivered to the inner backend later, by the storage's
:class:`~async_store._background.Background` (spool, deliveries, retries, outcomes). Reads,
listings, URLs and signing are the inner backend's: until delivery, the store has no file
there. A delete of a file still spooled cancels its upload instead. The provider does not know
the difference: it calls :meth:`Backend.save` and gets the upload's handle with the name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._spooling import spool_upload
from .base import Backend, Written

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from contextlib import AbstractAsyncContextManager

    from .._background import Background
    from .._sources import AsyncReadable, Source
    from .._uploads import BackgroundUpload
    from .base import StoredFile

__all__ = ["BackgroundBackend", "background_of", "direct"]


class BackgroundBackend(Backend):
    """Spools writes and delivers them to ``inner`` in the background.

    :param inner: the storage's backend, where deliveries go and everything else is asked.
    :param background: the storage's spool and deliveries.
    """

    # Deliveries live in a long-lived loop (Quart's, the sync shim's), whatever the inner.
    loop_bound = True

    def __init__(self, inner: Backend, background: Background) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.background = background
        self.kind = inner.kind  # type: ignore[misc]  # an instance's: the inner's kind
        self.signs = inner.signs  # type: ignore[misc]

    @property
    def identity(self) -> str:
        return self.inner.identity

    def absolute_path(self, key: str) -> str:
        return self.inner.absolute_path(key)

    def url(self, key: str, *, relative: bool = False) -> str:
        return self.inner.url(key, relative=relative)

    async def sign(
        self,
        key: str,
        expires: int,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        return await self.inner.sign(
            key, expires, download_name=download_name, content_type=content_type
        )

    async def enter_loop(self) -> None:
        """The inner backend's clients for this loop, then an uploader on it (which delivers
        what earlier runs left spooled)."""
        await self.inner.enter_loop()
        await self.background.startup()

    async def leave_loop(self) -> None:
        """Drain this loop's deliveries, then close the inner backend's clients."""
        try:
            await self.background.shutdown()
        finally:
            await self.inner.leave_loop()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def save(self, location: str, names: Iterator[str], source: Source) -> Written:
        job, upload = await spool_upload(self.background, location, names, source)
        return Written(job.name, upload)

    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        return (await self.save(location, names, source)).name

    def pending(self, key: str) -> BackgroundUpload | None:
        return self.background.outcomes.pending(key)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def exists_now(self, key: str) -> bool:
        return await self.inner.exists_now(key)

    def open(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncReadable]:
        return self.inner.open(key, start, end)

    async def delete(self, key: str) -> None:
        """Cancel the upload of ``key`` if it is still spooled (in any worker sharing the
        spool; one under way deletes what it delivers); else delete the stored file."""
        if not await self.background.discard(key):
            await self.inner.delete(key)

    def list(self, prefix: str) -> AsyncIterator[StoredFile]:
        return self.inner.list(prefix)

    async def stat(self, key: str) -> StoredFile:
        return await self.inner.stat(key)


def background_of(backend: Backend) -> Background | None:
    """A storage's background uploads (its spool and deliveries), if ``STORE_BACKGROUND`` is on."""
    return backend.background if isinstance(backend, BackgroundBackend) else None


def direct(backend: Backend) -> Backend:
    """The backend that stores at once: the wrapped one with background uploads (what
    ``store migrate`` writes copies to), else ``backend`` itself."""
    return backend.inner if isinstance(backend, BackgroundBackend) else backend
