"""The exceptions async_store raises.

Everything derives from :class:`StoreError`, so ``except StoreError`` catches all of it::

    StoreError
    ├── NotConfiguredError      config missing or wrong; names the key and the fix
    ├── UnsafePathError         (also ValueError) a name or location that would leave the store
    ├── NotFoundError           (also FileNotFoundError) no stored file at that path
    ├── BadUploadError          (also werkzeug BadRequest, 400) save_request refused the body
    │   ├── DisallowedTypeError     (415) a type or an extension the rules do not take
    │   ├── FileTooLargeError       (413; also UploadTooLargeError) a file over max_size
    │   └── InvalidFileError        (422) a custom validator refused the file
    │       └── ContentMismatchError    (422) its bytes are not what its extension says
    ├── UploadTooLargeError     (also werkzeug RequestEntityTooLarge, 413) over a limit
    └── ProviderError           the backend failed (disk full, permission denied, …)
        ├── ProviderUnavailableError   down for now (unreachable, a 5xx): worth retrying
        └── UploadError         a background upload failed

Backend errors are never swallowed: they are re-raised as the most specific class above with the
original exception chained as ``__cause__``.
"""

from __future__ import annotations

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

__all__ = [
    "BadUploadError",
    "ContentMismatchError",
    "DisallowedTypeError",
    "FileTooLargeError",
    "InvalidFileError",
    "NotConfiguredError",
    "NotFoundError",
    "ProviderError",
    "ProviderUnavailableError",
    "StoreError",
    "UnsafePathError",
    "UploadError",
    "UploadTooLargeError",
]


class StoreError(Exception):
    """Base class of every error async_store raises."""


class NotConfiguredError(StoreError):
    """The application is not configured for the Store (the seed Flask-Store name).

    The message names the config key and how to fix it.
    """


class UnsafePathError(StoreError, ValueError):
    """A stored path or ``location=`` that is not a plain relative path inside the store."""


class NotFoundError(StoreError, FileNotFoundError):
    """No stored file exists at the given path."""


class BadUploadError(StoreError, BadRequest):
    """An upload request ``save_request`` refuses: not multipart, malformed or truncated, a file
    in a field it was not asked to store. Also Werkzeug's ``BadRequest``: Quart and Flask
    answer it with a 400 and this message."""


class _Refusal(BadUploadError):
    """A file the validation rules refuse (``async_store.Rules``): the message names the rule,
    the file (the client's name) and what was found; so do the attributes.

    :param rule: the rule that refused it (``'max_size'``, ``'extensions'``, ``'types'``,
        ``'check_content'``, or a custom validator's name).
    :param filename: the name the client gave the file.
    :param found: what was found: the detected type, the size, the extension.
    """

    def __init__(
        self,
        description: str | None = None,
        *,
        rule: str | None = None,
        filename: str | None = None,
        found: object = None,
    ) -> None:
        super().__init__(description)
        self.rule = rule
        self.filename = filename
        self.found = found


class DisallowedTypeError(_Refusal):
    """An upload of a type (or an extension) the storage does not take: its ``ALLOWED_TYPES``,
    detected from the bytes, or ``ALLOWED_EXTENSIONS``, or ``STORE_DIRECT_CONTENT_TYPES``. The
    app answers 415 Unsupported Media Type."""

    code = 415


class InvalidFileError(_Refusal):
    """A file a custom validator refused (it raised ``ValueError``, or this). The app answers
    422 Unprocessable Content."""

    code = 422


class ContentMismatchError(InvalidFileError):
    """A file whose bytes are not what its extension says (an ``.png`` that is HTML, a ``.pdf``
    that is a ZIP), refused by ``CHECK_CONTENT``. The app answers 422."""


class UploadTooLargeError(StoreError, RequestEntityTooLarge):
    """An upload request over one of ``save_request``'s limits (the body, a file, a text field,
    the number of parts). Also Werkzeug's ``RequestEntityTooLarge``: the app answers 413."""


class FileTooLargeError(_Refusal, UploadTooLargeError):
    """A file over its ``max_size`` rule (``STORE_MAX_FILE_SIZE``), refused as it streamed in:
    it stops being read at once. Also an :class:`UploadTooLargeError`: the app answers 413."""

    code = 413


class ProviderError(StoreError):
    """The storage backend failed; the backend's own exception is the ``__cause__``."""


class ProviderUnavailableError(ProviderError):
    """The backend is down or failing for now (no connection, a timeout, a 5xx answer), rather
    than refusing for good: retry logic (background mode's spool) checks for this class."""


class UploadError(ProviderError):
    """A background upload could not be delivered."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of a task group's exception group: the failure to raise as itself."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf
