"""413 answers that name the limit (MAX_CONTENT_LENGTH, MAX_FORM_MEMORY_SIZE, MAX_FORM_PARTS).

Werkzeug, Flask and Quart refuse a body over a limit with a bare ``RequestEntityTooLarge``
("The data value transmitted exceeds the capacity limit."), which leaves a user of the Quick
Start (``request.files``) guessing; ``save_request`` says which limit and where it is set.
``Store(app)`` gives both paths the same message: it fills in the description of a bare 413 as
the app handles it, before the app's own error handlers (if any) see it, so they and the default
error page show the same text. Nothing else about the error or its handling changes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

if TYPE_CHECKING:
    from flask.sansio.app import App

__all__ = ["body_too_large", "install"]

_BARE = RequestEntityTooLarge.description


def body_too_large(limit: int, length: int | None = None) -> str:
    """The message for a body over ``limit`` bytes (``length`` when the request said it)."""
    size = f" ({length:,} bytes)" if length is not None else ""
    return (
        f"the request body{size} is over the limit of {limit:,} bytes (the app's "
        f"MAX_CONTENT_LENGTH, or save_request(max_size=...) in a view that streams uploads)"
    )


def _describe(error: HTTPException, request: Any) -> None:
    if error.code != 413 or error.description != _BARE:
        return  # not a 413, or one that says why already
    limit = getattr(request, "max_content_length", None)
    length = getattr(request, "content_length", None)
    if limit is not None and length is not None and length > limit:
        error.description = body_too_large(limit, length)
        return
    # A body without Content-Length, or a form over one of the parser's own limits.
    limits = [
        f"{name} ({value:,}{unit})"
        for name, value, unit in (
            ("MAX_CONTENT_LENGTH", limit, " bytes for the body"),
            (
                "MAX_FORM_MEMORY_SIZE",
                getattr(request, "max_form_memory_size", None),
                " bytes per text field",
            ),
            ("MAX_FORM_PARTS", getattr(request, "max_form_parts", None), " parts"),
        )
        if value is not None
    ]
    error.description = (
        f"the request is over one of the app's limits: {', '.join(limits)}"
        if limits
        else "the request is over one of the app's limits"
    )


def install(app: App, is_async: bool) -> None:
    """Describe bare 413s in ``app`` (its ``handle_http_exception``, Flask's and Quart's)."""
    original = getattr(app, "handle_http_exception", None)
    if original is None:
        return  # not a web app (the CLI's store configured from the environment)
    module: Any = sys.modules["quart" if is_async else "flask"]

    def describe(error: HTTPException) -> None:
        if module.has_request_context():
            _describe(error, module.request)

    if is_async:

        async def handle_async(error: HTTPException) -> Any:
            describe(error)
            return await original(error)

        app.handle_http_exception = handle_async  # type: ignore[attr-defined]
    else:

        def handle(error: HTTPException) -> Any:
            describe(error)
            return original(error)

        app.handle_http_exception = handle  # type: ignore[attr-defined]
