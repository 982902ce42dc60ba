"""``tus_blueprint()``: the tus endpoint as a blueprint for Quart or Flask, thin views over the
one core (``_core``).

The blueprint is Flask's framework-free one (``flask.sansio``), which both frameworks register;
its views are added when it is registered, once the app tells which framework it is. Quart's
view awaits the core on the serving loop; Flask's runs it on the sync shim's loop and calls the
app's hooks back in the request's own thread (its database session, its ``g``).

A PATCH may carry the rest of a multi-GiB file: ``MAX_CONTENT_LENGTH`` (16 MiB unless the app
says otherwise) does not apply to the endpoint's PATCH and POST bodies, which the core bounds
by what the upload has left (and ``max_size``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from flask.sansio.blueprints import Blueprint, BlueprintSetupState

from .._storages import DEFAULT
from ._core import Body, Reply, TusCore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from flask.sansio.app import App

    from ..extension import Store, StoreState
    from ._publish import Completed

__all__ = ["tus_blueprint"]

_BODY_METHODS = ("PATCH", "POST")
# Werkzeug's stream blocks until it has all it was asked for: small reads, so that what has
# arrived is written (and kept, should the client go away) while more is on its way.
_READ_SIZE = 64 * 1024


def tus_blueprint(
    store: Store[Any],
    storage: str = DEFAULT,
    *,
    url_prefix: str = "/files",
    name: str = "tus",
    location: str | None = None,
    max_size: int | None = None,
    expires: float | None = None,
    authorize: Callable[[Any], bool | Awaitable[bool]] | None = None,
    on_complete: Callable[[Any, dict[str, str]], Any] | None = None,
    lock_timeout: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> Blueprint:
    """A tus 1.0 upload endpoint storing into ``storage``, for a Quart or a Flask app::

        app.register_blueprint(tus_blueprint(store, url_prefix="/files", on_complete=stored))

    Clients (tus-js-client, Uppy, tuspy) create uploads with ``POST /files/``, resume with
    ``HEAD``/``PATCH /files/<id>`` and may ``DELETE`` them. A finished upload is saved like
    any file (``Provider(...).save()``: atomic, under a free name, ``Upload-Metadata``'s
    ``filename`` cleaned); the answer that finishes it carries ``Upload-Stored-Path`` and
    ``Upload-Stored-Url``.

    :param store: the app's :class:`~async_store.Store` (registered on the app before the
        blueprint).
    :param storage: the storage to publish into: ``'default'`` or a ``STORE_STORAGES`` name.
    :param url_prefix: where the endpoint lives.
    :param name: the blueprint's name (two endpoints need two names).
    :param location: a folder of the storage to store the files in.
    :param max_size: the largest upload in bytes (413 over it); default ``STORE_TUS_MAX_SIZE``.
    :param expires: seconds an upload is kept after its last PATCH; default
        ``STORE_TUS_EXPIRES``.
    :param authorize: ``authorize(request)``, sync or async, for every request but OPTIONS:
        falsy answers 403 (it may also raise the app's own HTTP errors).
    :param on_complete: ``on_complete(provider, metadata)``, sync or async, once per upload,
        after it is stored: the provider (async in Quart, the sync shim in Flask) goes into a
        ``StoreType`` or ``FileType`` column; ``metadata`` is the decoded ``Upload-Metadata``.
    :param lock_timeout: seconds a request waits for another one writing to the same upload
        before it answers 423.
    :param clock: what gives the time now (expiry), for tests.
    :raises StoreError: at registration, when ``store`` is not registered on the app or has no
        storage called ``storage``.
    """
    blueprint = _Blueprint(name, __name__, url_prefix=url_prefix)

    def setup(setup: BlueprintSetupState) -> None:
        app = setup.app
        state: StoreState[Any] = store.state(app, storage)
        config = state.config
        core = TusCore(
            state,
            f"{setup.name}:{state.name}",
            root=os.path.join(app.root_path, config["STORE_TUS_PATH"]),
            max_size=config["STORE_TUS_MAX_SIZE"] if max_size is None else max_size,
            expires=config["STORE_TUS_EXPIRES"] if expires is None else expires,
            location=location,
            lock_timeout=lock_timeout,
            clock=clock,
        )
        prefix = (setup.url_prefix or "").rstrip("/")
        if state.is_async:
            _lift_quart_body_limit(app, prefix)
            view = _quart_view(core, authorize, on_complete, f"{setup.name}.create")
        else:
            view = _flask_view(core, state, authorize, on_complete, f"{setup.name}.create")
        setup.add_url_rule("/", "create", view, methods=["POST", "OPTIONS"], strict_slashes=False)
        setup.add_url_rule(
            "/<upload_id>", "upload", view, methods=["HEAD", "PATCH", "DELETE", "POST", "OPTIONS"]
        )

    blueprint.record(setup)
    return blueprint


class _Blueprint(Blueprint):
    """Flask's framework-free blueprint with what registering it in either app reads (both
    frameworks' own blueprints add a command group)."""

    def __init__(self, name: str, import_name: str, *, url_prefix: str) -> None:
        from flask.cli import AppGroup

        super().__init__(name, import_name, url_prefix=url_prefix)
        self.cli = AppGroup(name)


def _method(request: Any) -> str:
    method = str(request.method).upper()
    if method == "POST":  # for clients that cannot send PATCH or DELETE (the core protocol)
        method = str(request.headers.get("X-HTTP-Method-Override", method)).upper()
    return method


def _forbidden(reply_class: Any) -> Any:
    from ._protocol import base_headers

    return reply_class("Forbidden", 403, headers=base_headers(), mimetype="text/plain")


def _response(reply_class: Any, reply: Reply, method: str) -> Any:
    empty = method == "HEAD" or reply.status == 204
    return reply_class(
        "" if empty else reply.message, reply.status, headers=reply.headers, mimetype="text/plain"
    )


# --- Quart ---------------------------------------------------------------------------------------


def _quart_view(
    core: TusCore,
    authorize: Callable[[Any], Any] | None,
    on_complete: Callable[[Any, dict[str, str]], Any] | None,
    create_endpoint: str,
) -> Callable[..., Awaitable[Any]]:
    import quart

    async def tus_upload(upload_id: str | None = None) -> Any:
        request = quart.request
        app = quart.current_app
        method = _method(request)
        if method != "OPTIONS" and authorize is not None:
            if not await app.ensure_async(authorize)(request):
                return _forbidden(app.response_class)
        base = quart.url_for(create_endpoint)
        body = request.body
        streaming = getattr(body, "streaming", None)
        if method not in _BODY_METHODS:
            reply = await core.handle(method, upload_id, request.headers, None, base)
        elif streaming is not None:  # the flow control Store(app) installs (_quart.py)
            with streaming() as chunks:
                received = Body(chunks, lambda: _unread(body))
                reply = await core.handle(method, upload_id, request.headers, received, base)
        else:
            received = Body(aiter(body), lambda: _unread(body))
            reply = await core.handle(method, upload_id, request.headers, received, base)
        if reply.completed is not None and on_complete is not None:
            completed = reply.completed
            await app.ensure_async(on_complete)(completed.provider, completed.metadata)
        return _response(app.response_class, reply, method)

    return tus_upload


def _unread(body: Any) -> list[bytes]:
    """What Quart received of a body that its reader did not take yet (``_quart.py``)."""
    take = getattr(body, "take_unread", None)
    return take() if take is not None else []


def _lift_quart_body_limit(app: App, prefix: str) -> None:
    """Quart fixes a request body's limit when it makes the request, from the app's
    ``MAX_CONTENT_LENGTH``: a request class that makes the endpoint's bodies unlimited (the
    core bounds them). Installed once per prefix, on whatever request class the app has."""
    base: Any = app.request_class  # type: ignore[attr-defined]
    lifted = getattr(base, "_tus_prefixes", ())
    if prefix in lifted:
        return

    class TusRequest(base):  # type: ignore[misc]
        _tus_prefixes = (*lifted, prefix)

        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any):
            if method in _BODY_METHODS and any(
                path == p or path.startswith(p + "/") for p in self._tus_prefixes
            ):
                kwargs["max_content_length"] = None
            super().__init__(method, scheme, path, *args, **kwargs)

    TusRequest.__name__ = TusRequest.__qualname__ = base.__name__
    app.request_class = TusRequest  # type: ignore[attr-defined]


# --- Flask ---------------------------------------------------------------------------------------


def _flask_view(
    core: TusCore,
    state: StoreState[Any],
    authorize: Callable[[Any], Any] | None,
    on_complete: Callable[[Any, dict[str, str]], Any] | None,
    create_endpoint: str,
) -> Callable[..., Any]:
    import flask

    # The sync shim's loop, which runs every blocking call of this Store (sync.py).
    shim = state.sync_provider_class

    def tus_upload(upload_id: str | None = None) -> Any:
        request = flask.request
        app = flask.current_app
        method = _method(request)
        if method != "OPTIONS" and authorize is not None:
            if not app.ensure_sync(authorize)(request):
                return _forbidden(app.response_class)
        base = flask.url_for(create_endpoint)
        body = None
        if method in _BODY_METHODS:
            # The core bounds the body by what the upload has left (and refuses the chunk
            # whole when it is over); Flask's None means the app's MAX_CONTENT_LENGTH.
            request.max_content_length = sys.maxsize
            body = Body(_blocking_body(request.stream))
        reply = shim.run(core.handle, method, upload_id, request.headers, body, base)
        if reply.completed is not None and on_complete is not None:
            completed: Completed = reply.completed
            app.ensure_sync(on_complete)(shim.wrap(completed.provider), completed.metadata)
        return _response(app.response_class, reply, method)

    return tus_upload


async def _blocking_body(stream: Any) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(stream.read, _READ_SIZE):
        yield chunk
