"""The route that serves locally stored files: ``{STORE_URL_PREFIX}/<path:filename>``.

Safety first, then HTTP:

* the requested path is validated and resolved by the local provider's own
  :func:`~async_store.providers.local.resolve_file` (one worker-thread hop in Quart): no ``..``,
  no hidden or temp files, no directories, no symlink out of the store. Anything else is a 404,
  never a 500;
* only passive types are shown inline (images but SVG, audio, video, plain text, PDF: the table
  in ``_content``, which S3 objects follow too). Everything else, HTML, SVG, XML and JavaScript
  included, is sent as an ``attachment`` with ``Content-Security-Policy: sandbox``, so an upload
  cannot run script on the app's origin;
* ``X-Content-Type-Options: nosniff`` is on every response of the route, 404s included;
* GET and HEAD, ``Range`` (206/416), ``ETag``/``Last-Modified`` and 304 come from the framework's
  own conditional-response code, after :func:`usable_range` has set aside what it gets wrong;
* a signed link (``provider.url(expires=...)``, see ``_signing``) is checked before the disk is
  looked at: a bad or expired one is a 403 whether or not the file exists, and so is an unsigned
  request to a storage with ``STORE_SERVE_SIGNED_ONLY``. A valid one is answered with its
  overrides (a ``download_name`` is an attachment, a ``content_type`` of an active type too)
  and ``Cache-Control: private``, so no shared cache keeps it past its expiry.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_range_header

from ._checks import signing_secret
from ._content import content_policy, disposition, is_passive, stored_type
from ._signing import LinkSigner
from ._storages import DEFAULT
from .backends.background import direct
from .backends.local import LocalBackend
from .exceptions import StoreError
from .providers.local import resolve_file

if TYPE_CHECKING:
    from flask.sansio.app import App

    from ._signing import Grant
    from .extension import StoreState

__all__ = ["ENDPOINT", "content_policy", "endpoint", "register_route", "usable_range"]

#: The endpoint name, for ``url_for(ENDPOINT, filename=provider.relative_path)``.
ENDPOINT = "store_file"
_MAX_URL_PATH = 4096


def _secure(response: Any, attachment: bool) -> Any:
    response.headers["X-Content-Type-Options"] = "nosniff"
    if attachment:
        response.headers["Content-Security-Policy"] = "sandbox"
    return response


def usable_range(header: str | None, size: int) -> str | None:
    """The ``Range`` header to answer, or ``None`` to send the whole file with a 200.

    Werkzeug and Quart answer 416 where RFC 9110 (section 14) says otherwise: a suffix range
    longer than the file (``bytes=-500`` of 10 bytes) selects the whole file, a 206 ``0-9``; a
    unit other than bytes must be ignored. Several ranges, which neither framework can send
    (``multipart/byteranges``), are ignored too, as the RFC allows: a 200, never a 416 for a
    request that overlaps the file, and no work multiplied by a long list of ranges.
    """
    if header is None:
        return None
    parsed = parse_range_header(header)
    if parsed is None:
        # werkzeug refuses some valid lists ("bytes=-5, -3"); anything else it cannot parse
        # (a reversed or non-numeric range) stays a 416.
        return None if "," in header else header
    if parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None
    begin, end = parsed.ranges[0]
    if begin < 0 and end is None and -begin > size:
        return "bytes=0-"
    return header


def _policy(path: str, stored: str | None, grant: Grant) -> tuple[str, bool, str]:
    """``(mimetype, as_attachment, download name)`` for the file at ``path`` (stored as the
    type ``stored``, when it was checked), with a signed link's overrides: a ``download_name``
    is always an attachment, a ``content_type`` is one unless it is passive."""
    mimetype, attachment = content_policy(path, stored)
    if grant.content_type is not None:
        mimetype, attachment = grant.content_type, not is_passive(grant.content_type)
    if grant.download_name is not None:
        return mimetype, True, grant.download_name
    return mimetype, attachment, os.path.basename(path)


def _find(root: str, filename: str) -> tuple[str, os.stat_result] | None:
    if len(filename) > _MAX_URL_PATH or "\x00" in filename:
        return None
    try:
        return resolve_file(root, filename)
    except (StoreError, OSError, ValueError):
        return None


def _flask_view(state: StoreState, links: LinkSigner) -> Any:
    import flask

    signed_only = bool(state.config.get("STORE_SERVE_SIGNED_ONLY"))

    def serve_stored_file(filename: str) -> Any:
        response: Any
        grant = links.grant(filename, flask.request.args, signed_only=signed_only)
        if grant is None:
            return _secure(flask.Response("Forbidden", 403, mimetype="text/plain"), False)
        found = _find(state.config.path, filename)
        if found is None:
            return _secure(flask.Response("Not Found", 404, mimetype="text/plain"), False)
        path, st = found
        mimetype, attachment, name = _policy(path, stored_type(path), grant)
        # send_file reads the Range header from the WSGI environ.
        environ = flask.request.environ
        usable = usable_range(environ.get("HTTP_RANGE"), st.st_size)
        if usable is None:
            environ.pop("HTTP_RANGE", None)
        else:
            environ["HTTP_RANGE"] = usable
        try:
            response = flask.send_file(
                path,
                mimetype=mimetype,
                as_attachment=attachment,
                download_name=name,
                conditional=True,
                etag=True,
                last_modified=st.st_mtime,
            )
        except HTTPException as exc:  # 416 from the range check
            response = exc.get_response()
        if grant.signed:
            response.cache_control.private = True
        return _secure(response, attachment)

    return serve_stored_file


def _quart_view(state: StoreState, links: LinkSigner) -> Any:
    import quart
    from quart.wrappers.response import FileBody

    class StoredFileBody(FileBody):
        async def make_conditional(self, begin: int, end: int | None) -> int:
            # Quart hands a suffix range ("bytes=-5") over as begin=-5 and then fails an
            # assertion building Content-Range: a 500. Resolve it as werkzeug does for Flask.
            if begin < 0 and end is None:
                begin += self.size
            return await super().make_conditional(begin, end)

    def find_and_open(
        filename: str,
    ) -> tuple[str, os.stat_result, FileBody, str | None] | None:
        found = _find(state.config.path, filename)
        if found is None:
            return None
        # FileBody stats the file in __init__, and the stored type is an xattr: here, in the
        # thread, not on the loop.
        body = StoredFileBody(found[0], buffer_size=256 * 1024)
        return (*found, body, stored_type(found[0]))

    signed_only = bool(state.config.get("STORE_SERVE_SIGNED_ONLY"))

    async def serve_stored_file(filename: str) -> Any:
        response_class = quart.current_app.response_class
        request = quart.request
        grant = links.grant(filename, request.args, signed_only=signed_only)
        if grant is None:
            return _secure(response_class("Forbidden", 403, mimetype="text/plain"), False)
        found = await anyio.to_thread.run_sync(find_and_open, filename)
        if found is None:
            return _secure(response_class("Not Found", 404, mimetype="text/plain"), False)
        path, st, body, stored = found
        mimetype, attachment, name = _policy(path, stored, grant)
        if "Range" in request.headers:
            usable = usable_range(request.headers["Range"], st.st_size)
            if usable is None:
                del request.headers["Range"]
            else:
                request.headers["Range"] = usable
            request.__dict__.pop("range", None)  # werkzeug caches the parsed header
        response = response_class(body, mimetype=mimetype)
        response.content_length = st.st_size
        response.last_modified = datetime.fromtimestamp(st.st_mtime, UTC)
        response.set_etag(f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}")
        # What Flask's send_file sends too: revalidate with the ETag, ranges are welcome.
        response.cache_control.no_cache = True
        if grant.signed:
            response.cache_control.private = True
        response.headers["Accept-Ranges"] = "bytes"
        # What Flask's send_file sends (the S3 backend stores the same on active objects).
        value, names = disposition(name, attachment)
        response.headers.set("Content-Disposition", value, **names)
        try:
            await response.make_conditional(request, accept_ranges=True, complete_length=st.st_size)
        except HTTPException as exc:  # 416: werkzeug's exception, answered the Quart way
            response = response_class(exc.description or "", exc.code or 416)
            response.headers["Content-Range"] = f"bytes */{st.st_size}"
        if request.method == "HEAD":
            # Quart would read the whole file for the server to throw away; the headers
            # (Content-Length included) stay as they are for GET.
            response.response = response.data_body_class(b"")
        return _secure(response, attachment)

    return serve_stored_file


def _nosniff_below(prefix: str, is_async: bool) -> Any:
    """An ``after_request`` hook: ``nosniff`` on every response below ``prefix``.

    The route's own answers have it already; this covers what never reaches the view, such as
    the app's 404 for ``/uploads//x`` or ``/uploads/`` and the 405 for a POST.
    """
    module: Any
    if is_async:
        import quart as module
    else:
        import flask as module

    def add_nosniff(response: Any) -> Any:
        path = module.request.path
        if path == prefix or path.startswith(prefix + "/"):
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return add_nosniff


def endpoint(storage: str) -> str:
    """The route's endpoint for a storage: ``store_file`` for the default one,
    ``store_file_NAME`` for another: ``url_for(endpoint('documents'), filename=...)``."""
    return ENDPOINT if storage == "default" else f"{ENDPOINT}_{storage}"


def register_route(app: App, state: StoreState) -> None:
    """Add ``{STORE_URL_PREFIX}/<path:filename>`` (GET and HEAD) to ``app`` for one storage,
    and give its local backend what signs the links the route checks.

    :raises NotConfiguredError: for ``STORE_SERVE_SIGNED_ONLY`` without a ``SECRET_KEY``.
    """
    where = "" if state.name == DEFAULT else f"STORE_STORAGES[{state.name!r}]"
    signing_secret(app.config, bool(state.config.get("STORE_SERVE_SIGNED_ONLY")), where)
    links = LinkSigner(app.config, state.name)
    backend = direct(state.provider_class.backend)  # the wrapped one, in background mode
    if isinstance(backend, LocalBackend):
        backend.links = links
    view = _quart_view(state, links) if state.is_async else _flask_view(state, links)
    app.after_request(_nosniff_below(state.config.url_prefix, state.is_async))
    app.add_url_rule(
        f"{state.config.url_prefix}/<path:filename>",
        endpoint=endpoint(state.name),
        view_func=view,
        methods=["GET"],
        # Merging would answer "/uploads/%2F..%2Fadmin" with a 308 to "/uploads/../admin", which
        # the browser follows out of the prefix; unmerged, "//" is an empty segment: a 404.
        merge_slashes=False,
    )
