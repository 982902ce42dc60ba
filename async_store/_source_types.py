"""An upload normalised: one thing that yields chunks, whatever ``Provider(fp)`` was given
(``_source_inputs`` makes it).

Blocking sources (a Werkzeug or Quart ``FileStorage``, an open binary file, a path, bytes, a plain
iterator of bytes) are read in a worker thread: a provider that writes to disk copies them in one
thread hop (see ``LocalProvider``); others pull chunks, one hop per chunk. Async sources (an async
iterator of bytes, an object with ``async read()``) are read on the event loop.

Quart's ``FileStorage.save`` is async and slow (16 KiB per step); its ``.stream`` is an ordinary
spooled file, so it is read like Werkzeug's.

What a source yields is what is stored: the upload's bytes, or, when the rules strip metadata
(``ImageRules(strip_metadata=True)``), those bytes through a ``_strip.Stripper``. The rules
see the upload's bytes as they came (the head they sniff, the size ``max_size`` counts); the
size and checksum a save records are the stored bytes'.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import weakref
from tempfile import SpooledTemporaryFile
from typing import IO, TYPE_CHECKING, Any

import anyio.to_thread

from ._sniff import HEAD_SIZE
from ._strip import Stripper
from .exceptions import StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

    from ._validate import Check, UploadInfo

__all__ = ["Source", "SourceFailure"]


class SourceFailure(Exception):
    """Carries an error raised while *reading* the upload (a client that went away, a broken
    generator) past the provider's backend-error mapping: it is the caller's error, not the
    store's, and ``Provider.save`` re-raises the original unchanged."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_read: weakref.WeakKeyDictionary[object, int | None] = weakref.WeakKeyDictionary()
_read_by_id: weakref.WeakValueDictionary[int, Source] = weakref.WeakValueDictionary()
_read_lock = threading.Lock()
_TEXT_CHUNK = "the upload yields str, not bytes: yield text.encode() (files are stored as bytes)"


class Source:
    """A normalised upload: a name and its content as chunks, read at most once."""

    def __init__(
        self,
        filename: str | None,
        *,
        blocking: Iterable[bytes] | None = None,
        file: IO[bytes] | None = None,
        path: str | None = None,
        chunks: AsyncIterable[bytes] | None = None,
        origin: object = None,
        handed_over: bool = False,
    ) -> None:
        self.filename = filename
        self._file = file
        self._path = path
        self._handed_over = handed_over and path is not None
        self._iterable = blocking
        self._chunks = chunks
        #: True when reading needs a worker thread (use :meth:`blocking_chunks` there).
        self.is_blocking = chunks is None
        #: The caller's object whose content this is, when reading it uses it up.
        self._origin = origin
        self.used = False
        self._rewound = False
        #: How many bytes of content were yielded to be stored (all of it, once a save has
        #: stored it): the upload's, fewer when its metadata is stripped.
        self.bytes_read = 0
        # How many bytes of the upload were read (what max_size counts).
        self._bytes_in = 0
        #: A ``hashlib`` object the content is fed to as it is yielded, when one is wanted.
        self.digest: Any = None
        #: The validation rules checked as the content is read (``_validate.Check``), if any.
        self.check: Check | None = None
        #: The MIME type found in the content's first bytes, once a check has read them.
        self.content_type: str | None = None
        # The first chunks, read ahead by prime() to check them, and the rest of the read:
        # both yielded by the next chunks()/blocking_chunks().
        self._head: list[bytes] | None = None
        self._rest: Any = None
        self._start: int | None = None
        if file is not None:
            try:
                self._start = file.tell() if file.seekable() else None
            except (AttributeError, OSError, ValueError):
                self._start = None

    @property
    def handed_over(self) -> str | None:
        """The path of a file its caller hands over (``_source_inputs.HandedOver``), when what
        is stored is its bytes as they are (no metadata stripped): a local storage may make it the
        stored file itself instead of a copy. It is still read through, for the checks and the
        hash."""
        if self._handed_over and not (self.check is not None and self.check.strips):
            return self._path
        return None

    def rewind(self) -> bool:
        """Make the content readable again, if it can be (a path, a seekable file)."""
        if self._path is None and self._start is None:
            return False
        if self._file is not None and self._start is not None:
            self._file.seek(self._start)
        self.used = False
        self._rewound = True  # read again by its own save (a lost name race), not another
        self.bytes_read = self._bytes_in = 0
        if self.digest is not None:
            self.digest = hashlib.new(self.digest.name)  # from the start again
        if self._rest is not None and hasattr(self._rest, "close"):
            self._rest.close()  # a read ahead from the old start; checked already
        self._head = self._rest = None
        return True

    @property
    def size(self) -> int | None:
        """The size still to read when the content is in memory (else None: finding out could
        block); what is stored is no larger (smaller when metadata is stripped)."""
        file = self._file
        if file is None or (self.used and self._head is None):
            return None
        if isinstance(file, SpooledTemporaryFile):
            # What Werkzeug and Quart give an upload: in memory until 500 KiB, then on disk.
            if getattr(file, "_rolled", True):
                return None
            file = file._file
        if isinstance(file, io.BytesIO):
            with file.getbuffer() as view:
                left = max(view.nbytes - file.tell(), 0)
            return left + sum(map(len, self._head or ()))  # with what prime() read ahead
        return None

    async def prime(self, size: int) -> None:
        """Run :attr:`check` on what is known before anything is written: the name and a size
        known already, then (when its rules need them) the first :data:`HEAD_SIZE` bytes (more
        for image rules: ``Check.head_size``), read ahead here and yielded first by the read
        that follows.

        :raises BadUploadError: a refusal (see ``_validate``); :raises SourceFailure: as a read.
        """
        check = self.check
        if check is None:
            return
        check.before(self.size)
        if not check.reads_head:
            return
        if not self.is_blocking:
            head, ended = await self._read_ahead(self._read(size))
        elif self.size is not None:  # in memory: reading cannot block
            head, ended = self._read_ahead_blocking(size)
        else:
            head, ended = await anyio.to_thread.run_sync(self._read_ahead_blocking, size)
        await check.validate(self._inspect(check, head, ended))

    def prime_blocking(self, size: int) -> None:
        """:meth:`prime` for a blocking save (no event loop): only for a check without custom
        validators (they may be async)."""
        check = self.check
        if check is None:
            return
        assert not check.has_validators
        check.before(self.size)
        if check.reads_head:
            self._inspect(check, *self._read_ahead_blocking(size))

    def _inspect(self, check: Check, head: bytes, ended: bool) -> UploadInfo:
        info = check.inspect(head, self._bytes_in if ended else self.size)
        self.content_type = info.detected_type
        return info

    def _head_size(self) -> int:
        # Image rules read further: a JPEG's size may follow 64 KiB EXIF and ICC segments.
        return self.check.head_size if self.check is not None else HEAD_SIZE

    def _read_ahead_blocking(self, size: int) -> tuple[bytes, bool]:
        chunks = self._read_blocking(size)
        head: list[bytes] = []
        limit = self._head_size()
        while sum(map(len, head)) < limit:
            chunk = next(chunks, None)
            if chunk is None:
                self._head, self._rest = head, None
                return b"".join(head)[:limit], True
            head.append(chunk)
        self._head, self._rest = head, chunks
        return b"".join(head)[:limit], False

    async def _read_ahead(self, chunks: AsyncIterator[bytes]) -> tuple[bytes, bool]:
        head: list[bytes] = []
        limit = self._head_size()
        while sum(map(len, head)) < limit:
            chunk = await anext(chunks, None)
            if chunk is None:
                self._head, self._rest = head, None
                return b"".join(head)[:limit], True
            head.append(chunk)
        self._head, self._rest = head, chunks
        return b"".join(head)[:limit], False

    def _take_ahead(self) -> tuple[list[bytes], Any] | None:
        """What :meth:`prime` read ahead (once), if it did."""
        if self._head is None:
            return None
        ahead = self._head, self._rest
        self._head = self._rest = None
        return ahead

    def _take(self) -> None:
        if self.used:
            raise RuntimeError("an upload source can be read only once")
        self.used = True
        origin = self._origin
        if origin is None or self._rewound:
            return
        # Record that this source reads ``origin``, and learn whether another read it before
        # (and where its content began then).
        with _read_lock:
            try:
                if origin not in _read:
                    _read[origin] = self._start
                    return
                start = _read[origin]
            except TypeError:  # no weak references to it
                earlier = _read_by_id.get(id(origin))
                if earlier is None or earlier._origin is not origin:
                    _read_by_id[id(origin)] = self
                    return
                start = earlier._start
        if self._file is None or start is None:
            raise StoreError(
                f"the upload {self.filename or type(origin).__name__!r} was already read by "
                f"another save (the same upload stored twice?) and cannot be read again: save "
                f"it once and reuse that provider (or its relative_path), or pass bytes, a path "
                f"or a seekable file"
            )
        self._file.seek(start)  # the same upload saved again: all of it, not what is left
        self._start = start

    def _stripper(self) -> Stripper | None:
        return Stripper() if self.check is not None and self.check.strips else None

    def _stored(self, data: bytes) -> bytes:
        """Bytes to store: counted, and hashed when a checksum was asked for."""
        self.bytes_read += len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def blocking_chunks(self, size: int) -> Iterator[bytes]:
        """Yield the content to store (never an empty chunk); call it from a worker thread,
        it blocks."""
        strip = self._stripper()
        for chunk in self._read_blocking(size):
            data = chunk if strip is None else strip.feed(chunk)
            if data:
                yield self._stored(data)
        if strip is not None and (data := strip.end()):
            yield self._stored(data)

    def _read_blocking(self, size: int) -> Iterator[bytes]:
        """The upload's bytes as they come (what :meth:`prime` read ahead first)."""
        ahead = self._take_ahead() if self._head is not None else None
        if ahead is not None:
            yield from ahead[0]
            if ahead[1] is not None:
                yield from ahead[1]
            return
        self._take()
        try:
            with contextlib.ExitStack() as stack:
                chunks: Iterable[bytes | bytearray | memoryview]
                if self._path is not None:
                    f = stack.enter_context(open(self._path, "rb"))
                    chunks = iter(lambda: f.read(size), b"")
                elif self._file is not None:
                    chunks = iter(lambda: self._file.read(size), b"")  # type: ignore[union-attr]
                else:
                    assert self._iterable is not None
                    chunks = self._iterable
                for chunk in chunks:
                    if chunk:
                        yield self._count(chunk)
        except Exception as exc:
            raise SourceFailure(exc) from exc

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """Yield the content to store on the event loop (blocking sources cost a thread hop a
        chunk); never an empty chunk."""
        if self._chunks is None:
            iterator = self.blocking_chunks(size)
            sentinel = b""
            while chunk := await anyio.to_thread.run_sync(next, iterator, sentinel):
                yield chunk
            return
        # Stripping is pure work on small headers: on the loop, as the read itself.
        strip = self._stripper()
        async for chunk in self._read(size):
            data = chunk if strip is None else strip.feed(chunk)
            if data:
                yield self._stored(data)
        if strip is not None and (data := strip.end()):
            yield self._stored(data)

    async def _read(self, size: int) -> AsyncIterator[bytes]:
        """An async source's bytes as they come (what :meth:`prime` read ahead first)."""
        assert self._chunks is not None
        ahead = self._take_ahead() if self._head is not None else None
        if ahead is not None:
            for chunk in ahead[0]:
                yield chunk
            if ahead[1] is not None:
                async for chunk in ahead[1]:
                    yield chunk
            return
        self._take()
        try:
            async for chunk in self._chunks:
                if chunk:
                    yield self._count(chunk)
        except Exception as exc:
            raise SourceFailure(exc) from exc

    def _count(self, chunk: bytes | bytearray | memoryview | str) -> bytes:
        """One chunk read: as bytes, and counted (by max_size, before it is written)."""
        if isinstance(chunk, str):
            raise TypeError(_TEXT_CHUNK)
        data = bytes(chunk)  # no copy when it is bytes already
        self._bytes_in += len(data)
        if self.check is not None:
            self.check.count(self._bytes_in)  # before the chunk is written: refused, it is not
        return data
