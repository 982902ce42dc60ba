"""The route that serves locally stored files: ``{STORE_URL_PREFIX}/<path:filename>``.

Safety first, then HTTP:

* the requested path is validated and resolved by the local provider's own
  :func:`~async_store.providers.local.resolve_file` (one worker-thread hop in Quart): no ``..``,
  no hidden or temp files, no directories, no symlink out of the store. Anything else is a 404,
  never a 500;
* only passive types are shown inline (images but SVG, audio, video, plain text, PDF). Everything
  else, HTML, SVG, XML and JavaScript included, is sent as an ``attachment`` with
  ``Content-Security-Policy: sandbox``, so an upload cannot run script on the app's origin;
* ``X-Content-Type-Options: nosniff`` is on every response of the route, 404s included;
* GET and HEAD, ``Range`` (206/416), ``ETag``/``Last-Modified`` and 304 come from the framework's
  own conditional-response code.
"""

from __future__ import annotations

import os
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio.to_thread
from werkzeug.exceptions import HTTPException

from ._paths import content_type
from .exceptions import StoreError
from .providers.local import resolve_file

if TYPE_CHECKING:
    from flask.sansio.app import App

    from .extension import StoreState

__all__ = ["ENDPOINT", "content_policy", "register_route"]

#: The endpoint name, for ``url_for(ENDPOINT, filename=provider.relative_path)``.
ENDPOINT = "store_file"
_INLINE_PREFIXES = ("image/", "audio/", "video/")
_INLINE_TYPES = frozenset({"text/plain", "text/csv", "application/pdf", "application/json"})
_ACTIVE_IMAGES = frozenset({"image/svg+xml"})
_MAX_URL_PATH = 4096
# RFC 5987 attr-chars, left unescaped in filename* (the set werkzeug uses).
_ATTR_CHARS = "!#$&+-.^_`|~"


def content_policy(filename: str) -> tuple[str, bool]:
    """Return ``(mimetype, as_attachment)`` for a stored file's name."""
    mimetype = content_type(filename)
    inline = mimetype in _INLINE_TYPES or (
        mimetype.startswith(_INLINE_PREFIXES) and mimetype not in _ACTIVE_IMAGES
    )
    return mimetype, not inline


def _secure(response: Any, attachment: bool) -> Any:
    response.headers["X-Content-Type-Options"] = "nosniff"
    if attachment:
        response.headers["Content-Security-Policy"] = "sandbox"
    return response


def _find(root: str, filename: str) -> tuple[str, os.stat_result] | None:
    if len(filename) > _MAX_URL_PATH or "\x00" in filename:
        return None
    try:
        return resolve_file(root, filename)
    except (StoreError, OSError, ValueError):
        return None


def _flask_view(state: StoreState) -> Any:
    import flask

    def serve_stored_file(filename: str) -> Any:
        response: Any
        found = _find(state.config.path, filename)
        if found is None:
            return _secure(flask.Response("Not Found", 404, mimetype="text/plain"), False)
        path, st = found
        mimetype, attachment = content_policy(path)
        try:
            response = flask.send_file(
                path,
                mimetype=mimetype,
                as_attachment=attachment,
                download_name=os.path.basename(path),
                conditional=True,
                etag=True,
                last_modified=st.st_mtime,
            )
        except HTTPException as exc:  # 416 from the range check
            response = exc.get_response()
        return _secure(response, attachment)

    return serve_stored_file


def _disposition(name: str, attachment: bool) -> tuple[str, dict[str, str]]:
    """``Content-Disposition`` as Flask's ``send_file`` sends it, for the Quart view."""
    value = "attachment" if attachment else "inline"
    if name.isascii():
        return value, {"filename": name}
    # RFC 6266: an ASCII fallback, and the real name in filename*. Raw UTF-8 in the header (what
    # werkzeug's Headers.add would send) is read as Latin-1 by browsers: a garbled download name.
    simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return value, {"filename": simple, "filename*": f"UTF-8''{quote(name, safe=_ATTR_CHARS)}"}


def _quart_view(state: StoreState) -> Any:
    import quart
    from quart.wrappers.response import FileBody

    class StoredFileBody(FileBody):
        async def make_conditional(self, begin: int, end: int | None) -> int:
            # Quart hands a suffix range ("bytes=-5") over as begin=-5 and then fails an
            # assertion building Content-Range: a 500. Resolve it as werkzeug does for Flask.
            if begin < 0 and end is None:
                begin += self.size
            return await super().make_conditional(begin, end)

    def find_and_open(filename: str) -> tuple[str, os.stat_result, FileBody] | None:
        found = _find(state.config.path, filename)
        if found is None:
            return None
        # FileBody stats the file in __init__: do it here, in the thread, not on the loop.
        return (*found, StoredFileBody(found[0], buffer_size=256 * 1024))

    async def serve_stored_file(filename: str) -> Any:
        response_class = quart.current_app.response_class
        found = await anyio.to_thread.run_sync(find_and_open, filename)
        if found is None:
            return _secure(response_class("Not Found", 404, mimetype="text/plain"), False)
        path, st, body = found
        mimetype, attachment = content_policy(path)
        response = response_class(body, mimetype=mimetype)
        response.content_length = st.st_size
        response.last_modified = datetime.fromtimestamp(st.st_mtime, UTC)
        response.set_etag(f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}")
        # What Flask's send_file sends too: revalidate with the ETag, ranges are welcome.
        response.cache_control.no_cache = True
        response.headers["Accept-Ranges"] = "bytes"
        value, names = _disposition(os.path.basename(path), attachment)
        response.headers.set("Content-Disposition", value, **names)
        try:
            await response.make_conditional(
                quart.request, accept_ranges=True, complete_length=st.st_size
            )
        except HTTPException as exc:  # 416: werkzeug's exception, answered the Quart way
            response = response_class(exc.description or "", exc.code or 416)
            response.headers["Content-Range"] = f"bytes */{st.st_size}"
        if quart.request.method == "HEAD":
            # Quart would read the whole file for the server to throw away; the headers
            # (Content-Length included) stay as they are for GET.
            response.response = response.data_body_class(b"")
        return _secure(response, attachment)

    return serve_stored_file


def register_route(app: App, state: StoreState) -> None:
    """Add ``{STORE_URL_PREFIX}/<path:filename>`` (GET and HEAD) to ``app``."""
    view = _quart_view(state) if state.is_async else _flask_view(state)
    app.add_url_rule(
        f"{state.config.url_prefix}/<path:filename>",
        endpoint=ENDPOINT,
        view_func=view,
        methods=["GET"],
        # Merging would answer "/uploads/%2F..%2Fadmin" with a 308 to "/uploads/../admin", which
        # the browser follows out of the prefix; unmerged, "//" is an empty segment: a 404.
        merge_slashes=False,
    )
