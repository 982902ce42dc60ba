"""The backend interface: the I/O of one configured storage, as one object.

A backend is made at ``init_app``, one per storage, from that storage's checked config, and
owns what it needs to reach its data (an S3 backend its clients). The :class:`Provider`
(``providers/base.py``) is the file object users hold: it cleans names, offers candidates,
builds URLs and calls the backend. A backend knows nothing of apps, requests or names a user
chose; it stores bytes under keys.

What a backend does (this page is all a third-party backend needs; ``backends/memory.py`` is a
complete one in a hundred lines):

* :meth:`Backend.write` stores new bytes under the first of some candidate names that is free,
  claiming it atomically (an exclusive create, a hard link, a conditional PUT), never
  overwriting a file, and leaves nothing behind when it fails or is cancelled;
* :meth:`~Backend.exists`, :meth:`~Backend.open` (a byte range, streamed),
  :meth:`~Backend.delete`, :meth:`~Backend.list`, :meth:`~Backend.stat` and, for backends that
  can, :meth:`~Backend.sign`;
* :attr:`~Backend.identity`: where the data lives (kind, bucket, prefix), never how it is
  reached, which the background spool and ``store migrate`` compare;
* errors mapped at each call: :class:`~async_store.exceptions.NotFoundError` for a missing
  key, :class:`~async_store.exceptions.ProviderUnavailableError` when the backend is down for
  now (background mode spools anyway), :class:`~async_store.exceptions.ProviderError` for the
  rest, each naming the key and the config key to check, with the original as ``__cause__``.
  An error raised while reading the upload (:class:`~async_store._sources.SourceFailure`)
  passes through unmapped: it is the caller's.

Keys are relative paths below the storage's root (``STORE_PATH``), already checked by
``_paths.clean_key``: no ``..``, no hidden segment, no backslash.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

from anyio.abc import AsyncResource

from .._paths import collision_name
from ..exceptions import ProviderError, StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from contextlib import AbstractAsyncContextManager
    from datetime import datetime

    from .._sources import AsyncReadable, Source
    from .._uploads import BackgroundUpload
    from ..config import StoreConfig

__all__ = [
    "MAX_NAMES",
    "Backend",
    "NoFreeName",
    "StoredFile",
    "Written",
    "candidates",
    "check_range",
    "no_free_name",
]

#: How many collision names a save tries after the client's (each has 128 random bits).
MAX_NAMES = 16


def candidates(name: str) -> Iterator[str]:
    """The names a new file of the (clean) ``name`` may get, in order: its own, then
    :data:`MAX_NAMES` collision names ``{root}_{shortuuid}{ext}``."""
    yield name
    for _ in range(MAX_NAMES):
        yield collision_name(name)


#: Keys that ``quote(key, safe="/")`` returns unchanged: skip it for them.
_URL_PLAIN = re.compile(r"[A-Za-z0-9_.\-~/]*")


@dataclass(frozen=True)
class StoredFile:
    """One stored file, as :meth:`Backend.list` and :meth:`Backend.stat` give it."""

    #: The relative path: what ``Provider(path)`` takes and a ``StoreType`` column holds.
    path: str
    #: The size in bytes.
    size: int
    #: When it was last written (timezone-aware, UTC).
    modified: datetime
    #: The MIME type it is served with (:meth:`Backend.stat` gives it; listings may not).
    content_type: str | None = None
    #: The SHA-256 of its bytes, hex, when the backend keeps one (an S3 object stored with an
    #: ``x-amz-checksum-sha256``); else None.
    sha256: str | None = None


@dataclass(frozen=True)
class Written:
    """What :meth:`Backend.save` gives ``Provider.save``: the name claimed, and the upload's
    handle when the bytes reach the store later (background uploads)."""

    name: str
    upload: BackgroundUpload | None = None


class NoFreeName(ProviderError):
    """Every candidate name was taken (background delivery and migrate tell it apart)."""


def check_range(key: str, start: int, end: int | None) -> None:
    """What :meth:`Backend.open` checks first: a byte range that starts at 0 or later and does
    not end before it starts.

    :raises ValueError: naming ``key`` and the range, otherwise.
    """
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"not a byte range of {key!r}: start {start}, end {end}")


def no_free_name(location: str) -> ProviderError:
    """What :meth:`Backend.write` raises when every candidate name is taken."""
    return NoFreeName(f"no free name in {location or 'the store'!r} after {MAX_NAMES + 1} attempts")


class Backend(AsyncResource):
    """The I/O of one configured storage. Subclasses implement the abstract methods.

    An anyio ``AsyncResource``: ``async with backend:`` or :meth:`aclose` release what it
    holds at the end.

    :param config: the storage's checked ``STORE_*`` config (``StoreConfig``).
    """

    #: The kind's short name (``STORE_PROVIDER``'s ``"local"``, ``"s3"``, ``"memory"``).
    kind: ClassVar[str] = ""
    #: Whether its clients belong to an event loop (an S3 backend's do): then the sync shim
    #: runs its calls on its own long-lived loop. False: any loop, or none, will do.
    loop_bound: ClassVar[bool] = True
    #: Whether :meth:`sign` makes URLs that expire (S3 presigning; the local route's HMAC links).
    #: False: ``Provider.url(expires=...)`` gives the permanent URL.
    signs: ClassVar[bool] = False
    #: Whether it has :meth:`write_blocking`: the sync shim then saves a blocking source (a
    #: ``FileStorage``, bytes, a path) in the caller's thread, with no event loop at all.
    writes_blocking: ClassVar[bool] = False

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        #: ``STORE_CHUNK_SIZE``: how much of an upload is read, or a file written, at a time.
        self.chunk_size = config.chunk_size

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity}>"

    # --- identity and URLs --------------------------------------------------------------------

    @property
    @abstractmethod
    def identity(self) -> str:
        """Where the data lives, never how it is reached (``s3 bucket=docs path=media``): two
        backends with the same identity hold the same files."""

    @abstractmethod
    def absolute_path(self, key: str) -> str:
        """The full path on disk, or the full key in a bucket."""

    @property
    def url_base(self) -> str:
        """The URL path below which ``key`` is found (``/uploads`` for local files)."""
        return self.config.url_prefix

    @property
    def default_domain(self) -> str | None:
        """The base URL when ``STORE_DOMAIN`` is unset; None gives relative URLs."""
        return None

    @cached_property
    def _url_roots(self) -> tuple[str, str]:
        # (the relative root, the absolute one): worked out once per storage, on first use.
        base = "/" + self.url_base.strip("/")
        relative = base.rstrip("/") + "/"
        domain = self.config.domain or self.default_domain
        return relative, f"{domain.rstrip('/')}{relative}" if domain else relative

    def url(self, key: str, *, relative: bool = False) -> str:
        """The URL of ``key``: ``STORE_DOMAIN`` (or :attr:`default_domain`) + :attr:`url_base`
        + the key, quoted; without the domain when ``relative`` (or when there is none)."""
        path = key if _URL_PLAIN.fullmatch(key) else quote(key, safe="/")
        return self._url_roots[0 if relative else 1] + path

    async def sign(
        self,
        key: str,
        expires: int,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A URL to fetch ``key`` that is valid for ``expires`` seconds (when :attr:`signs`),
        answered with the overrides given (``Content-Disposition: attachment`` under
        ``download_name``, ``content_type`` as the ``Content-Type``).

        :raises ValueError: for ``expires`` out of the backend's range, or a bad override.
        """
        raise StoreError(f"{type(self).__name__} cannot sign URLs")

    # --- the event loops it serves --------------------------------------------------------------

    async def enter_loop(self) -> None:
        """Called in a long-lived event loop (Quart's serving loop, the sync shim's loop)
        before it stores files: keep clients for it."""
        return None  # optional: a backend without clients has nothing to keep

    async def leave_loop(self) -> None:
        """Called in that loop before it ends: close its clients."""
        return None  # optional, as enter_loop

    async def aclose(self) -> None:
        """Release what the backend holds (files, clients); called once, at the end."""
        return None  # optional, as enter_loop

    # --- I/O -----------------------------------------------------------------------------------

    @abstractmethod
    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        """Store ``source`` under the first of ``names`` (in the folder ``location``) that is
        free, and return that name.

        Claiming must be atomic (exclusive create, hard link, conditional PUT), never
        exists-then-write, and never overwrite. Nothing is visible under a name until the whole
        file is there; a failure or a cancellation leaves nothing behind.

        :raises NoFreeName: (made by ``no_free_name(location)``) when every candidate is taken.
        """

    def write_blocking(self, location: str, names: Iterator[str], source: Source) -> str:
        """:meth:`write`, blocking, for a blocking ``source`` (``source.is_blocking``), run in
        the caller's thread: the same rules, no event loop. Only when :attr:`writes_blocking`."""
        raise NotImplementedError(f"{type(self).__name__} has no blocking write")

    async def save(self, location: str, names: Iterator[str], source: Source) -> Written:
        """What ``Provider.save`` calls: :meth:`write`, and the name it claimed. A backend that
        stores later (the background wrapper) returns the upload's handle with it; others do
        not override it."""
        return Written(await self.write(location, names, source))

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``; False only when it is absent."""

    async def exists_now(self, key: str) -> bool:
        """:meth:`exists` for a caller that must not wait: background mode's name check,
        which spools anyway when the backend is down. A backend with retries or long timeouts
        answers with one attempt and a short connect timeout; the default is :meth:`exists`."""
        return await self.exists(key)

    def pending(self, key: str) -> BackgroundUpload | None:
        """The upload of ``key`` this process still has under way (background mode's); None for
        a backend that stores at once, the default."""
        return None

    @abstractmethod
    def open(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncReadable]:
        """Open ``key`` for streamed reading, from byte ``start`` to ``end`` (exclusive; None:
        to the end): ``async with backend.open(key) as f: await f.read(n)``.

        :raises NotFoundError: if nothing is stored there.
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete ``key``.

        :raises NotFoundError: if nothing is stored there.
        """

    @abstractmethod
    def list(self, prefix: str) -> AsyncIterator[StoredFile]:
        """The stored files whose key starts with ``prefix`` (checked already), in the
        backend's order, streamed. Temp files of saves in progress and hidden files are never
        listed."""

    @abstractmethod
    async def stat(self, key: str) -> StoredFile:
        """Size, modification time and content type of ``key`` (and its SHA-256 where the
        backend keeps one).

        :raises NotFoundError: if nothing is stored there.
        """
