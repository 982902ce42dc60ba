"""What ``Provider(fp)`` accepts as a new file, and ``to_source``, which makes a ``Source`` of it.

A Werkzeug or Quart ``FileStorage``, a path (a :class:`HandedOver` one the store may keep as it
is), bytes, an open binary file, an object with ``async read()``, or an iterator of bytes,
blocking or async. The ``Source`` they become, and how it is read, is ``_source_types``'.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from inspect import iscoroutinefunction
from typing import Any, Protocol, Union, runtime_checkable

from ._source_types import Source

__all__ = ["AsyncReadable", "FileLike", "HandedOver", "SourceInput", "to_source"]


@runtime_checkable
class FileLike(Protocol):
    """Anything with a blocking ``read(size)`` (and, optionally, a ``filename`` or ``name``)."""

    def read(self, size: int = -1, /) -> bytes: ...


@runtime_checkable
class AsyncReadable(Protocol):
    """Anything with ``async read(size)``: an aiofiles file, an asyncio ``StreamReader``…"""

    async def read(self, size: int = -1, /) -> bytes: ...


#: Everything ``Provider(fp)`` takes as a new file (a ``str`` instead names a stored file).
SourceInput = Union[
    "os.PathLike[str]",
    bytes,
    bytearray,
    memoryview,
    FileLike,
    AsyncReadable,
    AsyncIterable[bytes],
    Iterable[bytes],
]


# The caller's upload objects (a FileStorage's stream, a file, an iterator) that a save has
# read, with where their content began. The same upload given to two saves (assigned to two
# rows, passed to two Providers) would otherwise store an empty file the second time: a seekable
# one is read again from its start, a one-shot stream is refused. Objects without weak
# references (a list iterator) are known by id while the Source that read them lives.


class HandedOver(os.PathLike[str]):
    """A file its caller gives to the store: a local storage may make it the stored file (a
    hard link) where a plain path is always copied, since its owner may change it later. The
    caller neither changes nor reuses it afterwards, and removes its own name for it (the tus
    endpoint's finished uploads)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"HandedOver({self.path!r})"


async def _read_all(reader: AsyncReadable, size: int) -> AsyncIterator[bytes]:
    while chunk := await reader.read(size):
        yield chunk


def _name_of(obj: Any) -> str | None:
    for attr in ("filename", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, (str, bytes)) and value:
            return os.path.basename(os.fsdecode(value))
    return None


def to_source(fp: Any, filename: str | None = None, chunk_size: int = 1024 * 1024) -> Source:
    """Normalise anything ``Provider(fp)`` accepts.

    :param filename: overrides the name the input carries (the client's name, a path's basename).
    :raises TypeError: for anything else, ``None`` included (a missing form field).
    """
    stream = getattr(fp, "stream", None)
    if stream is not None and hasattr(fp, "filename"):  # Werkzeug's or Quart's FileStorage
        return Source(filename or fp.filename, file=stream, origin=stream)
    if isinstance(fp, os.PathLike):
        path = os.fspath(fp)
        name = filename or os.path.basename(path)
        return Source(name, path=path, handed_over=isinstance(fp, HandedOver))
    if isinstance(fp, (bytes, bytearray, memoryview)):
        return Source(filename, file=io.BytesIO(fp))
    if isinstance(fp, io.TextIOBase):
        raise TypeError(
            f"Provider() got a file opened in text mode ({_name_of(fp) or type(fp).__name__}): "
            f"open it with 'rb'; files are stored byte for byte"
        )
    read = getattr(fp, "read", None)
    if read is not None:
        name = filename or _name_of(fp)
        if iscoroutinefunction(read):
            return Source(name, chunks=_read_all(fp, chunk_size), origin=fp)
        return Source(name, file=fp, origin=fp)
    if isinstance(fp, AsyncIterable):
        # An async iterator is used up by reading; an iterable that makes new ones is not.
        return Source(filename, chunks=fp, origin=fp if isinstance(fp, AsyncIterator) else None)
    if isinstance(fp, Iterable) and not isinstance(fp, (str, dict)):
        return Source(filename, blocking=fp, origin=fp if isinstance(fp, Iterator) else None)
    if fp is None:
        raise TypeError(
            "Provider() got None instead of a file: was the upload field missing from the form? "
            "(request.files.get(...) returns None for a missing field)"
        )
    raise TypeError(
        f"Provider() cannot store a {type(fp).__name__}: pass a FileStorage, a path "
        f"(pathlib.Path), bytes, a binary file, or an (async) iterator of bytes; a str names a "
        f"file that is already stored."
    )
