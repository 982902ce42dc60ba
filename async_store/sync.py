"""The sync shim: blocking calls for classic Flask views, over the one async core.

Nothing is implemented twice. :class:`SyncProvider` holds an async :class:`Provider` and runs each
of its methods on an event loop that lives in a thread of its own (an anyio blocking portal, owned
by the :class:`~async_store.Store`), so every safety rule (no path escape, no partial file, no
overwrite) exists once, in the async code.

The portal is started on first use, shared by every request thread (``portal.call`` is
thread-safe) and stopped by ``store.close()`` or at interpreter exit. Calling the shim from inside
a running event loop would block that loop: it raises :class:`StoreError` naming the async API.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Literal, ParamSpec, Self, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from werkzeug.datastructures import MultiDict

from ._ingest import StoredForm, current_request
from ._threads import serve_blocking_callers
from .exceptions import StoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from ._sources import AsyncReadable
    from ._validate import Rules
    from .providers.base import Provider, StoredFile

__all__ = ["PortalOwner", "SyncFile", "SyncProvider"]

P = ParamSpec("P")
T = TypeVar("T")


class PortalOwner:
    """One lazily started event-loop thread, shared by all the sync calls of a Store."""

    def __init__(
        self,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._on_start = on_start
        self._on_stop = on_stop
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Future[Any]] = set()  # calls in flight, awaited at close

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            with self._lock:
                if self._portal is None:
                    stack = contextlib.ExitStack()
                    portal = stack.enter_context(start_blocking_portal(name="async_store"))
                    portal.call(serve_blocking_callers)  # small saves run on the loop itself
                    if self._on_start is not None:
                        portal.call(self._on_start)
                    self._loop = portal.call(_running_loop)
                    self._portal, self._stack = portal, stack
                    atexit.register(self.close)
        return self._portal

    def call(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await func(*args, **kwargs)`` on the portal's loop and wait for it."""
        _refuse_inside_loop(getattr(func, "__qualname__", repr(func)))
        self.portal  # noqa: B018 - starts the loop on first use
        loop = self._loop
        if loop is None:  # closed meanwhile by another thread: as BlockingPortal.call does
            raise RuntimeError("This portal is not running")

        async def run() -> T:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                return await func(*args, **kwargs)
            finally:
                self._running.discard(task)

        # One handoff each way. BlockingPortal.call first waits for the loop to spawn the task
        # (a round trip of its own), then for the result: a third of a small save's time.
        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    async def _drain(self) -> None:
        while self._running:  # what started before close() ends, as the portal's tasks would
            await asyncio.wait(set(self._running))

    def close(self) -> None:
        """Stop the loop thread; the next call starts a new one."""
        with self._lock:
            stack, portal = self._stack, self._portal
            self._stack = self._portal = self._loop = None
        if stack is None or portal is None:
            return
        with stack:
            portal.call(self._drain)
            if self._on_stop is not None:
                portal.call(self._on_stop)


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _refuse_inside_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise StoreError(
        f"the sync API ({what}) was called inside a running event loop, where it would block "
        f"every other task: use the async provider instead, "
        f"'await store.AsyncProvider(...).save()'."
    )


class SyncFile(io.RawIOBase):
    """A blocking, read-only file over the async file ``open()`` gives."""

    def __init__(self, owner: PortalOwner, file: AsyncReadable) -> None:
        self._owner = owner
        self._file = file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._owner.call(self._file.read, len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        # One hop for the whole request instead of RawIOBase's loop of readinto calls.
        return self._owner.call(self._file.read, size)

    def seekable(self) -> bool:
        return hasattr(self._file, "seek")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._owner.call(self._file.seek, offset, whence))  # type: ignore[attr-defined]

    def tell(self) -> int:
        return int(self._owner.call(self._file.tell))  # type: ignore[attr-defined]


class SyncProvider:
    """The blocking twin of a :class:`Provider`: same arguments, same properties.

    ``store.Provider`` gives this class in a Flask app::

        provider = store.Provider(request.files["afile"])
        url = provider.save()             # returns once the file is stored
        with provider.open() as f:
            head = f.read(1024)
    """

    _async_class: ClassVar[type[Provider]]
    _owner: ClassVar[PortalOwner]

    @classmethod
    def bind(cls, async_class: type[Provider], owner: PortalOwner) -> type[Self]:
        """A subclass wrapping one app's async provider class."""
        return type(
            f"Sync{async_class.__name__}", (cls,), {"_async_class": async_class, "_owner": owner}
        )

    def __init__(
        self,
        fp: Any = None,
        location: str | None = None,
        *,
        filename: str | None = None,
        checksum: bool = False,
        validate: Rules | Literal[False] | None = None,
    ) -> None:
        self._provider = self._async_class(
            fp, location, filename=filename, checksum=checksum, validate=validate
        )

    @classmethod
    def run(cls, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await func(*args)`` on the shim's loop, where this storage's clients live, from a
        blocking caller (the package's own blocking entry points use it)."""
        return cls._owner.call(func, *args)

    @classmethod
    def wrap(cls, provider: Provider) -> Self:
        """The shim of an async ``provider`` of this storage (what a sync caller is handed)."""
        shim = cls.__new__(cls)
        shim._provider = provider
        return shim

    @classmethod
    def save_request(cls, request: Any = None, **options: Any) -> StoredForm[Self]:
        """Store every file of the request as its body arrives; see
        :meth:`Provider.save_request` (same options). In a Flask view::

            stored = store.Provider.save_request(fields=["avatar"])
            url = stored.files["avatar"].absolute_url
        """
        # The request context is this thread's: look the request up here, not in the loop.
        request = current_request() if request is None else request
        stored = cls._owner.call(cls._async_class.save_request, request, **options)
        files = MultiDict((name, cls.wrap(p)) for name, p in stored.files.items(multi=True))
        return StoredForm(files, stored.form, stored.sizes)

    @classmethod
    def files(cls, prefix: str = "") -> Iterator[StoredFile]:
        """The stored files below ``prefix``, one portal hop each; see :meth:`Provider.files`."""
        files = cls._async_class.files(prefix)
        try:
            while True:
                try:
                    yield cls._owner.call(anext, files)
                except StopAsyncIteration:
                    return
        finally:
            cls._owner.call(files.aclose)

    def __repr__(self) -> str:
        return f"<Sync{repr(self._provider)[1:]}"

    @property
    def provider(self) -> Provider:
        """The async provider underneath."""
        return self._provider

    filename = property(lambda self: self._provider.filename, doc="See Provider.filename.")
    client_filename = property(
        lambda self: self._provider.client_filename, doc="See Provider.client_filename."
    )
    location = property(lambda self: self._provider.location, doc="See Provider.location.")
    relative_path = property(
        lambda self: self._provider.relative_path, doc="See Provider.relative_path."
    )
    absolute_path = property(
        lambda self: self._provider.absolute_path, doc="See Provider.absolute_path."
    )
    relative_url = property(
        lambda self: self._provider.relative_url, doc="See Provider.relative_url."
    )
    absolute_url = property(
        lambda self: self._provider.absolute_url, doc="See Provider.absolute_url."
    )
    saved = property(lambda self: self._provider.saved, doc="See Provider.saved.")
    size = property(lambda self: self._provider.size, doc="See Provider.size.")
    sha256 = property(lambda self: self._provider.sha256, doc="See Provider.sha256.")
    content_type = property(
        lambda self: self._provider.content_type, doc="See Provider.content_type."
    )
    variants = property(lambda self: self._provider.variants, doc="See Provider.variants.")

    def info(self) -> StoredFile:
        """See :meth:`Provider.info`."""
        return self._owner.call(self._provider.info)

    def save(self) -> str:
        """Store the file and return its URL; see :meth:`Provider.save`."""
        _refuse_inside_loop("SyncProvider.save")
        url = self._provider.save_blocking()  # local disk, memory: in this thread, no loop
        return url if url is not None else self._owner.call(self._provider.save)

    def exists(self, filename: str | None = None) -> bool:
        """See :meth:`Provider.exists`."""
        return self._owner.call(self._provider.exists, filename)

    @contextlib.contextmanager
    def open(self) -> Iterator[SyncFile]:
        """Open the stored file for blocking reads: ``with p.open() as f: f.read(n)``."""
        _refuse_inside_loop("SyncProvider.open")
        cm = self._owner.portal.wrap_async_context_manager(self._provider.open())
        with cm as file:
            yield SyncFile(self._owner, file)

    def delete(self, *, missing_ok: bool = False) -> None:
        """See :meth:`Provider.delete`."""
        self._owner.call(self._provider.delete, missing_ok=missing_ok)

    status = property(lambda self: self._provider.status, doc="See Provider.status.")
    upload = property(lambda self: self._provider.upload, doc="See Provider.upload.")

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background upload is delivered; see :meth:`Provider.wait`.

        :raises TimeoutError: if ``timeout`` seconds pass first.
        """

        async def wait() -> None:
            with anyio.fail_after(timeout):
                await self._provider.wait()

        self._owner.call(wait)

    def url(
        self,
        expires: int | None = None,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """See :meth:`Provider.url`."""
        return self._owner.call(
            self._provider.url, expires, download_name=download_name, content_type=content_type
        )
