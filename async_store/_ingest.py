"""Streaming ingest: a ``multipart/form-data`` body parsed as it arrives, each file streamed
straight into the provider.

``request.files`` in Quart and Flask spools every file to a temp file first, and the app then
copies it again into the store: two writes of every byte and, in Quart, a slow 16 KiB-a-step
copy. Here python-multipart (a push parser, the one Starlette uses) parses each body chunk as it
comes; a file part's data is pulled by ``Provider.save()`` as its source, so each byte is written
once, to the temp file the provider publishes (or to S3 parts).

Everything is all or nothing: when a limit trips, the body is malformed or cut short, the client
goes away or a save fails, the files this request already stored are deleted before the error
propagates, and the file being written is cleaned up by its own ``save()``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import deque
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header

from ._limits import body_too_large
from ._sources import Source, SourceFailure, finish_anyway, to_source
from .exceptions import BadUploadError, StoreError, UploadTooLargeError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterator
    from typing import Literal

    from ._validate import Rules
    from .providers.base import Provider

    Validate = Rules | Literal[False] | Mapping[str, Rules | Literal[False]] | None

__all__ = ["StoredForm", "current_request", "save_request"]

log = logging.getLogger("async_store.ingest")
P = TypeVar("P")
ProviderT = TypeVar("ProviderT", bound="Provider")

#: Read size for blocking request streams (Flask's ``request.stream``).
_READ_SIZE = 256 * 1024
# Werkzeug's defaults for MAX_FORM_PARTS and MAX_FORM_MEMORY_SIZE, used when the request has none.
_DEFAULT_MAX_PARTS = 1000
_DEFAULT_MAX_FIELD_SIZE = 500_000


@dataclass
class StoredForm(Generic[P]):
    """What :meth:`Provider.save_request` returns: the form, its files already stored.

    ``files`` maps each file field to the saved providers (``files['avatar']`` is the first,
    ``files.getlist('photos')`` all of them); ``form`` holds the text fields, as ``request.form``
    would; ``sizes`` maps each stored file's ``relative_path`` to its size in bytes (counted
    as it streamed: no stat or HEAD afterwards).
    """

    files: MultiDict[str, P] = field(default_factory=MultiDict)
    form: MultiDict[str, str] = field(default_factory=MultiDict)
    sizes: dict[str, int] = field(default_factory=dict)


def current_request() -> Any:
    """The request of the current request context, Quart's or Flask's."""
    for name in ("quart", "flask"):
        module = sys.modules.get(name)
        if module is not None and module.has_request_context():
            return module.request._get_current_object()
    raise StoreError(
        "save_request() needs a request: call it inside a view, or pass request=... explicitly."
    )


@dataclass
class _Limits:
    body: int | None
    file: int | None
    parts: int
    field: int


@dataclass
class _Part:
    name: str
    filename: str | None  # None: a text field


#: Bytes after a form's closing boundary that save_request reads (and drops) before it answers.
_EPILOGUE_MAX = 64 * 1024


class _Start:
    def __init__(self, part: _Part) -> None:
        self.part = part


_PART_END = object()
_FORM_END = object()


class _Reader:
    """Pulls body chunks into python-multipart and hands out its events one at a time."""

    def __init__(self, body: Source, boundary: bytes, limits: _Limits) -> None:
        self._chunks = body.chunks(_READ_SIZE).__aiter__()
        self._limits = limits
        self._events: deque[object] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_name = self._header_value = b""
        self.size = 0
        #: Bytes of the last file part read to its end.
        self.file_size = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": lambda: self._events.append(_PART_END),
                "on_end": lambda: self._events.append(_FORM_END),
            },
        )

    # python-multipart's callbacks: data arrives as (buffer, start, end)
    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._header_name.lower(), self._header_value))
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        self._events.append(_Start(_part_of(self._headers)))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(data[start:end])

    async def next(self) -> object:
        while not self._events:
            try:
                chunk = await anext(self._chunks, None)
            except SourceFailure as failure:
                raise self._body_error(failure.error) from failure.error
            if chunk is None:
                raise BadUploadError(
                    "the request body ended before the multipart form did: the client stopped "
                    "sending, or request.files / request.form / get_data() had read it before "
                    "save_request()"
                )
            self.size += len(chunk)
            if self._limits.body is not None and self.size > self._limits.body:
                raise UploadTooLargeError(body_too_large(self._limits.body))
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise BadUploadError(f"malformed multipart body: {exc}") from exc
        return self._events.popleft()

    async def drain(self) -> None:
        """Read what follows the form's end (its last CRLF, an epilogue) to the body's end.

        python-multipart ends the form at its closing boundary; the two bytes after it may come
        in a message of their own. A server reuses a connection only for a request whose body
        was read whole: hypercorn closed it, and the client's next request on it failed (about
        one small upload in 3,000 at concurrency 32). Bounded by :data:`_EPILOGUE_MAX`: more
        than that is left to the server.
        """
        extra = 0
        while extra <= _EPILOGUE_MAX:
            try:
                chunk = await anext(self._chunks, None)
            except SourceFailure:
                return  # gone after the form's end: everything it sent is stored
            if chunk is None:
                return
            extra += len(chunk)

    def _body_error(self, error: Exception) -> Exception:
        """What reading the request body raised, as the client's error (a 4xx, never a 500).

        Werkzeug's request stream raises ``RequestEntityTooLarge`` past MAX_CONTENT_LENGTH on a
        body without Content-Length, ``ClientDisconnected`` when the client goes away, and
        the server's socket raises ``TimeoutError`` when the client stops sending.
        """
        if isinstance(error, HTTPException) and error.code == 413:
            limit = self._limits.body
            return UploadTooLargeError(
                body_too_large(limit) if limit is not None else error.description
            )
        if isinstance(error, (HTTPException, OSError)):
            return BadUploadError(
                f"the request body could not be read to its end ({error}): the client went "
                f"away or stopped sending"
            )
        return error

    async def peek(self) -> object:
        event = await self.next()
        self._events.appendleft(event)
        return event

    async def file_data(self, part: _Part) -> AsyncIterator[bytes]:
        """The data of the part just started, checked against the per-file limit."""
        size = 0
        while (event := await self.next()) is not _PART_END:
            assert isinstance(event, bytes)
            size += len(event)
            if self._limits.file is not None and size > self._limits.file:
                raise UploadTooLargeError(
                    f"the file {part.filename!r} in field {part.name!r} is over the limit of "
                    f"{self._limits.file:,} bytes (save_request(max_file_size=...))"
                )
            yield event
        self.file_size = size

    async def text(self, part: _Part) -> str:
        value = bytearray()
        while (event := await self.next()) is not _PART_END:
            assert isinstance(event, bytes)
            value += event
            if len(value) > self._limits.field:
                raise UploadTooLargeError(
                    f"the form field {part.name!r} is over the limit of {self._limits.field:,} "
                    f"bytes held in memory (MAX_FORM_MEMORY_SIZE or "
                    f"save_request(max_field_size=...))"
                )
        try:
            return value.decode()
        except UnicodeDecodeError as exc:
            raise BadUploadError(f"the form field {part.name!r} is not UTF-8 text") from exc


def _part_of(headers: list[tuple[bytes, bytes]]) -> _Part:
    raw = dict(headers).get(b"content-disposition")
    if raw is None:
        raise BadUploadError("a multipart part has no Content-Disposition header")
    try:
        text = raw.decode()
    except UnicodeDecodeError:  # browsers send UTF-8; anything else is read byte for byte
        text = raw.decode("latin-1")
    kind, options = parse_options_header(text)
    if kind.lower() != "form-data" or "name" not in options:
        raise BadUploadError(f"a multipart part is not a named form-data field: {text[:200]!r}")
    return _Part(options["name"], options.get("filename"))


@contextlib.contextmanager
def _body_of(request: Any) -> Iterator[Source]:
    body = getattr(request, "body", None)
    streaming = getattr(body, "streaming", None)
    if streaming is not None:  # Quart, with the flow control Store(app) installs (_quart.py)
        with streaming() as chunks:
            yield Source(None, chunks=chunks)
    elif isinstance(body, AsyncIterable):  # Quart: the body as it arrives
        yield Source(None, chunks=body)
    elif (stream := getattr(request, "stream", None)) is not None:
        yield to_source(stream)  # Flask / Werkzeug: a blocking stream, read in a worker thread
    else:
        raise TypeError(
            f"save_request() needs a Quart or Flask request, not {type(request).__name__}"
        )


def _limits_of(
    request: Any,
    max_size: int | None,
    max_file_size: int | None,
    max_parts: int | None,
    max_field_size: int | None,
) -> _Limits:
    return _Limits(
        body=max_size if max_size is not None else getattr(request, "max_content_length", None),
        file=max_file_size,
        parts=max_parts or getattr(request, "max_form_parts", None) or _DEFAULT_MAX_PARTS,
        field=max_field_size
        or getattr(request, "max_form_memory_size", None)
        or _DEFAULT_MAX_FIELD_SIZE,
    )


def _boundary_of(request: Any) -> bytes:
    mimetype = getattr(request, "mimetype", "")
    boundary = getattr(request, "mimetype_params", {}).get("boundary")
    if mimetype != "multipart/form-data" or not boundary:
        raise BadUploadError(
            f"expected a multipart/form-data body with a boundary, got {mimetype or 'none'!r}: "
            f'send the files from a <form enctype="multipart/form-data"> or as FormData'
        )
    return str(boundary).encode("latin-1")


async def save_request(
    provider_class: type[ProviderT],
    request: Any,
    *,
    fields: Collection[str] | None,
    location: str | None,
    max_size: int | None,
    max_file_size: int | None,
    max_parts: int | None,
    max_field_size: int | None,
    checksum: bool = False,
    validate: Validate = None,
) -> StoredForm[ProviderT]:
    """See :meth:`Provider.save_request`."""
    limits = _limits_of(request, max_size, max_file_size, max_parts, max_field_size)
    boundary = _boundary_of(request)
    length = getattr(request, "content_length", None)
    if limits.body is not None and length is not None and length > limits.body:
        raise UploadTooLargeError(body_too_large(limits.body, length))
    with _body_of(request) as body:
        reader = _Reader(body, boundary, limits)
        return await _save_parts(
            provider_class, reader, fields, location, limits, checksum, validate
        )


async def _save_parts(
    provider_class: type[ProviderT],
    reader: _Reader,
    fields: Collection[str] | None,
    location: str | None,
    limits: _Limits,
    checksum: bool,
    validate: Validate,
) -> StoredForm[ProviderT]:
    result: StoredForm[ProviderT] = StoredForm()
    saved: list[ProviderT] = []
    try:
        parts = 0
        while (event := await reader.next()) is not _FORM_END:
            assert isinstance(event, _Start)
            part = event.part
            parts += 1
            if parts > limits.parts:
                raise UploadTooLargeError(
                    f"the form has more than {limits.parts:,} parts "
                    f"(MAX_FORM_PARTS or save_request(max_parts=...))"
                )
            if part.filename is None:
                result.form.add(part.name, await reader.text(part))
                continue
            if fields is not None and part.name not in fields:
                raise BadUploadError(
                    f"unexpected file field {part.name!r}: this view stores "
                    f"{', '.join(map(repr, sorted(fields))) or 'no files'}"
                )
            if part.filename == "" and await reader.peek() is _PART_END:
                await reader.next()  # an empty <input type="file">: no name and no data
                continue
            rules = validate.get(part.name) if isinstance(validate, Mapping) else validate
            provider = provider_class(
                await _ahead(reader.file_data(part), provider_class.backend.chunk_size),
                location,
                filename=part.filename,
                checksum=checksum,
                validate=rules,
            )
            await provider.save()
            saved.append(provider)
            result.files.add(part.name, provider)
            result.sizes[provider.relative_path] = reader.file_size
        await reader.drain()
    except BaseException:
        # Even when cancelled again meanwhile (a client gone: Quart and hypercorn both cancel).
        await finish_anyway(lambda: _delete_all(saved))
        raise
    return result


async def _ahead(data: AsyncIterator[bytes], limit: int) -> bytes | AsyncIterator[bytes]:
    """A file part's data, read ahead up to ``limit`` bytes: the bytes themselves when the part
    ends within them (most uploads: avatars, documents), which the save then stores in one
    worker-thread job (open, write, publish) instead of a hop for each; else the stream, what
    was read ahead first."""
    head: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await anext(data, None)
        if chunk is None:
            return b"".join(head)
        head.append(chunk)
        size += len(chunk)
    return _chain(head, data)


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    head.clear()
    async for chunk in rest:
        yield chunk


async def _delete_all(saved: list[ProviderT]) -> None:
    for provider in saved:
        try:
            await provider.delete(missing_ok=True)
        except StoreError:  # the original error is the one to raise
            log.exception("save_request: could not delete %r after a failure", provider)
