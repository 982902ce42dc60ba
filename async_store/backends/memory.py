"""Files in a dict: the in-memory backend, for tests (``STORE_PROVIDER = "memory"``).

It is also the example of a third-party backend: the whole :class:`~.base.Backend` interface in
a hundred lines. Each backend object holds its own files, which live as long as it does (the
app's, or the process's), and no route serves them. A write reads the whole upload first, then
claims the first free name under a lock: nothing is visible before the file is whole, and a
failed or cancelled write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio.lowlevel

from .._paths import content_type
from ..exceptions import NotFoundError
from .base import Backend, StoredFile, check_range, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from .._sources import Source
    from ..config import StoreConfig

__all__ = ["MemoryBackend", "MemoryFile"]


@dataclass(frozen=True)
class MemoryFile:
    """One stored file: its bytes and when it was written."""

    data: bytes
    modified: datetime


class _Reader:
    """Reads a range of one file's bytes, ``size`` at a time (a checkpoint each); ``seek`` and
    ``tell`` count from the range's start."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    async def read(self, size: int = -1, /) -> bytes:
        await anyio.lowlevel.checkpoint()
        end = len(self._data) if size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk

    async def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._data)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    async def tell(self) -> int:
        return self._pos


class MemoryBackend(Backend):
    """Keeps files in :attr:`files`, a dict ``{key: MemoryFile}``; safe for any number of
    threads and event loops (a lock guards the dict, never held across an ``await``)."""

    kind = "memory"
    loop_bound = False  # a dict and a lock: any loop will do
    writes_blocking = True

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        #: The stored files; read it in tests to see what is really stored.
        self.files: dict[str, MemoryFile] = {}
        self._lock = threading.Lock()
        self._name = uuid.uuid4().hex[:12]  # two backends never share files, whatever config

    @property
    def identity(self) -> str:
        return f"memory name={self._name}"

    def absolute_path(self, key: str) -> str:
        return f"{self.config.path.strip('/')}/{key}" if self.config.path.strip("/") else key

    def _file(self, key: str) -> MemoryFile:
        try:
            return self.files[key]
        except KeyError:
            raise NotFoundError(f"no stored file {key!r} in memory") from None

    async def write(self, location: str, names: Iterator[str], source: Source) -> str:
        content = bytearray()
        async for chunk in source.chunks(self.chunk_size):
            content += chunk
        return self._claim(location, names, bytes(content))

    def write_blocking(self, location: str, names: Iterator[str], source: Source) -> str:
        return self._claim(location, names, b"".join(source.blocking_chunks(self.chunk_size)))

    def _claim(self, location: str, names: Iterator[str], data: bytes) -> str:
        """Store ``data`` under the first free name: check and store in one step."""
        now = datetime.now(UTC)
        with self._lock:
            for name in names:
                key = f"{location}/{name}" if location else name
                if key not in self.files:
                    self.files[key] = MemoryFile(data, now)
                    return name
        raise no_free_name(location)

    async def exists(self, key: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return key in self.files

    @contextlib.asynccontextmanager
    async def open(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[_Reader]:
        check_range(key, start, end)
        await anyio.lowlevel.checkpoint()
        yield _Reader(memoryview(self._file(key).data)[start:end])

    async def delete(self, key: str) -> None:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            if self.files.pop(key, None) is None:
                raise NotFoundError(f"no stored file {key!r} in memory")

    async def list(self, prefix: str) -> AsyncIterator[StoredFile]:
        with self._lock:
            found = [(k, self.files[k]) for k in sorted(self.files) if k.startswith(prefix)]
        for key, file in found:  # key order (UTF-8 byte order), as local disk and S3 give it
            await anyio.lowlevel.checkpoint()
            yield StoredFile(key, len(file.data), file.modified)

    async def stat(self, key: str) -> StoredFile:
        await anyio.lowlevel.checkpoint()
        file = self._file(key)
        return StoredFile(key, len(file.data), file.modified, content_type(key))
