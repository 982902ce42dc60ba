"""The endpoints of direct uploads, as Uppy's ``@uppy/aws-s3`` plugin calls them.

``companionUrl`` (or ``endpoint``) is the blueprint's prefix; the plugin appends:

==========================================  ===============================================
``GET /s3/params?filename=&type=``          a presigned POST: ``{method, url, fields, headers}``
``POST /s3/multipart`` ``{filename, type}``  a multipart upload begun: ``{uploadId, key}``
``GET /s3/multipart/ID/N?key=``             part ``N``'s presigned PUT: ``{url}``
``GET /s3/multipart/ID/batch?key=&partNumbers=1,2``  several: ``{presignedUrls: {N: url}}``
``GET /s3/multipart/ID?key=``               the parts that arrived (to resume)
``POST /s3/multipart/ID/complete?key=``     ``{parts: [{PartNumber, ETag}]}``: completed
``DELETE /s3/multipart/ID?key=``            aborted
==========================================  ===============================================

One async core (:func:`_answer`); Quart's views await it, Flask's run it on the sync shim's
loop, where the storage's S3 clients live. Every answer is JSON; a refusal is
``{"error": message, "message": message}`` with its status (400, 403, 404, 413, 415; 502 when
S3 fails): Uppy's plugin shows ``message`` to the user.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..exceptions import NotFoundError, ProviderError, StoreError
from ._uploads import DirectUploads

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..extension import StoreState

__all__ = ["mount"]

#: The routes: (rule, methods, operation).
_ROUTES = (
    ("/s3/params", ["GET"], "params"),
    ("/s3/multipart", ["POST"], "create"),
    ("/s3/multipart/<upload_id>/batch", ["GET"], "batch"),
    ("/s3/multipart/<upload_id>/<int:number>", ["GET"], "sign"),
    ("/s3/multipart/<upload_id>", ["GET"], "list"),
    ("/s3/multipart/<upload_id>/complete", ["POST"], "complete"),
    ("/s3/multipart/<upload_id>", ["DELETE"], "abort"),
)


async def _answer(
    uploads: DirectUploads, operation: str, args: Mapping[str, Any], body: Any, path: dict[str, Any]
) -> tuple[Any, int]:
    """What one request gets: (JSON, status)."""
    body = body if isinstance(body, dict) else {}
    upload_id, key = path.get("upload_id"), args.get("key")
    try:
        if operation == "params":
            return await uploads.params(args.get("filename"), args.get("type")), 200
        if operation == "create":
            return await uploads.create(body.get("filename"), body.get("type")), 201
        if operation == "sign":
            [url] = await uploads.sign_parts(key, upload_id, [path["number"]])
            return {"url": url, "headers": {}}, 200
        if operation == "batch":
            numbers = [n for n in str(args.get("partNumbers") or "").split(",") if n]
            urls = await uploads.sign_parts(key, upload_id, numbers)
            return {"presignedUrls": dict(zip(numbers, urls, strict=True)), "headers": {}}, 200
        if operation == "list":
            return await uploads.list_parts(key, upload_id), 200
        if operation == "complete":
            return await uploads.complete(key, upload_id, body.get("parts")), 200
        await uploads.abort(key, upload_id)
        return {}, 200
    except NotFoundError as exc:
        return _refusal(str(exc)), 404
    except ProviderError as exc:
        return _refusal(str(exc)), 502
    except StoreError as exc:
        return _refusal(str(exc)), int(getattr(exc, "code", None) or 400)


def _refusal(message: str) -> dict[str, str]:
    # ``error`` for scripts, ``message`` for Uppy's @uppy/aws-s3, which shows that key.
    return {"error": message, "message": message}


def mount(
    app: Any,
    state: StoreState[Any],
    *,
    url_prefix: str,
    authorize: Callable[[Any], Any] | None,
    name: str,
) -> Any:
    """Register the endpoints of direct uploads into ``state`` on ``app``: the blueprint."""
    uploads = DirectUploads(state, app.config)
    if state.is_async:
        import quart

        blueprint: Any = quart.Blueprint(name, __name__, url_prefix=url_prefix)

        def quart_view(operation: str) -> Any:
            async def view(**path: Any) -> Any:
                request = quart.request
                if authorize is not None:
                    allowed = authorize(request)
                    if inspect.isawaitable(allowed):
                        allowed = await allowed
                    if not allowed:
                        return _refusal("not allowed to upload here"), 403
                body = await request.get_json(silent=True) if request.method == "POST" else None
                return await _answer(uploads, operation, request.args, body, path)

            return view

        make = quart_view
    else:
        import flask

        blueprint = flask.Blueprint(name, __name__, url_prefix=url_prefix)
        shim = state.sync_provider_class

        def flask_view(operation: str) -> Any:
            def view(**path: Any) -> Any:
                request = flask.request
                if authorize is not None and not authorize(request):
                    return _refusal("not allowed to upload here"), 403
                body = request.get_json(silent=True) if request.method == "POST" else None
                return shim.run(_answer, uploads, operation, request.args.to_dict(), body, path)

            return view

        make = flask_view
    for rule, methods, operation in _ROUTES:
        endpoint = f"{operation}_{methods[0].lower()}"
        blueprint.add_url_rule(rule, endpoint, make(operation), methods=methods)
    app.register_blueprint(blueprint)
    state.direct_uploads = uploads
    return blueprint
